//! Metrics, named `tillstream_<name>_<unit>[_total]`. Counted once per
//! batch or per commit on the hot path, never per event; labels have
//! bounded cardinality (codes, shard index), never a device or a SKU.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder (installed once, shared by every
/// server of the process), with `# HELP` for every metric, latency
/// buckets for the `_seconds` histograms only, and a thread that runs the
/// exporter's upkeep every 5 s (histogram samples would otherwise pile up
/// between scrapes).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// This process's metrics in Prometheus text, as `/metrics` has them
/// (less what a scrape refreshes); `None` where no recorder could be
/// installed. For a loadgen that runs its server in process.
pub fn metrics_text() -> Option<String> {
    handle().map(PrometheusHandle::render)
}

/// The figures that are read rather than counted, refreshed on each
/// scrape: the process (CPU, memory, files, threads), readiness and a
/// poisoned store.
pub(crate) fn refresh(ready: bool, store_poisoned: bool) {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
    if let Some(cpu) = process_cpu_seconds() {
        gauge!("tillstream_process_cpu_seconds").set(cpu);
    }
    gauge!("tillstream_ready").set(if ready { 1.0 } else { 0.0 });
    gauge!("tillstream_store_poisoned").set(if store_poisoned { 1.0 } else { 0.0 });
}

mod catalog;
mod process;
pub mod scrape;
use catalog::DESCRIPTIONS;
pub use process::{cpu_seconds_of, process_cpu_seconds};

