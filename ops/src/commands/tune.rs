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
    /// which the longer intervals are for (docs/operating/tune.md).
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    flush_interval_ms: Vec<u64>,
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Runs per setting; the median (by events/s) is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: u64,
    /// Where the results go: a directory (made if missing) that gets
    /// tune.json and tune.svg, or a file name ending in .json, which gets
    /// the table, with the chart beside it (same name, .svg).
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
    /// Whether its lead over the runner-up is smaller than the spread of
    /// the runs themselves (or than [`UNKNOWN_NOISE`] when each setting
    /// ran once): then the ranking is a guess.
    within_noise: bool,
}

/// The run-to-run spread of events/s assumed when each setting ran once
/// and so says nothing of its own: the spread of repeated runs on the
/// 2-core box the benchmarks run on was up to about 10%.
const UNKNOWN_NOISE: f64 = 0.10;

/// The largest spread of one setting's runs, as a share of its median:
/// how far apart two measurements of the same thing came. `None` when
/// each setting ran once.
fn noise(rows: &[Row]) -> Option<f64> {
    rows.iter()
        .filter(|r| r.runs_events_per_s.len() > 1 && r.events_per_s > 0.0)
        .map(|r| {
            let (lo, hi) = r
                .runs_events_per_s
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (hi - lo) / r.events_per_s
        })
        .max_by(f64::total_cmp)
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
    // The lead the pick has over the best of the rest, against the noise.
    let runner_up = rows
        .iter()
        .filter(|r| !std::ptr::eq(*r, pick))
        .map(|r| r.events_per_s)
        .max_by(f64::total_cmp);
    let lead = runner_up.map(|r| (pick.events_per_s - r).abs() / pick.events_per_s.max(1.0));
    let (spread, measured) = match noise(rows) {
        Some(n) => (n, true),
        None => (UNKNOWN_NOISE, false),
    };
    let within_noise = lead.is_some_and(|l| l < spread);
    let reason = match (within_noise, measured) {
        (false, _) => reason,
        (true, true) => format!(
            "{reason}; but the settings are {:.0}% apart and runs of one setting up to {:.0}%: within noise, so measure again before changing",
            lead.unwrap_or(0.0) * 100.0,
            spread * 100.0
        ),
        (true, false) => format!(
            "{reason}; but the settings are {:.0}% apart after one run each, within the ~{:.0}% runs differ by here: use --runs 3 or more before changing",
            lead.unwrap_or(0.0) * 100.0,
            UNKNOWN_NOISE * 100.0
        ),
    };
    Some(Recommendation {
        shards: pick.shards,
        flush_interval_ms: pick.flush_interval_ms,
        reason,
        within_noise,
    })
}

/// Where `--out` puts the table and the chart, and the directory to make.
fn outputs(out: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        (out.to_path_buf(), out.with_extension("svg"), dir)
    } else {
        (
            out.join("tune.json"),
            out.join("tune.svg"),
            out.to_path_buf(),
        )
    }
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
    crate::outln!(
        "{:>6} {:>9} {:>12} {:>9} {:>9}",
        "shards",
        "flush ms",
        "events/s",
        "p50 ms",
        "p99 ms"
    )?;
    for r in &rows {
        let mark = if (r.shards, r.flush_interval_ms)
            == (recommended.shards, recommended.flush_interval_ms)
        {
            "  <- recommended"
        } else {
            ""
        };
        crate::outln!(
            "{:>6} {:>9} {:>12.0} {:>9.1} {:>9.1}{mark}",
            r.shards,
            r.flush_interval_ms,
            r.events_per_s,
            r.p50_ms,
            r.p99_ms
        )?;
    }
    crate::outln!(
        "\nrecommended: shards = {}, flush-interval-ms = {} ({})",
        recommended.shards,
        recommended.flush_interval_ms,
        recommended.reason
    )?;

    let (json, svg, dir) = outputs(&args.out);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
    chart::draw(&curve, &svg)?;
    let report = Report {
        events_per_run: args.events,
        runs_per_setting: args.runs,
        rows,
        recommended,
    };
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    crate::outln!("{} and {}", json.display(), svg.display())?;
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
    fn a_lead_smaller_than_the_runs_spread_is_called_noise() {
        // One run each, 6% apart: nothing says that is more than noise.
        let once = [row(1, 100.0, 50.0), row(2, 106.0, 50.0)];
        let r = recommend(&once);
        assert!(r.as_ref().is_some_and(|r| r.within_noise), "{r:?}");
        assert!(r.is_some_and(|r| r.reason.contains("--runs 3")));
        // Three runs each, 6% apart, but one setting's runs 12% apart.
        let mut a = row(1, 100.0, 50.0);
        a.runs_events_per_s = vec![94.0, 100.0, 106.0];
        let mut b = row(2, 106.0, 50.0);
        b.runs_events_per_s = vec![105.0, 106.0, 107.0];
        let r = recommend(&[a, b]);
        assert!(r.is_some_and(|r| r.within_noise && r.reason.contains("within noise")));
        // 40% apart, runs within 2%: a real difference.
        let mut a = row(1, 100.0, 50.0);
        a.runs_events_per_s = vec![99.0, 100.0, 101.0];
        let mut b = row(2, 140.0, 50.0);
        b.runs_events_per_s = vec![139.0, 140.0, 141.0];
        let r = recommend(&[a, b]);
        assert!(r.is_some_and(|r| !r.within_noise && r.shards == 2));
    }

    #[test]
    fn out_takes_a_directory_or_a_json_file() {
        let (json, svg, dir) = outputs(std::path::Path::new("tune.json"));
        assert_eq!(
            (json, svg, dir),
            ("tune.json".into(), "tune.svg".into(), ".".into())
        );
        let (json, svg, dir) = outputs(std::path::Path::new("runs/today"));
        assert_eq!(
            (json, svg, dir),
            (
                "runs/today/tune.json".into(),
                "runs/today/tune.svg".into(),
                "runs/today".into()
            )
        );
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
