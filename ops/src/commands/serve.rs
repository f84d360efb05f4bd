//! `tillstream serve`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgMatches, FromArgMatches};
use tillstream_engine::{DEFAULT_FLUSH_INTERVAL_MS, ReloadableLimits, Server, ServerConfig};

mod checks;
pub(crate) mod settings;

pub(crate) use checks::Endpoints;

/// Run the server. With no flags: QUIC on 127.0.0.1:7400, HTTP on
/// 127.0.0.1:7401, the embedded store and a self-signed certificate in
/// ./data, one shard per two cores.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// UDP address for QUIC (use 0.0.0.0:7400 to accept devices from the
    /// network); a host name (`localhost:7400`) listens on the address it
    /// resolves to (its first IPv4 one), which serve prints.
    #[arg(long, default_value = "127.0.0.1:7400", env = "TILLSTREAM_LISTEN")]
    listen: String,
    /// Data directory: the embedded store (store/) and TLS files (tls/).
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep the embedded store's journal in this directory, on another
    /// disk than the tables: an ack waits for the journal's append and
    /// nothing else, so a disk with low, steady write latency here sets
    /// the ack latency (`tillstream check-disk` measures one). DATA_DIR/
    /// store/wal becomes a link to it, which every tool follows. Created
    /// if missing and empty the first time; a store whose journal is
    /// already elsewhere is refused (move it with the server stopped).
    #[arg(long, env = "TILLSTREAM_JOURNAL_DIR")]
    journal_dir: Option<PathBuf>,
    #[command(flatten)]
    store: super::store_args::StoreArgs,
    #[command(flatten)]
    writer: super::store_args::WriterArgs,
    /// Serve one fleet with other tillstream nodes over the same ScyllaDB
    /// keyspace: each store is served by one live node, chosen by
    /// rendezvous hashing over the members; a device that reaches another
    /// node is sent to it; a node that dies has its journal replayed and
    /// its stores taken by the others within seconds; SIGTERM hands this
    /// node's stores over first. Needs --store scylla, a --scylla-node-id
    /// of its own, device authentication, and the same signing key and
    /// certificate on every node (docs/operating/cluster.md).
    #[arg(long, env = "TILLSTREAM_CLUSTER")]
    cluster: bool,
    /// With --cluster: the QUIC address (host:port) that devices sent to
    /// this node dial. Default: the --listen address, which must then
    /// not be a wildcard (0.0.0.0).
    #[arg(long, requires = "cluster", env = "TILLSTREAM_ADVERTISE")]
    advertise: Option<String>,
    /// With --cluster: the HTTP address shown for this node by
    /// `/v1/cluster` and `tillstream cluster status`. Default: --http.
    #[arg(long, requires = "cluster", env = "TILLSTREAM_ADVERTISE_HTTP")]
    advertise_http: Option<String>,
    /// A TOML file of these settings, keyed by flag name
    /// (`max-connections = 20000`); a flag or its TILLSTREAM_* variable
    /// overrides the file. `tillstream check-config FILE` checks one.
    /// SIGHUP re-reads it and applies the connection and per-device limits
    /// (max-connections, max-*-per-device) without dropping connections;
    /// other settings need a restart. SIGHUP also reads the token keys
    /// again (DATA_DIR/auth/signing.key and auth/previous-keys/*.key).
    #[arg(long, env = "TILLSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Print the settings in force (and where each came from: flag, env,
    /// file, default) as TOML, secrets redacted, and exit.
    #[arg(long)]
    print_config: bool,
    /// Shard actors (default: half the cores, at least one: the QUIC
    /// connections, the journal and the table writes need the others).
    #[arg(long, env = "TILLSTREAM_SHARDS",
          value_parser = clap::value_parser!(u16).range(1..))]
    shards: Option<u16>,
    /// TCP address of the HTTP API (/metrics, /healthz, /readyz, /v1/*,
    /// the query API /api/v1/*), an IP address or a host name; "off" to
    /// disable.
    #[arg(long, default_value = "127.0.0.1:7401", env = "TILLSTREAM_HTTP")]
    http: String,
    /// How long acknowledged rows wait before they are written to the
    /// tables, in milliseconds (rows that hold a quarter of a shard's
    /// in-flight budget are written at once, so under load the budget
    /// decides, not this). Acks do not wait for it (they wait for the
    /// journal's fsync); longer intervals write each store's blocks and
    /// levels less often, and make rows reach `query` later.
    #[arg(long, default_value_t = DEFAULT_FLUSH_INTERVAL_MS, env = "TILLSTREAM_FLUSH_INTERVAL_MS")]
    flush_interval_ms: u64,
    /// PEM certificate chain (with --tls-key); default: a self-signed one in the data directory.
    #[arg(long, requires = "tls_key", env = "TILLSTREAM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "TILLSTREAM_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Longest a graceful shutdown (SIGTERM, Ctrl-C) waits for in-flight batches, in seconds.
    #[arg(long, default_value_t = 10, env = "TILLSTREAM_DRAIN_TIMEOUT_S")]
    drain_timeout_s: u64,
    /// Batch payload a shard may hold until it is durable, in MiB: what
    /// bounds the server's memory under overload or slow storage (devices
    /// are then slowed by QUIC flow control).
    #[arg(long, default_value_t = 32, env = "TILLSTREAM_MAX_INFLIGHT_MIB_PER_SHARD",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_inflight_mib_per_shard: u64,
    /// Resident memory, in MiB, past which the server is under memory
    /// pressure: freed pages go back to the OS 50 ms after they are freed
    /// instead of a second, and each shard holds half its in-flight
    /// budget, so RSS stays near the live heap for a little CPU while past
    /// it (the page faults of memory freed and taken again). Set it under
    /// the memory you give the server, above what it needs at rest; 0
    /// turns it off. The default is about the peak of
    /// a server at full speed with 50 k resident SKUs (the loadgen's
    /// fleet), which 256 MiB held under pressure at 13% less throughput;
    /// 1 M resident SKUs still stay under 512 MiB with it. Each
    /// connection being served adds 48 KiB to it (its QUIC, TLS and
    /// session state, which --max-connections bounds): 10,000 idle
    /// devices take some 440 MiB. The allowance of a connection that
    /// closes stays a minute, so a fleet that reconnects after a network
    /// blip does not find the server under pressure.
    #[arg(long, default_value_t = 320, env = "TILLSTREAM_MEMORY_SOFT_LIMIT_MIB")]
    memory_soft_limit_mib: u64,
    /// Connections set up at once (handshake, Hello, Welcome); default 16
    /// per core. In a reconnect storm the rest wait their turn, so each
    /// handshake finishes fast instead of all of them slowing down together.
    #[arg(long, env = "TILLSTREAM_MAX_HANDSHAKES",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_handshakes: Option<u64>,
    /// Longest a new connection waits for its turn, in milliseconds, before
    /// it is refused and its device dials again after a back-off. Keep it
    /// below the devices' idle timeout (5 s by default).
    #[arg(long, default_value_t = 4000, env = "TILLSTREAM_HANDSHAKE_MAX_WAIT_MS")]
    handshake_max_wait_ms: u64,
    /// Seconds a store's SKUs, a rollup day or a device may sit unchanged
    /// before they leave memory (once their rows are in the tables); they
    /// are read back from the store when a batch needs them. A terminal's
    /// rollup minutes go sooner, from a day still in use: after one sweep
    /// interval, a quarter of this (at least 1 s, at most 60 s). Lower it to
    /// bound memory with many stores; raise it if /metrics shows
    /// tillstream_passivated_skus_total climbing under steady load.
    #[arg(long, default_value_t = 900, env = "TILLSTREAM_PASSIVATE_AFTER_S",
          value_parser = clap::value_parser!(u64).range(1..))]
    passivate_after_s: u64,
    /// Seconds ahead of the server's clock an event may be stamped. Later
    /// events are refused as future_timestamp (kept in rejected_events,
    /// and named in the batch's Ack) so that one fast till cannot make the
    /// honest shelf counts of the SKUs it sells too late.
    #[arg(long, default_value_t = 300, env = "TILLSTREAM_MAX_CLOCK_SKEW_S",
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 7))]
    max_clock_skew_s: u64,
    /// /readyz answers 503 once no batch has been acknowledged for this
    /// many seconds although batches wait (tillstream_ack_stall_seconds on
    /// /metrics shows the stall as it grows).
    #[arg(long, default_value_t = 10, env = "TILLSTREAM_ACK_STALL_NOT_READY_S",
          value_parser = clap::value_parser!(u64).range(1..))]
    ack_stall_not_ready_s: u64,
    /// Connections open at once (in handshake or serving); more are
    /// refused and their devices back off. A device holds one.
    #[arg(long, default_value_t = 20_000, env = "TILLSTREAM_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Events a second one device may send (a batch counts as at least
    /// 64: each one costs the server as much whatever it holds); past it
    /// the device is slowed (its batches wait, QUIC flow control holds it
    /// back), nothing is dropped. 0 for no limit.
    #[arg(
        long,
        default_value_t = 50_000,
        env = "TILLSTREAM_MAX_EVENTS_PER_S_PER_DEVICE"
    )]
    max_events_per_s_per_device: u32,
    /// Distinct stores one device may send for; a batch naming more is
    /// refused whole (too_many_stores) and kept as a dead letter.
    #[arg(long, default_value_t = 16, env = "TILLSTREAM_MAX_STORES_PER_DEVICE",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_stores_per_device: u64,
    /// Distinct terminals one device may sell on; a batch naming more is
    /// refused whole (too_many_terminals) and kept as a dead letter.
    #[arg(long, default_value_t = 16, env = "TILLSTREAM_MAX_TERMINALS_PER_DEVICE",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_terminals_per_device: u64,
    /// Distinct (store, SKU) pairs one device may name (each new one is an
    /// entity the server keeps); a batch naming more is refused whole
    /// (too_many_skus) and kept as a dead letter.
    #[arg(long, default_value_t = 200_000, env = "TILLSTREAM_MAX_SKUS_PER_DEVICE",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    max_skus_per_device: u64,
    /// Milliseconds a device has, after its TLS handshake, to open its
    /// stream, and then to say Hello; past either the connection closes
    /// and its set-up slot goes to the next device.
    #[arg(long, default_value_t = 2000, env = "TILLSTREAM_HELLO_TIMEOUT_MS",
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    hello_timeout_ms: u64,
    /// Seconds a connection may stay silent (no packet, not even a
    /// keep-alive) before it is closed. The server sends a keep-alive at
    /// half of this (at most every 5 s) and tillstream-client after 2 s of
    /// silence, so only connections whose device is gone reach it.
    #[arg(long, default_value_t = 30, env = "TILLSTREAM_IDLE_TIMEOUT_S",
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    idle_timeout_s: u64,
    /// MiB of frame payload all connections together may hold while their
    /// frames arrive; a connection waits for room (its device then waits
    /// on QUIC flow control). With --quic-window-kib and
    /// --max-connections it bounds what connections cost: at most
    /// connections x window + this.
    #[arg(long, default_value_t = 256, env = "TILLSTREAM_MAX_FRAME_BUFFERS_MIB",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_frame_buffers_mib: u64,
    /// Seconds a device may take to send the rest of a frame it started,
    /// plus what the frame's size needs at 64 KiB/s; past it the
    /// connection is closed (a drip holds its share of the frame buffers
    /// for no longer).
    #[arg(long, default_value_t = 10, env = "TILLSTREAM_FRAME_DEADLINE_S",
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    frame_deadline_s: u64,
    /// QUIC receive window of each connection, in KiB: what a connection
    /// may have buffered in the server before its reader takes it. Frames
    /// larger than it still pass (the reader takes bytes as they come).
    #[arg(long, default_value_t = 256, env = "TILLSTREAM_QUIC_WINDOW_KIB",
          value_parser = clap::value_parser!(u64).range(16..=65_536))]
    quic_window_kib: u64,
    /// Largest UDP payload, in bytes, that devices may send: their QUIC
    /// path MTU discovery tries up to it and keeps what the path carries
    /// (1472 on a 1500-byte Ethernet network), so a larger bound only
    /// pays where jumbo frames (or loopback) carry it: fewer, larger
    /// packets cost less CPU on both ends. 1472 holds every packet to a
    /// 1500-byte frame.
    #[arg(long, default_value_t = tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD,
          env = "TILLSTREAM_QUIC_MAX_UDP_PAYLOAD",
          value_parser = clap::value_parser!(u16).range(1200..=65_527))]
    quic_max_udp_payload: u16,
    /// Testing only: make every store commit first sleep for a time drawn
    /// uniformly from MIN..MAX milliseconds (slow storage rehearsal).
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_ms_range, hide = true)]
    inject_commit_delay_ms: Option<(Duration, Duration)>,
    #[command(flatten)]
    auth: super::credentials::AuthArgs,
}

