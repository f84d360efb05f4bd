//! `tillstream-chaos-relay`: a lossy UDP relay between devices (or the
//! loadgen) and a server, for the bad-network fault tests. This machine's
//! kernel has no netem, so loss, delay, reordering and partitions are made
//! here, in user space. The relay itself is `tillstream_tests::relay`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tillstream_tests::relay::{Faults, Phase, Relay, RelayConfig, RelayStats};

/// A lossy UDP relay: every datagram, in both directions, is dropped with
/// probability --loss, or else delivered after a delay drawn uniformly from
/// --delay-ms ± --jitter-ms (a jitter wider than the packet spacing
/// reorders them). From --partition-after-s for --partition-for-s nothing
/// gets through either way (queued datagrams falling due then are dropped
/// too). After --faults-for-s the link is clean: no loss, no delay. All
/// times count from the relay's start.
///
/// Each client source address gets its own upstream socket to --server, so
/// the server sees as many peers as there are clients.
///
/// Standard output, one line each, for scripts and tests:
///
///   relay listening on ADDR           once bound (first line)
///
///   relay config ...                  what it was told, for the record
///
///   relay phase NAME t_ms=T           lossy | partitioned | clean, as each begins
///
///   relay stats JSON                  every --stats-every-s, if set
///
///   relay summary JSON                when stopped
///
/// The JSON holds, per direction (to_server, to_client): received,
/// forwarded, lost (random loss), partitioned, reordered (forwarded after a
/// datagram of the same flow that arrived later), overflow (delay queue
/// full), failed (send errors); and flows, queued.
///
/// It stops on SIGINT or SIGTERM, and with --exit-on-stdin-close when its
/// standard input closes (so a test that dies takes the relay with it).
#[derive(Debug, Parser)]
#[command(
    name = "tillstream-chaos-relay",
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    /// UDP address to listen on for clients (port 0: any free port, see the
    /// `relay listening on` line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// The server's UDP (QUIC) address.
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,

    /// Probability that a datagram is dropped, 0 to 1.
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    loss: f64,

    /// Mean one-way delay added to each datagram, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    delay_ms: u64,

    /// Half-width of the uniform spread of the delay, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    jitter_ms: u64,

    /// Start of a full partition, seconds after the start [default: no
    /// partition].
    #[arg(long, value_name = "S")]
    partition_after_s: Option<f64>,

    /// Length of the partition, seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    partition_for_s: f64,

    /// End of the loss and delay, seconds after the start; the link is
    /// clean afterwards [default: faulty until stopped].
    #[arg(long, value_name = "S")]
    faults_for_s: Option<f64>,

    /// Seed of the loss and delay draws.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Print a `relay stats` line this often, seconds (0: never).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    stats_every_s: f64,

    /// Most datagrams held in the delay queue; more are dropped (counted
    /// as overflow).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    max_queued: usize,

    /// Forget a client address (and close its upstream socket) after this
    /// many seconds without a datagram from it.
    #[arg(long, value_name = "S", default_value_t = 120.0)]
    flow_idle_s: f64,

    /// Stop when standard input reaches end of file.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

fn secs(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("--{name} {s}: {e}"))
}

fn faults(a: &Args) -> Result<Faults, String> {
    if !(0.0..=1.0).contains(&a.loss) {
        return Err(format!("--loss {} is not a probability (0 to 1)", a.loss));
    }
    Ok(Faults {
        loss: a.loss,
        delay: Duration::from_millis(a.delay_ms),
        jitter: Duration::from_millis(a.jitter_ms),
        partition_after: a
            .partition_after_s
            .map(|s| secs("partition-after-s", s))
            .transpose()?,
        partition_for: secs("partition-for-s", a.partition_for_s)?,
        faults_for: a
            .faults_for_s
            .map(|s| secs("faults-for-s", s))
            .transpose()?,
    })
}

fn json(stats: &RelayStats) -> String {
    serde_json::to_string(stats).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Completes on SIGINT, SIGTERM, or (if asked) end of standard input.
async fn stopped(stdin: bool) {
    let stdin_closed = async move {
        if !stdin {
            return std::future::pending().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Standard input is blocking: a thread waits for its end.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        let _ = rx.await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
        () = stdin_closed => {}
    }
}

async fn run(args: Args) -> Result<(), String> {
    let faults = faults(&args)?;
    let tick = (args.stats_every_s > 0.0)
        .then(|| secs("stats-every-s", args.stats_every_s))
        .transpose()?;
    // Buffers as large as the devices' and the server's (`open_flow`).
    let socket = tillstream_client::udp::bind(args.listen, tillstream_client::udp::BUFFER_BYTES)
        .and_then(|(socket, _)| {
            socket.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(socket)
        })
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let relay = Relay::new(
        socket,
        RelayConfig {
            server: args.server,
            faults,
            seed: args.seed,
            max_queued: args.max_queued,
            flow_idle: secs("flow-idle-s", args.flow_idle_s)?,
        },
    );
    let addr = relay.local_addr().map_err(|e| e.to_string())?;
    println!("relay listening on {addr}");
    println!(
        "relay config server={} seed={} {faults:?}",
        args.server, args.seed
    );
    let on_phase =
        |p: Phase, t: Duration| println!("relay phase {} t_ms={}", p.name(), t.as_millis());
    let on_tick = |s: &RelayStats| println!("relay stats {}", json(s));
    let stats = relay
        .run(stopped(args.exit_on_stdin_close), on_phase, tick, on_tick)
        .await;
    println!("relay summary {}", json(&stats));
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tillstream-chaos-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tillstream-chaos-relay: {e}");
            ExitCode::from(2)
        }
    }
}
