//! The command line.

use std::path::PathBuf;

use clap::Parser;

use crate::sched::DeviceSched;

/// Drive a tillstream server with a simulated fleet of tills and shelf
/// sensors (or a replayed CSV export), then report throughput, ack latency
/// percentiles and, with --verify, whether every acknowledged event was
/// stored exactly once.
///
/// Without --server it starts a server in process on 127.0.0.1 over a fresh
/// temporary directory: one command for a complete benchmark. All batches
/// are generated and encoded before the clock starts. The exit code is 0
/// only if every event was acknowledged (and verified, with --verify).
#[derive(Debug, Clone, Parser)]
#[command(name = "tillstream-loadgen", version, about, long_about)]
pub struct Args {
    /// QUIC address of a running server (host:port), or a comma-separated
    /// list of the nodes of one cluster (`--server
    /// 10.0.0.1:7400,10.0.0.2:7400`): seeds that share one certificate
    /// (--ca) and one server name (--server-name), all of one address
    /// family. Every device gets the whole list and starts at seed `device
    /// % n`; a node that does not serve a device's store redirects it to
    /// the one that does. At least one must answer a QUIC handshake within
    /// 5 s before anything is sent ("cannot connect to ..." otherwise; a
    /// warning names those that do not); --http is derived from the first.
    /// Without it, a server is started in process.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub server: Option<String>,

    /// PEM file of the certificate to trust (the server's self-signed
    /// certificate or its CA). Required with --server.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca: Option<PathBuf>,

    /// Name the server's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,

    /// The server's token signing key (DATA_DIR/auth/signing.key of the
    /// server): each simulated device gets a token of its own, for its
    /// store and role, as a provisioned fleet would, and --verify an admin
    /// token for the HTTP API. Needed with --server unless the server runs
    /// --auth none; without --server the loadgen uses its own server's key.
    #[arg(long, value_name = "FILE")]
    pub token_key: Option<PathBuf>,

    /// The server's data directory holding its device CA (`tillstream ca
    /// init`), for `--auth certificate` with --server: each simulated
    /// device gets a certificate of its own.
    #[arg(long, value_name = "DATA_DIR", requires = "server")]
    pub device_ca_dir: Option<PathBuf>,

    /// How the devices authenticate: `token` (a signed token in Hello),
    /// `certificate` (a client certificate per device from the device CA:
    /// the in-process server's, made if missing, or --device-ca-dir's) or
    /// `none` (the in-process server runs with authentication off, for a
    /// benchmark without it). The report says which mode ran.
    #[arg(long, value_enum, default_value_t = AuthMode::Token)]
    pub auth: AuthMode,

    /// Base URL of the server's HTTP API, for --verify, the server's CPU
    /// time and ack latency, and its settings in the report [default:
    /// http://<server ip>:<server port + 1>, as `tillstream serve` pairs
    /// its defaults 7400 and 7401]. Asked (GET /healthz) before anything
    /// is sent: with --verify, a run whose API does not answer fails
    /// there; without, it goes on without the server's figures.
    #[arg(long, value_name = "URL", requires = "server")]
    pub http: Option<String>,

    /// Events to send in all.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub events: u64,

    /// Send for this many seconds at --rate instead of a count of events
    /// (the events are --rate × --duration).
    #[arg(long, value_name = "SECS", requires = "rate")]
    pub duration: Option<f64>,

    /// Log format on stderr; with json every line is JSON, the periodic
    /// stats lines included.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "TILLSTREAM_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Stores of the simulated chain.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub stores: u32,

    /// Tills per store (in CSV replay: tills per country).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub terminals_per_store: u32,

    /// Shelf sensors per store.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub sensors_per_store: u32,

    /// Products in the chain's catalogue.
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    pub skus: u32,

    /// Events per batch (a batch too large for one frame is split).
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch_size: u32,

    /// With --rate, a device also sends its batch once its first event
    /// has waited this long, as a till's flush timer does, so a large
    /// fleet at a low rate sends small batches steadily instead of all
    /// its full ones at once. A device's last batch too, which may be
    /// after the run's last event: the report counts its events but
    /// does not time that wait. Milliseconds; 0 waits for --batch-size.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub batch_max_wait_ms: u64,

