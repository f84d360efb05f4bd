//! Measuring a server setting: flat-out loadgen runs against fresh
//! in-process servers, the median of several, and the chart of a series
//! of them. Used by `tillstream-curves` (benches) and `tillstream tune`.

pub mod chart;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tillstream_engine::{Server, ServerConfig};

use crate::cli::Args as LoadArgs;
use crate::fleet::{self, RunConfig};

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Events acknowledged.
    pub events: u64,
    /// Events acknowledged per second of the run.
    pub events_per_s: f64,
    /// Ack latency, median, ms.
    pub p50_ms: f64,
    /// Ack latency, 99th percentile, ms.
    pub p99_ms: f64,
    /// SKUs the shards held after the run.
    pub resident_skus: u64,
    /// Resident memory of this process after the run, MiB.
    pub rss_mib: f64,
}

/// One point of a curve: its x, the median run and every run's events/s.
#[derive(Debug, Serialize)]
pub struct Point {
    /// Where on the x axis.
    pub x: f64,
    /// The median run (by events/s).
    pub median: Sample,
    /// Every run's events/s.
    pub runs_events_per_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Curve {
    /// Its name (file names).
    pub name: String,
    /// What the x axis is.
    pub x_label: String,
    /// A logarithmic x axis.
    pub log_x: bool,
    /// What else held.
    pub note: String,
    /// Runs per point.
    pub runs_per_point: usize,
    /// The points, in x order.
    pub points: Vec<Point>,
}

fn rss_mib() -> f64 {
    tillstream_engine::resident_bytes().map_or(0.0, |b| b as f64 / f64::from(1u32 << 20))
}

/// One flat-out run of the loadgen (its flags) against a fresh
/// in-process server over a temporary directory, set up by `configure`.
pub async fn run_once(
    loadgen_flags: &[String],
    configure: impl FnOnce(&mut ServerConfig),
) -> anyhow::Result<Sample> {
    let args = LoadArgs::try_parse_from(
        std::iter::once("tillstream-loadgen".to_string()).chain(loadgen_flags.iter().cloned()),
    )
    .context("building the loadgen's arguments")?;
    let (work, _) = crate::run::prepare(&args).await?;
    let total = work.events;
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    configure(&mut cfg);
    let server = Server::start(cfg)
        .await
        .context("starting the in-process server")?;
    let result = async {
        let ca = std::fs::read(server.cert_path())?;
        let rc = RunConfig::flat_out(
            server.quic_addr(),
            ca,
            crate::credentials::Credentials::of_server(&server)?,
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
        tracing::warn!(error = %e, "the in-process server did not shut down cleanly");
    }
    result
}

/// `runs` runs of one setting; the median by events/s, and every run's.
pub async fn measure_point(
    x: f64,
    loadgen_flags: &[String],
    configure: impl Fn(&mut ServerConfig),
    runs: usize,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Point> {
    let mut samples = Vec::with_capacity(runs);
    for r in 0..runs.max(1) {
        samples.push(run_once(loadgen_flags, &configure).await?);
        progress(r + 1);
    }
    let mut by_speed = samples.clone();
    by_speed.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let median = by_speed[by_speed.len() / 2].clone();
    Ok(Point {
        x,
        median,
        runs_events_per_s: samples.iter().map(|s| s.events_per_s).collect(),
    })
}
