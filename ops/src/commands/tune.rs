//! `tillstream tune`: measure shard counts and flush intervals on this
//! machine and recommend a setting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tillstream_loadgen::sweep::{Curve, Point, chart, measure_point};

/// Run the load generator flat out against fresh in-process servers (a
/// temporary directory each) at several shard counts and flush intervals,
/// print events/s and p99 ack latency for each, and recommend the setting
/// to put in the config file. Writes the table as JSON and the shard curve
/// of the recommended flush interval as SVG into --out.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Shard counts to try (default 1, 2, 4, 8 and the number of cores).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<u16>,
    /// Flush intervals to try, in milliseconds. The default list holds the
    /// server's default. These runs are 100 devices flat out, where a
    /// quarter of a shard's budget starts most writes: a wide fleet of
    /// small batches writes once an interval, paying per store touched,
    /// which the longer intervals are for (README, "Tune the shard count").
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    flush_interval_ms: Vec<u64>,
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Runs per setting; the median (by events/s) is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: u64,
    /// Where tune.json and tune.svg go.
    #[arg(long, default_value = "tune")]
    out: PathBuf,
}

/// One measured setting.
#[derive(Debug, Serialize)]
struct Row {
    shards: u16,
    flush_interval_ms: u64,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    runs_events_per_s: Vec<f64>,
}

/// What tune writes to tune.json.
#[derive(Debug, Serialize)]
struct Report {
    events_per_run: u64,
    runs_per_setting: u64,
    rows: Vec<Row>,
    recommended: Recommendation,
}

#[derive(Debug, Clone, Serialize)]
struct Recommendation {
    shards: u16,
    flush_interval_ms: u64,
    reason: String,
}

/// The setting to recommend: the fastest, unless another within 5% of
/// its events/s acknowledges faster at p99 (a few percent of throughput
/// are noise on a busy machine; a lower p99 is what devices feel).
fn recommend(rows: &[Row]) -> Option<Recommendation> {
    let best = rows
        .iter()
        .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))?;
    let pick = rows
        .iter()
        .filter(|r| r.events_per_s >= best.events_per_s * 0.95)
        .min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))?;
    let reason = if std::ptr::eq(pick, best) {
        format!(
            "the most events/s ({:.0}) with p99 {:.1} ms",
            pick.events_per_s, pick.p99_ms
        )
    } else {
        format!(
            "{:.0} events/s, within 5% of the fastest ({:.0}, shards {} / {} ms), at a lower p99 ({:.1} ms against {:.1} ms)",
            pick.events_per_s,
            best.events_per_s,
            best.shards,
            best.flush_interval_ms,
            pick.p99_ms,
            best.p99_ms
        )
    };
    Some(Recommendation {
        shards: pick.shards,
        flush_interval_ms: pick.flush_interval_ms,
        reason,
    })
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut shards = if args.shards.is_empty() {
        vec![1, 2, 4, 8, u16::try_from(cores).unwrap_or(2)]
    } else {
        args.shards.clone()
    };
    shards.retain(|s| *s > 0);
    shards.sort_unstable();
    shards.dedup();
    anyhow::ensure!(!shards.is_empty(), "--shards names no shard count above 0");
    let runs = usize::try_from(args.runs).unwrap_or(1);
    let settings: Vec<(u16, u64)> = args
        .flush_interval_ms
        .iter()
        .flat_map(|&f| shards.iter().map(move |&s| (s, f)))
        .collect();
    let bar = indicatif::ProgressBar::new((settings.len() * runs) as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let flags = vec!["--events".to_string(), args.events.to_string()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut measured: Vec<(u16, u64, Point)> = Vec::new();
    for &(s, f) in &settings {
        bar.set_message(format!("shards {s}, flush {f} ms"));
        let configure = |cfg: &mut tillstream_engine::ServerConfig| {
            cfg.shards = s;
            cfg.flush_interval = Duration::from_millis(f);
        };
        let point = rt
            .block_on(measure_point(f64::from(s), &flags, configure, runs, |_| {
                bar.inc(1)
            }))
            .with_context(|| format!("shards {s}, flush interval {f} ms"))?;
        measured.push((s, f, point));
    }
    bar.finish_and_clear();

    let rows: Vec<Row> = measured
        .iter()
        .map(|(s, f, p)| Row {
            shards: *s,
            flush_interval_ms: *f,
            events_per_s: p.median.events_per_s,
            p50_ms: p.median.p50_ms,
            p99_ms: p.median.p99_ms,
            runs_events_per_s: p.runs_events_per_s.clone(),
        })
        .collect();
    let recommended = recommend(&rows).context("nothing was measured")?;
    println!(
        "{:>6} {:>9} {:>12} {:>9} {:>9}",
        "shards", "flush ms", "events/s", "p50 ms", "p99 ms"
    );
    for r in &rows {
        let mark = if (r.shards, r.flush_interval_ms)
            == (recommended.shards, recommended.flush_interval_ms)
        {
            "  <- recommended"
        } else {
            ""
        };
        println!(
            "{:>6} {:>9} {:>12.0} {:>9.1} {:>9.1}{mark}",
            r.shards, r.flush_interval_ms, r.events_per_s, r.p50_ms, r.p99_ms
        );
    }
    println!(
        "\nrecommended: shards = {}, flush-interval-ms = {} ({})",
        recommended.shards, recommended.flush_interval_ms, recommended.reason
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let curve = Curve {
        name: "tune".into(),
        x_label: "shard actors".into(),
        log_x: false,
        note: format!(
            "flush interval {} ms (recommended); {} events a run, median of {runs}",
            recommended.flush_interval_ms, args.events
        ),
        runs_per_point: runs,
        points: measured
            .into_iter()
            .filter(|(_, f, _)| *f == recommended.flush_interval_ms)
            .map(|(_, _, p)| p)
            .collect(),
    };
    let svg = args.out.join("tune.svg");
    chart::draw(&curve, &svg)?;
    let json = args.out.join("tune.json");
    let report = Report {
        events_per_run: args.events,
        runs_per_setting: args.runs,
        rows,
        recommended,
    };
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("{} and {}", json.display(), svg.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(shards: u16, events_per_s: f64, p99_ms: f64) -> Row {
        Row {
            shards,
            flush_interval_ms: 50,
            events_per_s,
            p50_ms: 1.0,
            p99_ms,
            runs_events_per_s: vec![events_per_s],
        }
    }

    #[test]
    fn the_default_sweep_measures_the_servers_default_interval() -> anyhow::Result<()> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            tune: Args,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["tune"])?;
        let default = tillstream_engine::DEFAULT_FLUSH_INTERVAL_MS;
        assert!(
            cli.tune.flush_interval_ms.contains(&default),
            "{:?} leaves out the server's {default} ms",
            cli.tune.flush_interval_ms
        );
        Ok(())
    }

    #[test]
    fn the_fastest_wins_unless_a_near_one_acks_sooner() {
        let rows = [
            row(1, 100.0, 50.0),
            row(2, 200.0, 80.0),
            row(4, 150.0, 10.0),
        ];
        let r = recommend(&rows).map(|r| r.shards);
        assert_eq!(r, Some(2), "4 is 25% slower: not close enough");
        let rows = [
            row(1, 100.0, 50.0),
            row(2, 200.0, 80.0),
            row(4, 196.0, 10.0),
        ];
        let r = recommend(&rows);
        assert_eq!(r.as_ref().map(|r| r.shards), Some(4));
        assert!(r.is_some_and(|r| r.reason.contains("lower p99")));
        assert!(recommend(&[]).is_none());
    }
}