    /// Target events per second over the whole fleet; 0 sends as fast as
    /// the server acknowledges.
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 0.0)]
    pub rate: f64,

    /// Simulated microseconds between consecutive events [default: 1e6 /
    /// --rate with a rate, else 20]. A run whose simulated clock keeps
    /// pace with the wall clock (a --rate with step × rate ≤ 1 s) starts
    /// it now; any other run starts it far enough back that its last
    /// event is stamped now, so no event is past the server's bound on
    /// future times (`tillstream serve --max-clock-skew-s`).
    #[arg(long, value_name = "US")]
    pub sim_step_us: Option<i64>,

    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// Run id in the high bits of every device id (24 bits), so repeated
    /// runs against one server use fresh devices [default: 0 in process,
    /// else taken from the clock].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=0xff_ffff))]
    pub run_id: Option<u32>,

    /// Unacknowledged batches each device may have in flight (the server's
    /// limit may lower it). The default is a till's stop-and-wait, which
    /// gives the lowest ack latency. Each batch more per device adds its
    /// queueing to the ack latency (Little's law) for some throughput:
    /// with the default 100 devices on 2 cores, 2 gave 19% more events/s
    /// at twice the p50 (14 against 7.8 ms). Fleets of a few devices need
    /// more to saturate the server.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_inflight: usize,

    /// Threads that run the devices, on a runtime of their own [default:
    /// the loadgen's runtime, a thread per core, shared with the
    /// in-process server if there is one]. Against a server on the same
    /// cores, fewer leave it more: on 2 cores with `--server` on loopback,
    /// `--device-threads 1` gave 5 to 10% more events/s at the peak and
    /// cost the server 2 to 5% less CPU an event, as the two processes'
    /// threads took turns on the cores less often; but 10,000 devices'
    /// timers and acks then queue behind one thread, and their ack p99 was
    /// worse.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub device_threads: Option<u16>,

    /// Scheduling policy of the threads that run the devices: `batch`
    /// (Linux `SCHED_BATCH`: the same share of the CPU, but a device
    /// woken by an ack or a timer waits for the server to yield instead
    /// of preempting it) or `normal`. [default: `batch` where the devices
    /// have threads of their own (`--server`, or `--device-threads`),
    /// `normal` where they share the in-process server's]. With a server
    /// on the same cores, `normal` measures the loadgen's scheduling as
    /// part of the server's CPU. The report says which ran.
    #[arg(long, value_name = "POLICY", value_enum)]
    pub device_sched: Option<DeviceSched>,

    /// Shard actors of the in-process server [default: half the cores, at least one].
    #[arg(long, value_name = "N", conflicts_with = "server")]
    pub shards: Option<u16>,

    /// How often the in-process server writes acknowledged rows to its
    /// tables, milliseconds [default: the server's].
    #[arg(long, value_name = "MS", conflicts_with = "server")]
    pub flush_interval_ms: Option<u64>,

    /// Largest UDP payload the in-process server lets devices send, bytes
    /// [default: the server's, 65507]; the devices' own bound too. On
    /// loopback, QUIC's path MTU discovery reaches it; 8952 plays a
    /// jumbo-frame network, 1472 a 1500-byte Ethernet path, where a batch
    /// takes 3 and 18 packets instead of 1.
    #[arg(long, value_name = "BYTES", conflicts_with = "server",
          value_parser = clap::value_parser!(u16).range(1200..=65_527))]
    pub quic_max_udp_payload: Option<u16>,

    /// Data directory of the in-process server [default: a fresh temporary
    /// directory, removed at exit]. A given directory is kept.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,

    /// Write the JSON report to FILE (otherwise it goes to stdout): events
    /// per second, ack latency percentiles, the verify result, and `cpu`,
    /// the CPU time the run cost: the server's own with --server (read
    /// from its /metrics at the start and the end), else this process's,
    /// server and devices together.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write the acknowledged batches to FILE as JSON
    /// (`[{"device":"..","seq":..,"events":..}]`), the manifest that
    /// `tillstream verify --expected FILE` checks the store against.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// After every event is acknowledged, check that the server stored
    /// each acknowledged event exactly once (in process, or with POST
    /// {http}/v1/verify).
    #[arg(long)]
    pub verify: bool,

    /// Fail if not every event is acknowledged within this many seconds
    /// of the devices' first dial (their connections included).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub give_up_after: u64,

    /// Replay this CSV export (online-retail format) instead of simulating
    /// a fleet: one invoice is one sale, one country one store.
    #[arg(long, value_name = "FILE")]
    pub replay_csv: Option<PathBuf>,
}

