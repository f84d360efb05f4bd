//! `tillstream-curves`: how throughput and ack latency scale with shard
//! count, connections, resident SKUs and batch size, each as a JSON file and
//! an SVG chart.
//!
//! Every point is a flat-out run of the loadgen's fleet against a fresh
//! in-process server over a temporary directory, as `tillstream-loadgen`
//! runs without `--server`; all else stays at the loadgen's defaults. The
//! figure of a point is the median of `--runs` runs (by events/s; its p50
//! and p99 come from that same run).

mod chart;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tillstream_engine::{Server, ServerConfig};
use tillstream_loadgen::cli::Args as LoadArgs;
use tillstream_loadgen::fleet::{self, RunConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure tillstream's scale curves: events/s and ack latency against
/// shard count (1–8), connections (10–10,000), resident SKUs (1k–1M) and
/// batch size, each a JSON file and an SVG chart in --out.
#[derive(Debug, Parser)]
#[command(name = "tillstream-curves", version, about, long_about)]
struct Cli {
    /// Events per run (the connection curve sends at least 100 per device).
    #[arg(long, default_value_t = 300_000)]
    events: u64,
    /// Runs per point; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the JSON files and charts go.
    #[arg(long, default_value = "benches/curves")]
    out: PathBuf,
    /// Only these curves (shards, connections, skus, batch); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One curve: what varies, and a run's loadgen flags for each value.
struct Sweep {
    name: &'static str,
    x_label: &'static str,
    log_x: bool,
    note: &'static str,
    points: Vec<(f64, Vec<String>, Option<u16>)>,
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

fn sweeps(events: u64) -> Vec<Sweep> {
    let ev = |n: u64| ("events", n.to_string());
    vec![
        Sweep {
            name: "shards",
            x_label: "shard actors",
            log_x: false,
            note: "100 devices (10 stores × 8 tills + 2 sensors), 128 events a batch",
            points: [1u16, 2, 3, 4, 6, 8]
                .into_iter()
                .map(|s| (f64::from(s), flags(&[ev(events)]), Some(s)))
                .collect(),
        },
        Sweep {
            name: "connections",
            x_label: "connected devices",
            log_x: true,
            note: "stores × (8 tills + 2 sensors), one QUIC connection each, 128 events a batch, \
                   at least 100 events per device",
            points: [1u32, 10, 100, 1000]
                .into_iter()
                .map(|stores| {
                    let devices = u64::from(stores) * 10;
                    let n = events.max(devices * 100);
                    let f = flags(&[ev(n), ("stores", stores.to_string())]);
                    (devices as f64, f, None)
                })
                .collect(),
        },
        Sweep {
            name: "skus",
            x_label: "resident SKUs (store, product) after the run",
            log_x: true,
            note: "10 stores, catalogue of 100 to 100,000 products; x is what the shards held",
            points: [100u32, 1_000, 10_000, 100_000]
                .into_iter()
                .map(|skus| {
                    let n = events.max(u64::from(skus) * 20);
                    (
                        f64::from(skus),
                        flags(&[ev(n), ("skus", skus.to_string())]),
                        None,
                    )
                })
                .collect(),
        },
        Sweep {
            name: "batch",
            x_label: "events per batch",
            log_x: true,
            note: "100 devices, 4 batches in flight each",
            points: [8u32, 32, 128, 512, 2048]
                .into_iter()
                .map(|b| {
                    (
                        f64::from(b),
                        flags(&[ev(events), ("batch-size", b.to_string())]),
                        None,
                    )
                })
                .collect(),
        },
    ]
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    events: u64,
    pub(crate) events_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    resident_skus: u64,
    rss_mib: f64,
}

/// One point of a curve: its x, the median run and every run's events/s.
#[derive(Debug, Serialize)]
pub(crate) struct Point {
    pub(crate) x: f64,
    pub(crate) median: Sample,
    runs_events_per_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Curve {
    pub(crate) name: &'static str,
    pub(crate) x_label: &'static str,
    pub(crate) log_x: bool,
    note: &'static str,
    runs_per_point: usize,
    pub(crate) points: Vec<Point>,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn run_once(loadgen_flags: &[String], shards: Option<u16>) -> anyhow::Result<Sample> {
    let args = LoadArgs::try_parse_from(
        std::iter::once("tillstream-loadgen".to_string()).chain(loadgen_flags.iter().cloned()),
    )
    .context("building the loadgen's arguments")?;
    let (work, _) = tillstream_loadgen::run::prepare(&args).await?;
    let total = work.events;
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Some(s) = shards {
        cfg.shards = s;
    }
    let server = Server::start(cfg)
        .await
        .context("starting the in-process server")?;
    let result = async {
        let ca = std::fs::read(server.cert_path())?;
        let rc = RunConfig::flat_out(
            server.quic_addr(),
            ca,
            tillstream_loadgen::credentials::Credentials::of_server(&server)?,
            args.max_inflight,
            Duration::from_secs(600),
        );
        let out = fleet::run(work, &rc).await?;
        if let Some(f) = out.failures.first() {
            bail!("{f}");
        }
        if !out.complete(total) {
            bail!("{} of {total} events acknowledged", out.events_acked);
        }
        let resident_skus = server
            .shard_stats()
            .await
            .iter()
            .map(|s| s.skus_active)
            .sum();
        let ms = |q: f64| out.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Ok(Sample {
            events: out.events_acked,
            events_per_s: out.events_acked as f64 / out.elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            resident_skus,
            rss_mib: rss_mib(),
        })
    }
    .await;
    if let Err(e) = server.shutdown().await {
        eprintln!("[curves] the in-process server did not shut down cleanly: {e}");
    }
    result
}

async fn measure(sweep: &Sweep, runs: usize) -> anyhow::Result<Curve> {
    let mut points = Vec::new();
    for (x, f, shards) in &sweep.points {
        let mut samples = Vec::new();
        for r in 0..runs {
            eprintln!("[curves] {} = {x}: run {}/{runs}", sweep.name, r + 1);
            samples.push(
                run_once(f, *shards)
                    .await
                    .with_context(|| format!("{} = {x}", sweep.name))?,
            );
        }
        let mut by_speed = samples.clone();
        by_speed.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
        let median = by_speed[by_speed.len() / 2].clone();
        let x = if sweep.name == "skus" {
            median.resident_skus as f64
        } else {
            *x
        };
        eprintln!(
            "[curves] {} = {x}: {:.0} events/s, p50 {:.1} ms, p99 {:.1} ms",
            sweep.name, median.events_per_s, median.p50_ms, median.p99_ms
        );
        points.push(Point {
            x,
            median,
            runs_events_per_s: samples.iter().map(|s| s.events_per_s).collect(),
        });
    }
    Ok(Curve {
        name: sweep.name,
        x_label: sweep.x_label,
        log_x: sweep.log_x,
        note: sweep.note,
        runs_per_point: runs,
        points,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    for sweep in sweeps(cli.events) {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == sweep.name) {
            continue;
        }
        let curve = rt.block_on(measure(&sweep, cli.runs))?;
        let json = cli.out.join(format!("{}.json", curve.name));
        std::fs::write(&json, serde_json::to_vec_pretty(&curve)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = cli.out.join(format!("{}.svg", curve.name));
        chart::draw(&curve, &svg)?;
        println!("{} and {}", json.display(), svg.display());
    }
    Ok(())
}