/// The devices known to the store, and how many are silent past each
/// threshold (see `silence`).
pub(crate) fn devices_silent(known: u64, silent: &[(&'static str, u64)]) {
    gauge!("tillstream_devices_known").set(known as f64);
    for &(over, n) in silent {
        gauge!("tillstream_devices_silent", "over" => over).set(n as f64);
    }
}

/// A SIGHUP reload of the settings, and whether it could be applied.
pub(crate) fn config_reloaded(ok: bool) {
    counter!("tillstream_config_reloads_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
    gauge!("tillstream_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
}

/// Registers the `# HELP` lines and the build info.
fn describe() {
    // The Prometheus exporter keeps one `# HELP` per name whatever kind it
    // is described as; the `# TYPE` line comes from how the metric is
    // recorded. So one call fits counters, gauges and histograms alike.
    for &(name, help) in DESCRIPTIONS {
        metrics::describe_gauge!(name, help);
    }
    gauge!("tillstream_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("tillstream_config_last_reload_successful").set(1.0);
    zero_series();
}

/// Counters whose labels are known in advance, exported at 0 from the
/// start: a series that appears only at its first increment is invisible
/// to `increase()` and `rate()` for that increment, so an alert on the
/// first store failure would miss it, and dashboards would say "no data"
/// where the answer is none.
fn zero_series() {
    use tillstream_protocol::{ErrorCode, RejectCode};
    for &(name, _) in DESCRIPTIONS {
        if name.ends_with("_total")
            && !name.starts_with("tillstream_scylla_")
            && !LABELLED.contains(&name)
        {
            counter!(name).increment(0);
        }
    }
    memory_pressure(false);
    for code in RejectCode::ALL {
        counter!("tillstream_events_rejected_total", "code" => code.name()).increment(0);
    }
    for code in [RejectCode::NotPermitted, RejectCode::WrongStore] {
        counter!("tillstream_authz_refused_events_total", "code" => code.name()).increment(0);
    }
    for code in ErrorCode::ALL {
        counter!("tillstream_frames_refused_total", "code" => code.name()).increment(0);
    }
    for code in [
        ErrorCode::TooManyStores,
        ErrorCode::TooManyTerminals,
        ErrorCode::TooManySkus,
    ] {
        counter!("tillstream_batches_over_device_limits_total", "code" => code.name()).increment(0);
    }
    for reason in [
        "too_many_connections",
        "queue_full",
        "waited_too_long",
        "handshake_timeout",
    ] {
        counter!("tillstream_connections_refused_total", "reason" => reason).increment(0);
    }
    for surface in ["device", "http"] {
        counter!("tillstream_auth_failures_total", "surface" => surface).increment(0);
    }
    for result in ["ok", "error"] {
        counter!("tillstream_config_reloads_total", "result" => result).increment(0);
    }
    for key in ["signing", "accepted"] {
        counter!("tillstream_auth_token_keys_used_total", "key" => key).increment(0);
    }
}

/// Counters recorded only with labels (`zero_series` starts each known
/// label at 0; an unlabelled series of these would be a second, empty one).
const LABELLED: &[&str] = &[
    "tillstream_events_rejected_total",
    "tillstream_authz_refused_events_total",
    "tillstream_frames_refused_total",
    "tillstream_batches_over_device_limits_total",
    "tillstream_connections_refused_total",
    "tillstream_auth_failures_total",
    "tillstream_auth_connections_closed_total",
    "tillstream_auth_token_keys_used_total",
    "tillstream_sessions_refused_total",
    "tillstream_audit_lines_dropped_total",
    "tillstream_config_reloads_total",
];

/// The name of every metric the server may export (`# HELP` and all): the
/// names dashboards and alert rules may refer to. Those of the ScyllaDB
/// driver appear only with `--store scylla`; histograms and labelled
/// counters appear once recorded.
pub fn exported_names() -> impl Iterator<Item = &'static str> {
    DESCRIPTIONS.iter().map(|&(name, _)| name)
}

pub(crate) fn batch_received(events: usize, bytes: usize) {
    let m = per_batch();
    m.batches_received.increment(1);
    m.events_received.increment(events as u64);
    m.bytes_received.increment(bytes as u64);
}

/// The metrics every batch counts, registered once. `counter!` and
/// `histogram!` look their metric up in the recorder's registry (the
/// name hashed, a map probed) at every call; for the five a batch counts,
/// on its way in and when it is acknowledged, that was about 1% of the
/// server's CPU at the peak.
struct PerBatch {
    batches_received: Counter,
    events_received: Counter,
    bytes_received: Counter,
    ack_latency: Histogram,
    batches_acked: Counter,
}

fn per_batch() -> &'static PerBatch {
    static HANDLES: OnceLock<PerBatch> = OnceLock::new();
    HANDLES.get_or_init(|| {
        // The recorder first: a handle taken before it is installed would
        // count nowhere, for good.
        let _ = handle();
        PerBatch {
            batches_received: counter!("tillstream_batches_received_total"),
            events_received: counter!("tillstream_events_received_total"),
            bytes_received: counter!("tillstream_bytes_received_total"),
            ack_latency: histogram!("tillstream_ack_latency_seconds"),
            batches_acked: counter!("tillstream_batches_acked_total"),
        }
    })
}

/// A resent seq whose batch is not the one admitted under it.
pub(crate) fn batch_seq_conflict() {
    counter!("tillstream_batches_seq_conflict_total").increment(1);
}

/// A batch refused for naming more stores or terminals than a device may
/// (labelled with the code: `too_many_stores`, `too_many_terminals`).
pub(crate) fn too_many_keys(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_batches_over_device_limits_total", "code" => code.name()).increment(1);
}

/// A batch held back because its device was past its event rate.
pub(crate) fn rate_limited() {
    counter!("tillstream_rate_limited_batches_total").increment(1);
}

pub(crate) fn batch_duplicate() {
    counter!("tillstream_batches_duplicate_total").increment(1);
}

/// The events of one batch refused, by reject code (labelled with its
/// name): tallied first, so a batch of thousands of refusals costs one
/// increment per code, not one per event.
pub(crate) fn events_rejected(codes: impl Iterator<Item = u16>) {
    use tillstream_protocol::RejectCode;
    let mut tally = [0u64; RejectCode::ALL.len() + 1];
    for code in codes {
        let at = RejectCode::ALL
            .iter()
            .position(|c| c.as_u16() == code)
            .unwrap_or(RejectCode::ALL.len());
        tally[at] += 1;
    }
    for (at, &n) in tally.iter().enumerate().filter(|(_, n)| **n > 0) {
        let reason = RejectCode::ALL.get(at).map_or("unknown", |c| c.name());
        counter!("tillstream_events_rejected_total", "code" => reason).increment(n);
    }
}

pub(crate) fn frame_refused(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_frames_refused_total", "code" => code.name()).increment(1);
}

pub(crate) fn connection_refused(reason: &'static str) {
    counter!("tillstream_connections_refused_total", "reason" => reason).increment(1);
}

/// A connection asked to prove its address first (QUIC Retry).
pub(crate) fn connection_retried() {
    counter!("tillstream_connections_retried_total").increment(1);
}

pub(crate) fn connection_waited(waited: Duration) {
    histogram!("tillstream_connection_queue_wait_seconds").record(waited.as_secs_f64());
}

/// One sample of the runtime lag probe (`runtime_lag`).
pub(crate) fn runtime_lag(late: Duration) {
    histogram!("tillstream_runtime_lag_seconds").record(late.as_secs_f64());
}

pub(crate) fn acked(latency: Duration, batches: u64) {
    let m = per_batch();
    m.ack_latency.record(latency.as_secs_f64());
    m.batches_acked.increment(batches);
}

/// One materialization of rows into the tables (off the ack path).
pub(crate) fn commit_done(elapsed: Duration, rows: usize, bytes: usize) {
    histogram!("tillstream_flush_duration_seconds").record(elapsed.as_secs_f64());
    counter!("tillstream_flushes_total").increment(1);
    counter!("tillstream_flush_rows_total").increment(rows as u64);
    counter!("tillstream_flush_bytes_total").increment(bytes as u64);
}

/// One group commit of the journal: the write and fsync an ack waits for.
/// What the replay at start did: how many journal records it applied
/// again, and how long it took (most of a restart).
/// Live members of the cluster and stores this node serves.
pub(crate) fn cluster_members(live: usize, owned: usize) {
    gauge!("tillstream_cluster_members").set(live as f64);
    gauge!("tillstream_cluster_stores_owned").set(owned as f64);
}

/// A store taken (its epoch raised) by this node.
pub(crate) fn cluster_store_taken() {
    counter!("tillstream_cluster_store_takes_total").increment(1);
}

/// A store handed over to another node, and how long it took.
pub(crate) fn cluster_handoff(took: Duration) {
    counter!("tillstream_cluster_handoffs_total").increment(1);
    histogram!("tillstream_cluster_handoff_duration_seconds").record(took.as_secs_f64());
}

/// A hand-off that did not finish (it is retried).
pub(crate) fn cluster_handoff_failed() {
    counter!("tillstream_cluster_handoff_failures_total").increment(1);
}

/// A gone node's journal replayed by this node, and how long it took.
pub(crate) fn cluster_adopted(took: Duration) {
    counter!("tillstream_cluster_adoptions_total").increment(1);
    histogram!("tillstream_cluster_adoption_duration_seconds").record(took.as_secs_f64());
}

/// A device sent to another node (a `Redirect`, or `not_owner` to a
/// version-1 device).
pub(crate) fn cluster_redirect() {
    counter!("tillstream_cluster_redirects_total").increment(1);
}

pub(crate) fn recovered(records: u64, elapsed: Duration) {
    gauge!("tillstream_recovery_replayed_records").set(records as f64);
    gauge!("tillstream_recovery_duration_seconds").set(elapsed.as_secs_f64());
}

/// Journal records durable (acknowledged) but not yet in the tables: what
/// a restart now would replay.
pub(crate) fn journal_unmaterialized(records: u64) {
    gauge!("tillstream_journal_unmaterialized_records").set(records as f64);
}

pub(crate) fn journal_append(elapsed: Duration, bytes: usize) {
    histogram!("tillstream_journal_append_duration_seconds").record(elapsed.as_secs_f64());
    counter!("tillstream_journal_appends_total").increment(1);
    counter!("tillstream_journal_bytes_total").increment(bytes as u64);
}

/// A session closed because its device did not read its acks in time.
pub(crate) fn ack_write_timed_out() {
    counter!("tillstream_ack_write_timeouts_total").increment(1);
}

pub(crate) fn commit_failed() {
    counter!("tillstream_flush_failures_total").increment(1);
}

pub(crate) fn connections(delta: f64) {
    gauge!("tillstream_connections_active").increment(delta);
}

pub(crate) fn sessions_refused(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_sessions_refused_total", "code" => code.name()).increment(1);
}

/// Per-shard gauges, registered once (their label is the shard index).
pub(crate) struct ShardGauges {
    inflight: metrics::Gauge,
    skus: metrics::Gauge,
    terminals: metrics::Gauge,
    rollup_minutes: metrics::Gauge,
    window: metrics::Gauge,
}

impl ShardGauges {
    /// The gauges of shard `shard`, whose in-flight budget is
    /// `inflight_limit` bytes (exported beside its use, so an alert can
    /// divide one by the other).
    pub(crate) fn new(shard: u16, inflight_limit: usize) -> Self {
        let s = shard.to_string();
        gauge!("tillstream_shard_inflight_limit_bytes", "shard" => s.clone())
            .set(inflight_limit as f64);
        Self {
            inflight: gauge!("tillstream_shard_inflight_bytes", "shard" => s.clone()),
            skus: gauge!("tillstream_active_skus", "shard" => s.clone()),
            terminals: gauge!("tillstream_active_terminals", "shard" => s.clone()),
            rollup_minutes: gauge!("tillstream_active_rollup_minute_slots", "shard" => s.clone()),
            window: gauge!("tillstream_late_window_movements", "shard" => s),
        }
    }

    pub(crate) fn inflight(&self, bytes: usize) {
        self.inflight.set(bytes as f64);
    }

    pub(crate) fn entities(&self, stats: &tillstream_engine_core::shard::ShardStats) {
        self.skus.set(stats.skus_active as f64);
        self.terminals.set(stats.terminals_active as f64);
        self.rollup_minutes.set(stats.rollup_minutes as f64);
        self.window.set(stats.window_movements as f64);
    }
}

/// Entities a shard dropped from memory as idle.
pub(crate) fn passivated(gone: &tillstream_engine_core::shard::Passivated) {
    counter!("tillstream_passivated_stores_total").increment(gone.stores);
    counter!("tillstream_passivated_skus_total").increment(gone.skus);
    counter!("tillstream_passivated_day_rollups_total").increment(gone.days);
    counter!("tillstream_passivated_rollup_minute_slots_total").increment(gone.rollup_minutes);
}

/// Device slots dropped from memory as idle.
pub(crate) fn passivated_devices(n: usize) {
    counter!("tillstream_passivated_devices_total").increment(n as u64);
}

/// The allocator was asked to return freed pages to the OS, taking
/// `took` (it walks the calling thread's pages and every arena).
pub(crate) fn allocator_collection(took: Duration) {
    counter!("tillstream_allocator_collections_total").increment(1);
    histogram!("tillstream_allocator_collection_seconds").record(took.as_secs_f64());
}

/// Whether RSS is past the memory soft limit (see `memory_limit`).
pub(crate) fn memory_pressure(on: bool) {
    gauge!("tillstream_memory_pressure").set(if on { 1.0 } else { 0.0 });
}

/// Whole seconds more spent under memory pressure (see `memory_limit`).
pub(crate) fn memory_pressure_seconds(seconds: u64) {
    counter!("tillstream_memory_pressure_seconds_total").increment(seconds);
}

/// How long no batch has been acknowledged although batches wait (0 when
/// none waits): the age of a stall, refreshed on every scrape.
pub(crate) fn ack_stall(stalled: Duration) {
    gauge!("tillstream_ack_stall_seconds").set(stalled.as_secs_f64());
}

pub(crate) fn dead_letter() {
    counter!("tillstream_dead_letters_total").increment(1);
}

/// 1 when devices and API callers must authenticate, 0 with `--auth none`.
pub(crate) fn auth_enabled(on: bool) {
    gauge!("tillstream_auth_enabled").set(if on { 1.0 } else { 0.0 });
}

/// A device's credential refused at `Hello`, or an API call refused.
pub(crate) fn auth_failed(surface: &'static str) {
    counter!("tillstream_auth_failures_total", "surface" => surface).increment(1);
}

/// A token verified: by the signing key, or by an accepted previous key
/// (whose tokens must be replaced before it is retired). Once per
/// connection or HTTP request.
pub(crate) fn token_key_used(signing: bool) {
    let key = if signing { "signing" } else { "accepted" };
    counter!("tillstream_auth_token_keys_used_total", "key" => key).increment(1);
}

/// A live connection closed because its credential was revoked or expired,
/// or its token key retired.
pub(crate) fn auth_closed(why: &'static str) {
    counter!("tillstream_auth_connections_closed_total", "reason" => why).increment(1);
}

/// Events refused because the device's credential does not allow them.
pub(crate) fn authz_refused(code: tillstream_protocol::RejectCode, events: u64) {
    counter!("tillstream_authz_refused_events_total", "code" => code.name()).increment(events);
}

/// Audit lines not written: `queue` (the writer fell behind), `write`
/// (the file failed), `rate` (unauthenticated peers past their share).
pub(crate) fn audit_dropped(reason: &'static str) {
    counter!("tillstream_audit_lines_dropped_total", "reason" => reason).increment(1);
}

/// Connections closed because a frame they started did not arrive in time.
pub(crate) fn frame_too_slow() {
    counter!("tillstream_frames_too_slow_total").increment(1);
}

/// The listening UDP socket's buffers as granted, and the datagrams the
/// kernel dropped there for a full receive buffer (None where it does not
/// say; the counter then stays where it was).
pub(crate) fn udp_socket(recv_bytes: usize, send_bytes: usize, drops: Option<u64>) {
    gauge!("tillstream_udp_receive_buffer_bytes").set(recv_bytes as f64);
    gauge!("tillstream_udp_send_buffer_bytes").set(send_bytes as f64);
    if let Some(drops) = drops {
        counter!("tillstream_udp_receive_drops_total").absolute(drops);
    }
}

/// The backend's own figures (the ScyllaDB driver's requests, errors,
/// retries, latency), refreshed when `/metrics` is read: counters end in
/// `_total`, the rest are gauges.
pub(crate) fn backend(figures: &[(&'static str, f64)]) {
    for &(name, value) in figures {
        if name.ends_with("_total") {
            counter!(name).absolute(value as u64);
        } else {
            gauge!(name).set(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DESCRIPTIONS;

    /// Every `"tillstream_..."` name this file records has a `# HELP`.
    #[test]
    fn every_metric_recorded_here_is_described() {
        // The table is in `catalog.rs`: every name in this file is a use.
        let source = include_str!("mod.rs");
        let body = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let mut missing = Vec::new();
        for (at, _) in body.match_indices("!(\"tillstream_") {
            let name: String = body[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !DESCRIPTIONS.iter().any(|(n, _)| *n == name) {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "no description for {missing:?}");
        let names: std::collections::HashSet<&str> = DESCRIPTIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), DESCRIPTIONS.len(), "a name is described twice");
    }

    /// A batch's refusals land on their codes' series, each counted once
    /// per event; a code the server does not know is `unknown`.
    #[test]
    fn rejected_events_are_counted_by_code() {
        let Some(handle) = super::handle() else {
            panic!("no recorder");
        };
        let value = |code: &str| -> f64 {
            let line = format!("tillstream_events_rejected_total{{code=\"{code}\"}} ");
            handle
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(&line).and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0.0)
        };
        let before = [
            value("future_timestamp"),
            value("zero_delta"),
            value("unknown"),
        ];
        super::events_rejected([102, 107, 102, 999, 102].into_iter());
        let after = [
            value("future_timestamp"),
            value("zero_delta"),
            value("unknown"),
        ];
        assert_eq!(
            [
                after[0] - before[0],
                after[1] - before[1],
                after[2] - before[2]
            ],
            [3.0, 1.0, 1.0]
        );
    }
}