/// Log format of the loadgen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines (coloured on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// Checks what clap cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.server.is_some() && self.ca.is_none() {
            anyhow::bail!(
                "--ca FILE is required with --server (the PEM of the server's certificate)"
            );
        }
        if self.server.is_some()
            && self.auth == AuthMode::Certificate
            && self.device_ca_dir.is_none()
        {
            anyhow::bail!(
                "--auth certificate with --server needs --device-ca-dir DATA_DIR (the data directory where `tillstream ca init` made the CA)"
            );
        }
        if self.server.is_none() && self.token_key.is_some() {
            anyhow::bail!("--token-key is for --server; the in-process server's own key is used");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            anyhow::bail!("--rate must be a number of events per second, 0 or more");
        }
        if self.sim_step_us.is_some_and(|s| s < 0) {
            anyhow::bail!("--sim-step-us cannot be negative");
        }
        if self.device_sched == Some(DeviceSched::Batch) && !self.devices_have_own_threads() {
            anyhow::bail!(
                "--device-sched batch needs the devices on threads of their own (--server or --device-threads): the in-process server shares them"
            );
        }
        Ok(())
    }

    /// Whether no server task runs on the device threads: against
    /// --server, or on a runtime of their own.
    fn devices_have_own_threads(&self) -> bool {
        self.server.is_some() || self.device_threads.is_some()
    }

    /// The policy of the binary's own runtime, where that runtime runs the
    /// devices and nothing of a server's (--server without
    /// --device-threads); `None` where it runs a server or no devices.
    pub fn main_runtime_sched(&self) -> Option<DeviceSched> {
        (self.server.is_some() && self.device_threads.is_none()).then(|| self.device_sched())
    }

    /// The policy the device threads run under: --device-sched, else
    /// `batch` where they are the devices' alone (`sched` module docs).
    pub fn device_sched(&self) -> DeviceSched {
        self.device_sched
            .unwrap_or(if self.devices_have_own_threads() {
                DeviceSched::Batch
            } else {
                DeviceSched::Normal
            })
    }

    /// The longest a batch stays open, in events of the whole run (the
    /// run's clock at --rate); none flat out or with a wait of 0.
    pub fn batch_max_wait_events(&self) -> Option<u64> {
        (self.rate > 0.0 && self.batch_max_wait_ms > 0).then(|| {
            (self.rate * self.batch_max_wait_ms as f64 / 1000.0)
                .round()
                .max(1.0) as u64
        })
    }

    /// The events to send: --events, or --rate × --duration.
    pub fn events_to_send(&self) -> anyhow::Result<u64> {
        match self.duration {
            None => Ok(self.events),
            Some(d) if d > 0.0 && self.rate > 0.0 => Ok((d * self.rate).round().max(1.0) as u64),
            Some(_) => {
                anyhow::bail!("--duration needs a positive --rate and a positive number of seconds")
            }
        }
    }

    /// Simulated µs between events.
    pub fn step_us(&self) -> i64 {
        self.sim_step_us.unwrap_or(if self.rate > 0.0 {
            (1e6 / self.rate).round().max(1.0) as i64
        } else {
            20
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_duration_at_a_rate_is_a_count_of_events() -> anyhow::Result<()> {
        let a = Args::try_parse_from(["x", "--rate", "2000", "--duration", "1.5"])?;
        assert_eq!(a.events_to_send()?, 3_000);
        assert!(
            Args::try_parse_from(["x", "--duration", "3"]).is_err(),
            "needs --rate"
        );
        let a = Args::try_parse_from(["x", "--rate", "10", "--duration=-1"])?;
        assert!(a.events_to_send().is_err());
        let a = Args::try_parse_from(["x", "--events", "7"])?;
        assert_eq!(a.events_to_send()?, 7);
        Ok(())
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_checks() -> anyhow::Result<()> {
        let a = Args::try_parse_from(["tillstream-loadgen"])?;
        assert_eq!(
            (a.events, a.stores, a.batch_size, a.seed),
            (1_000_000, 10, 128, 1)
        );
        a.check()?;
        assert_eq!(a.step_us(), 20);
        let a = Args::try_parse_from(["x", "--rate", "50000"])?;
        assert_eq!(a.step_us(), 20);
        let a = Args::try_parse_from(["x", "--server", "127.0.0.1:7400"])?;
        assert!(a.check().is_err(), "--ca is required with --server");
        assert!(Args::try_parse_from(["x", "--ca", "c.pem"]).is_err());
        assert!(Args::try_parse_from(["x", "--server", "h:1", "--shards", "2"]).is_err());
        let a = Args::try_parse_from(["x", "--rate=-1"])?;
        assert!(a.check().is_err());
        Ok(())
    }

    #[test]
    fn device_threads_are_batch_only_where_no_server_shares_them() -> anyhow::Result<()> {
        let remote = ["x", "--server", "h:1", "--ca", "c.pem"];
        let a = Args::try_parse_from(remote)?;
        assert_eq!(a.device_sched(), DeviceSched::Batch);
        assert_eq!(a.main_runtime_sched(), Some(DeviceSched::Batch));
        let a = Args::try_parse_from(["x", "--device-threads", "1"])?;
        assert_eq!(a.device_sched(), DeviceSched::Batch);
        assert_eq!(
            a.main_runtime_sched(),
            None,
            "the main runtime runs the server"
        );
        let a = Args::try_parse_from(["x", "--device-threads", "1", "--device-sched", "batch"])?;
        a.check()?;
        let mut args = remote.to_vec();
        args.extend(["--device-threads", "2"]);
        let a = Args::try_parse_from(args)?;
        assert_eq!(
            a.main_runtime_sched(),
            None,
            "the devices have a runtime of their own"
        );
        let a = Args::try_parse_from(["x"])?;
        assert_eq!(a.device_sched(), DeviceSched::Normal);
        assert_eq!(a.main_runtime_sched(), None);
        let a = Args::try_parse_from(["x", "--device-sched", "batch"])?;
        assert!(
            a.check().is_err(),
            "batch would put the in-process server's threads under it too"
        );
        let mut args = remote.to_vec();
        args.extend(["--device-sched", "normal"]);
        let a = Args::try_parse_from(args)?;
        a.check()?;
        assert_eq!(a.device_sched(), DeviceSched::Normal);
        Ok(())
    }
}

/// How the simulated devices authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// A token per device, signed with the server's key.
    Token,
    /// A client certificate per device, issued by the server's device CA.
    Certificate,
    /// None: the server runs with authentication off.
    None,
}
