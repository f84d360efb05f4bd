//! `tillstream-curves`: how throughput and ack latency scale with shard
//! count, connections, resident SKUs and batch size, each as a JSON file and
//! an SVG chart.
//!
//! Every point is a flat-out run of the loadgen's fleet against a fresh
//! in-process server over a temporary directory, as `tillstream-loadgen`
//! runs without `--server`; all else stays at the loadgen's defaults. The
//! figure of a point is the median of `--runs` runs (by events/s; its p50
//! and p99 come from that same run).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use tillstream_loadgen::sweep::{Curve, chart, measure_point};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure tillstream's scale curves: events/s and ack latency against
/// shard count (1–8), connections (10–10,000), resident SKUs (1k–1M) and
/// batch size, each a JSON file and an SVG chart in --out.
#[derive(Debug, Parser)]
#[command(name = "tillstream-curves", version, about, long_about)]
struct Cli {
    /// Events per run (the connection curve sends at least ten batches per device).
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

/// Batches each device keeps in flight in every curve: the charts were
/// measured with 4, the loadgen's default before it became 1, so that a
/// few devices still saturate the server in the connections curve.
const CURVE_WINDOW: &str = "4";

/// Events each device sends at least in the connections curve: ten
/// batches of 128. With 100, the 10,000 devices' run was their first
/// batches all sent at once, a single burst whose p99 (4 s) was the
/// in-flight budget draining, not what the server sustains with that many
/// connections.
const CONNECTION_CURVE_EVENTS_PER_DEVICE: u64 = 10 * 128;

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .chain(&[("max-inflight", CURVE_WINDOW.to_string())])
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
                   at least 10 batches per device",
            points: [1u32, 10, 100, 1000]
                .into_iter()
                .map(|stores| {
                    let devices = u64::from(stores) * 10;
                    let n = events.max(devices * CONNECTION_CURVE_EVENTS_PER_DEVICE);
                    let f = flags(&[ev(n), ("stores", stores.to_string())]);
                    (devices as f64, f, None)
                })
                .collect(),
        },
        Sweep {
            name: "skus",
            x_label: "resident SKUs (store, product) after the run",
            log_x: true,
            note: "10 stores, catalogue of 100 to 300,000 products; x is what the shards held",
            points: [100u32, 1_000, 10_000, 100_000, 300_000]
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

async fn measure(sweep: &Sweep, runs: usize) -> anyhow::Result<Curve> {
    let mut points = Vec::new();
    for (x, f, shards) in &sweep.points {
        let configure = |cfg: &mut tillstream_engine::ServerConfig| {
            if let Some(s) = shards {
                cfg.shards = *s;
            }
        };
        let mut point = measure_point(*x, f, configure, runs, |r| {
            eprintln!("[curves] {} = {x}: run {r}/{runs} done", sweep.name);
        })
        .await
        .with_context(|| format!("{} = {x}", sweep.name))?;
        if sweep.name == "skus" {
            point.x = point.median.resident_skus as f64;
        }
        eprintln!(
            "[curves] {} = {}: {:.0} events/s, p50 {:.1} ms, p99 {:.1} ms",
            sweep.name,
            point.x,
            point.median.events_per_s,
            point.median.p50_ms,
            point.median.p99_ms
        );
        points.push(point);
    }
    Ok(Curve {
        name: sweep.name.into(),
        x_label: sweep.x_label.into(),
        log_x: sweep.log_x,
        note: sweep.note.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_keeps_the_window_the_charts_were_measured_with() {
        // The loadgen's default window is 1; the connections curve's few
        // devices would not saturate the server with it.
        for sweep in sweeps(1_000) {
            for (x, flags, _) in &sweep.points {
                let at = flags.iter().position(|f| f == "--max-inflight");
                let window = at.and_then(|i| flags.get(i + 1));
                assert_eq!(
                    window.map(String::as_str),
                    Some(CURVE_WINDOW),
                    "{} at {x}: {flags:?}",
                    sweep.name
                );
            }
        }
    }
}
