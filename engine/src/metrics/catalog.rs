//! The catalogue of metrics: every name the engine exports, with its
//! `# HELP` text.

/// Every metric this module records, with its `# HELP` text. A test
/// checks that each name `metrics` records is here.
pub(super) const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "tillstream_build_info",
        "Always 1; the version is in the label.",
    ),
    ("tillstream_ready", "1 when /readyz would answer 200."),
    (
        "tillstream_cluster_members",
        "Live members of the cluster as this node last read them (absent without --cluster).",
    ),
    (
        "tillstream_cluster_stores_owned",
        "Stores this node serves.",
    ),
    (
        "tillstream_cluster_store_takes_total",
        "Stores this node took (raising the store's epoch).",
    ),
    (
        "tillstream_cluster_handoffs_total",
        "Stores this node handed over to another (a member joined, or SIGTERM).",
    ),
    (
        "tillstream_cluster_handoff_failures_total",
        "Hand-offs that did not finish (sessions or tables too slow, the cluster unreachable); retried.",
    ),
    (
        "tillstream_cluster_handoff_duration_seconds",
        "Time from a hand-off's start to the store's release.",
    ),
    (
        "tillstream_cluster_adoptions_total",
        "Journals of gone nodes this node replayed into the tables.",
    ),
    (
        "tillstream_cluster_adoption_duration_seconds",
        "Time to replay a gone node's journal.",
    ),
    (
        "tillstream_cluster_redirects_total",
        "Devices sent to the node serving their store.",
    ),
    (
        "tillstream_store_poisoned",
        "1 once a write or sync of the store failed: no more acks until restart.",
    ),
    (
        "tillstream_batches_received_total",
        "Batches read from devices (valid frames).",
    ),
    (
        "tillstream_events_received_total",
        "Events in the batches received.",
    ),
    (
        "tillstream_bytes_received_total",
        "Payload bytes of the batches received.",
    ),
    (
        "tillstream_batches_seq_conflict_total",
        "Resent seqs whose batch differs from the one admitted under it (refused seq_conflict).",
    ),
    (
        "tillstream_batches_over_device_limits_total",
        "Batches refused whole for naming too many stores, terminals or SKUs for their device.",
    ),
    (
        "tillstream_rate_limited_batches_total",
        "Batches held back because their device was past its event rate.",
    ),
    (
        "tillstream_batches_duplicate_total",
        "Resent batches already durable: acknowledged again, not applied.",
    ),
    (
        "tillstream_events_rejected_total",
        "Events refused on semantic grounds, by reject code (kept in rejected_events).",
    ),
    (
        "tillstream_frames_refused_total",
        "Frames refused (bad header, CRC, bytecheck, limits), by error code.",
    ),
    (
        "tillstream_connections_refused_total",
        "Connections refused before Hello, by reason.",
    ),
    (
        "tillstream_connections_retried_total",
        "Connections asked to prove their address first (QUIC Retry).",
    ),
    (
        "tillstream_connection_queue_wait_seconds",
        "Time new connections waited for a set-up slot.",
    ),
    (
        "tillstream_ack_latency_seconds",
        "From a batch's arrival to its acknowledgement (journal fsync and shard apply).",
    ),
    ("tillstream_batches_acked_total", "Batches acknowledged."),
    (
        "tillstream_runtime_lag_seconds",
        "How late the runtime ran a timer due every 10 ms: what every session's tasks waited for a worker.",
    ),
    (
        "tillstream_flush_duration_seconds",
        "Duration of one write of rows into the tables (off the ack path).",
    ),
    (
        "tillstream_flushes_total",
        "Writes of rows into the tables.",
    ),
    (
        "tillstream_flush_rows_total",
        "Rows written into the tables.",
    ),
    (
        "tillstream_flush_bytes_total",
        "Bytes written into the tables.",
    ),
    (
        "tillstream_flush_failures_total",
        "Failed writes into the tables (each poisons the store).",
    ),
    (
        "tillstream_journal_append_duration_seconds",
        "Duration of one journal group commit (write and fsync).",
    ),
    ("tillstream_journal_appends_total", "Journal group commits."),
    (
        "tillstream_journal_bytes_total",
        "Bytes appended to the journal.",
    ),
    (
        "tillstream_journal_unmaterialized_records",
        "Journal records acknowledged but not yet in the tables: what a restart now would replay.",
    ),
    (
        "tillstream_recovery_replayed_records",
        "Journal records the last start applied again before serving.",
    ),
    (
        "tillstream_recovery_duration_seconds",
        "How long the last start's replay of the journal took (most of a restart).",
    ),
    (
        "tillstream_ack_write_timeouts_total",
        "Sessions closed because their device did not read its acks in time.",
    ),
    ("tillstream_connections_active", "Connections open now."),
    (
        "tillstream_sessions_refused_total",
        "Sessions refused at Hello, by error code.",
    ),
    (
        "tillstream_shard_inflight_bytes",
        "Batch payload bytes a shard holds until durable.",
    ),
    (
        "tillstream_active_skus",
        "SKU entities resident in a shard.",
    ),
    (
        "tillstream_active_terminals",
        "Terminal entities resident in a shard.",
    ),
    (
        "tillstream_active_rollup_minute_slots",
        "Terminal rollup minutes resident in a shard (150 to 200 bytes each).",
    ),
    (
        "tillstream_late_window_movements",
        "Stock movements a shard keeps for late events.",
    ),
    (
        "tillstream_passivated_stores_total",
        "Stores (their SKUs) dropped from memory as idle.",
    ),
    (
        "tillstream_passivated_skus_total",
        "SKU entities dropped from memory as idle.",
    ),
    (
        "tillstream_passivated_day_rollups_total",
        "Terminal rollup days dropped from memory as idle.",
    ),
    (
        "tillstream_passivated_rollup_minute_slots_total",
        "Terminal rollup minutes dropped from memory as idle (with their day, or alone from a day still in use).",
    ),
    (
        "tillstream_passivated_devices_total",
        "Device slots dropped from memory as idle.",
    ),
    (
        "tillstream_allocator_collections_total",
        "Times the allocator was asked to return freed pages to the OS (after passivation sweeps).",
    ),
    (
        "tillstream_process_cpu_seconds",
        "User and system CPU time of the server process, to the 10 ms tick (process_cpu_seconds_total counts whole seconds).",
    ),
    (
        "tillstream_udp_receive_drops_total",
        "Datagrams the kernel dropped at the QUIC socket for a full receive buffer (QUIC resends them after a timeout: seconds of latency). Raise net.core.rmem_max if it grows.",
    ),
    (
        "tillstream_udp_receive_buffer_bytes",
        "The QUIC socket's receive buffer as the kernel granted it (asked: 16 MiB).",
    ),
    (
        "tillstream_udp_send_buffer_bytes",
        "The QUIC socket's send buffer as the kernel granted it.",
    ),
    (
        "tillstream_memory_pressure",
        "1 while RSS is past --memory-soft-limit-mib (plus 48 KiB per connection served in the last minute): freed pages go back to the OS sooner, shards hold half their in-flight budget.",
    ),
    (
        "tillstream_memory_pressure_seconds_total",
        "Time spent past the memory soft limit, in whole seconds: its rate is the share of time under memory pressure.",
    ),
    (
        "tillstream_allocator_collection_seconds",
        "How long asking the allocator to return freed pages to the OS took.",
    ),
    (
        "tillstream_ack_stall_seconds",
        "How long no batch has been acknowledged although batches wait.",
    ),
    (
        "tillstream_dead_letters_total",
        "Frames kept as dead letters.",
    ),
    (
        "tillstream_auth_enabled",
        "1 when devices and API callers must authenticate.",
    ),
    (
        "tillstream_auth_failures_total",
        "Credentials refused, by surface (device or api).",
    ),
    (
        "tillstream_auth_token_keys_used_total",
        "Tokens whose signature verified, by key: signing, or accepted (a previous key in auth/previous-keys).",
    ),
    (
        "tillstream_auth_connections_closed_total",
        "Live connections closed by a revocation, an expiry or the retirement of their token's key, by reason.",
    ),
    (
        "tillstream_authz_refused_events_total",
        "Events refused because the credential does not allow them, by code.",
    ),
    (
        "tillstream_audit_lines_dropped_total",
        "Audit lines not written, by reason.",
    ),
    (
        "tillstream_frames_too_slow_total",
        "Connections closed because a frame did not arrive in time.",
    ),
    (
        "tillstream_shard_inflight_limit_bytes",
        "Batch payload a shard may hold until it is durable (--max-inflight-mib-per-shard); past it, devices wait.",
    ),
    (
        "tillstream_devices_known",
        "Devices in the store's watermarks table (every device that ever had a batch acknowledged), counted once a minute.",
    ),
    (
        "tillstream_devices_silent",
        "Known devices whose last acknowledged batch is older than `over` (5m, 1h, 1d, 7d), from the watermarks table, once a minute.",
    ),
    (
        "tillstream_config_reloads_total",
        "SIGHUP reloads of the settings, by result (ok: the limits in force were replaced; error: the settings did not parse and nothing changed).",
    ),
    (
        "tillstream_config_last_reload_successful",
        "1 if the last SIGHUP reload (or none yet) put its settings in force, 0 if they did not parse.",
    ),
    (
        "tillstream_scylla_requests_total",
        "ScyllaDB driver: requests sent.",
    ),
    (
        "tillstream_scylla_errors_total",
        "ScyllaDB driver: requests failed.",
    ),
    (
        "tillstream_scylla_retries_total",
        "ScyllaDB driver: retries (idempotent requests only).",
    ),
    (
        "tillstream_scylla_request_timeouts_total",
        "ScyllaDB driver: requests timed out.",
    ),
    (
        "tillstream_scylla_connections",
        "ScyllaDB driver: open connections.",
    ),
    (
        "tillstream_scylla_latency_avg_seconds",
        "ScyllaDB driver: mean request latency.",
    ),
    (
        "tillstream_scylla_latency_p99_seconds",
        "ScyllaDB driver: 99th percentile request latency.",
    ),
];