/// Parses `50..500` (or a single `100`) as a range of milliseconds.
fn parse_ms_range(s: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = s.split_once("..").unwrap_or((s, s));
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{s:?} is not MIN..MAX in milliseconds, like 50..500"))
    };
    let (lo, hi) = (ms(lo)?, ms(hi)?);
    if lo > hi {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((lo, hi))
}

impl Args {
    /// Whether to print the settings instead of serving.
    pub(crate) fn print_config(&self) -> bool {
        self.print_config
    }
}

/// serve's settings as the command line, its variables and its config
/// file give them, and each one's value as typed, by name.
pub(crate) struct Settings {
    args: Args,
    raw: RawValues,
}

/// Each setting's value as typed (or defaulted), by its id.
pub(crate) type RawValues = BTreeMap<String, Vec<OsString>>;

/// What `matches` (serve's) holds, as typed, by setting.
pub(crate) fn raw_values(matches: &ArgMatches) -> RawValues {
    matches
        .ids()
        .filter_map(|id| {
            let raw = matches.try_get_raw(id.as_str()).ok().flatten()?;
            Some((id.to_string(), raw.map(OsStr::to_os_string).collect()))
        })
        .collect()
}

/// serve's settings read again from the same command line and variables
/// and the config file as it is now: what SIGHUP does.
pub(crate) fn reread(root: &clap::Command, user_argv: &[OsString]) -> anyhow::Result<Settings> {
    let file = crate::config_file::config_flag(user_argv);
    let loaded =
        settings::load(root, user_argv, file.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let serve = loaded
        .matches
        .subcommand_matches("serve")
        .context("no serve settings")?;
    Ok(Settings {
        args: Args::from_arg_matches(serve)?,
        raw: raw_values(serve),
    })
}

/// The settings SIGHUP puts in force; the others need a restart.
const RELOADABLE: [&str; 5] = [
    "max_connections",
    "max_events_per_s_per_device",
    "max_stores_per_device",
    "max_terminals_per_device",
    "max_skus_per_device",
];

/// Re-reads the settings and puts the reloadable ones in force; says
/// which changed, and which changed but wait for a restart. A file that
/// no longer parses changes nothing (the error is logged, the server
/// keeps its limits).
fn reload(server: &Server, started: &RawValues, reread: &dyn Fn() -> anyhow::Result<Settings>) {
    // Where it listens is no limit SIGHUP changes: the running server's
    // addresses stand in, so a reload resolves no name.
    let at = Endpoints {
        listen: server.quic_addr(),
        http: server.http_addr(),
        resolved: Vec::new(),
    };
    let now = match reread().and_then(|s| Ok((server_config(s.args, &at)?, s.raw))) {
        Ok(n) => n,
        Err(e) => {
            server.reload_refused();
            crate::logging::fail(format!(
                "SIGHUP: the settings do not parse, nothing was reloaded: {e:#}"
            ));
            return;
        }
    };
    let (cfg, raw) = now;
    let pending: Vec<String> = raw
        .keys()
        .chain(started.keys())
        .filter(|k| !RELOADABLE.contains(&k.as_str()) && raw.get(*k) != started.get(*k))
        .map(|id| id.replace('_', "-"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !pending.is_empty() {
        tracing::warn!(
            settings = pending.join(", "),
            "SIGHUP: these changed but only take effect at a restart"
        );
    }
    match server.reload(ReloadableLimits::of(&cfg)) {
        Ok(changed) if changed.is_empty() => {
            tracing::info!("SIGHUP: limits unchanged; revocation list read");
        }
        Ok(changed) => {
            let what: Vec<String> = changed
                .iter()
                .map(|c| format!("{} {} -> {}", c.setting, c.old, c.new))
                .collect();
            crate::logging::say(format!("reloaded: {}", what.join(", ")));
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: reading the revocation list failed"),
    }
}

/// Reads the token keys again (SIGHUP), so that each phase of a key
/// rotation needs no restart. Before the settings: a config file that no
/// longer parses holds no key back. A key file that does not load changes
/// nothing, and says which file.
fn reload_keys(server: &Server) {
    let before = server.token_keys();
    match server.reload_keys() {
        Ok(Some(now)) if before.as_ref() != Some(&now) => {
            crate::logging::say(format!(
                "SIGHUP: token keys now: signing {}, accepted [{}]",
                now.signing,
                now.accepted.join(", ")
            ));
        }
        Ok(_) => tracing::info!("SIGHUP: token keys unchanged"),
        Err(e) => crate::logging::fail(format!(
            "SIGHUP: the token keys did not load, the keys in force stay: {e}"
        )),
    }
}

/// The server's configuration from serve's settings (which passed
/// `Args::problems`) and where it listens.
fn server_config(args: Args, at: &Endpoints) -> anyhow::Result<ServerConfig> {
    let mut cfg = ServerConfig::new(&args.data_dir);
    cfg.listen = at.listen;
    if let Some(s) = args.shards {
        cfg.shards = s;
    }
    cfg.http = at.http;
    cfg.flush_interval = Duration::from_millis(args.flush_interval_ms);
    cfg.tls = args.tls_cert.zip(args.tls_key);
    cfg.drain_timeout = Duration::from_secs(args.drain_timeout_s);
    cfg.max_inflight_bytes_per_shard =
        usize::try_from(args.max_inflight_mib_per_shard << 20).unwrap_or(usize::MAX);
    cfg.memory_soft_limit_bytes = args.memory_soft_limit_mib.saturating_mul(1 << 20);
    if let Some(n) = args.max_handshakes {
        cfg.max_handshakes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    cfg.handshake_max_wait = Duration::from_millis(args.handshake_max_wait_ms);
    cfg.passivate_after = Duration::from_secs(args.passivate_after_s);
    cfg.max_clock_skew = Duration::from_secs(args.max_clock_skew_s);
    cfg.ack_stall_not_ready = Duration::from_secs(args.ack_stall_not_ready_s);
    cfg.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    cfg.max_events_per_s_per_device = args.max_events_per_s_per_device;
    cfg.max_stores_per_device = usize::try_from(args.max_stores_per_device).unwrap_or(16);
    cfg.max_terminals_per_device = usize::try_from(args.max_terminals_per_device).unwrap_or(16);
    cfg.max_skus_per_device = usize::try_from(args.max_skus_per_device).unwrap_or(200_000);
    cfg.hello_timeout = Duration::from_millis(args.hello_timeout_ms);
    cfg.idle_timeout = Duration::from_secs(args.idle_timeout_s);
    cfg.auth = args.auth.config()?;
    cfg.cluster = args.cluster.then(|| tillstream_engine::ClusterConfig {
        advertise_quic: args.advertise.clone(),
        advertise_http: args.advertise_http.clone(),
    });
    cfg.max_frame_buffer_bytes =
        usize::try_from(args.max_frame_buffers_mib << 20).unwrap_or(usize::MAX);
    cfg.frame_deadline = Duration::from_secs(args.frame_deadline_s);
    cfg.quic_window_bytes = args.quic_window_kib << 10;
    cfg.quic_max_udp_payload = args.quic_max_udp_payload;
    cfg.store = args.store.writer(&args.writer)?;
    cfg.faults.commit_delay = args.inject_commit_delay_ms;
    Ok(cfg)
}

pub(crate) fn run(
    args: Args,
    started: RawValues,
    reread: impl Fn() -> anyhow::Result<Settings>,
    allocator: Option<crate::AllocatorHooks>,
) -> anyhow::Result<ExitCode> {
    // The settings passed `config::load`'s checks (check-config's). Now
    // the machine's, before the data directory, keys or certificate are
    // made: a start that cannot listen leaves nothing behind.
    let at = match args.endpoints() {
        Ok(at) => at,
        Err(problems) => return Ok(refused(problems)),
    };
    for said in &at.resolved {
        crate::logging::say(said);
    }
    let problems = args.environment_problems(&at);
    if !problems.is_empty() {
        return Ok(refused(problems));
    }
    let journal_dir = args.journal_dir.clone();
    let mut cfg = server_config(args, &at)?;
    cfg.journal_dir = journal_dir;
    cfg.release_memory = allocator.map(|a| a.release_memory);
    cfg.purge_soon = allocator.map(|a| a.purge_soon);
    if let Some((lo, hi)) = cfg.faults.commit_delay {
        tracing::warn!(?lo, ?hi, "fault injection: every store commit is delayed");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tillstream")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut signals = Signals::register();
        let journal_dir = cfg.journal_dir.clone();
        let server = Server::start(cfg).await.context("starting the server")?;
        if let Some(dir) = journal_dir {
            let placed = std::fs::canonicalize(&dir).unwrap_or(dir);
            crate::logging::say(format!("the journal is in {}", placed.display()));
        }
        crate::logging::say(format!(
            "tillstream listening on {} (QUIC, ALPN tillstream/1); devices trust {}",
            server.quic_addr(),
            server.cert_path().display()
        ));
        match server.settings().auth.as_str() {
            "none" => crate::logging::say("AUTHENTICATION IS OFF (--auth none): any peer may write as any device for any store"),
            modes => crate::logging::say(format!(
                "devices authenticate by {modes} (`tillstream token issue --device ID --store ID --role terminal`; signing key {})",
                server
                    .signing_key_path()
                    .map_or_else(String::new, |p| p.display().to_string())
            )),
        }
        // During a key rotation the operator checks each node's keys.
        if let Some(keys) = server.token_keys().filter(|k| !k.accepted.is_empty()) {
            crate::logging::say(format!(
                "token key {} signs; tokens of [{}] are accepted too (auth/previous-keys)",
                keys.signing,
                keys.accepted.join(", ")
            ));
        }
        if let Some(h) = server.http_addr() {
            crate::logging::say(format!(
                "HTTP API on http://{h} (/metrics, /healthz, /readyz, /v1/verify, the query API /api/v1/, described at /api/v1/openapi.json)"
            ));
        }
        loop {
            match signals.next().await {
                Signal::Stop => break,
                Signal::Reload => {
                    reload_keys(&server);
                    reload(&server, &started, &reread);
                }
            }
        }
        crate::logging::say("draining...");
        server.shutdown().await.context("shutting down")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Each problem once, and the exit code of a start that failed.
fn refused(problems: Vec<crate::config_file::Problem>) -> ExitCode {
    for p in problems {
        crate::logging::fail(p);
    }
    ExitCode::from(crate::EXIT_ERROR)
}

/// What a signal asks of the server.
enum Signal {
    /// SIGTERM or Ctrl-C: drain and exit.
    Stop,
    /// SIGHUP: re-read the limits, the token keys and the revocation list.
    Reload,
}

/// The signals `serve` answers, registered once, before the server
/// starts: from then on SIGHUP no longer ends the process (its default).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => Signal::Stop,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                () = recv(&mut self.hup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_delay_ranges_parse_and_bad_ones_are_explained() {
        let ms = Duration::from_millis;
        assert_eq!(parse_ms_range("50..500"), Ok((ms(50), ms(500))));
        assert_eq!(parse_ms_range("100"), Ok((ms(100), ms(100))));
        assert!(parse_ms_range("500..50").is_err());
        assert!(parse_ms_range("fast").is_err_and(|e| e.contains("MIN..MAX")));
    }
}
