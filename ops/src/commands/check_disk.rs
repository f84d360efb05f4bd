//! `tillstream check-disk`: how long the journal's appends take on the
//! disk of a data directory, measured through the journal itself.
//!
//! An acknowledgement waits for its batch's journal append (a write and
//! an `fdatasync`, ARCHITECTURE.md "One event, device to disk", step 4),
//! and every batch that arrives during a slow append waits for it too. So
//! no ack p99 on a disk is below what that disk's stalls add: on a
//! virtual disk that stalls a few writes a minute for hundreds of
//! milliseconds, a lightly loaded server's p99 is those stalls, whatever
//! the server does. This command says so before a deployment, as
//! PostgreSQL's `pg_test_fsync` does for its log.
//!
//! The scratch journal is the storage crate's `Journal`: appends extend a
//! new 64 MiB segment, as a fresh server's do, and full segments are
//! retired as the server retires them once its tables hold them, so later
//! segments write over spares, as a long-running server's do, and the
//! scratch journal stays within a few segments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tillstream_journal::{Journal, JournalOptions, encode_record};

/// The flags of `check-disk` (its help is on the subcommand in `lib.rs`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The data directory whose disk to measure (`serve --data-dir`);
    /// created if missing, and then removed again.
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    data_dir: PathBuf,
    /// How long to measure, in seconds. Stalls come a few a minute on
    /// some virtual disks: a short run may miss them.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Payload bytes of each append. 4 KiB is a small batch; the
    /// loadgen's 128-event batches are about 26 KiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    append_bytes: u64,
    /// Pause between appends, in ms: 5 is a lightly loaded server; 0
    /// appends back to back (the disk's most appends a second).
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// What an append at or past this took counts as a stall: past ten ack
/// 10 ms deadlines.
const STALL: Duration = Duration::from_millis(100);

/// The result, as `--report` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DiskReport {
    /// Where the scratch journal was.
    pub data_dir: PathBuf,
    pub seconds: f64,
    pub append_bytes: u64,
    pub interval_ms: u64,
    pub appends: u64,
    pub appends_per_s: f64,
    pub mib_per_s: f64,
    /// Each append's write and `fdatasync`, in ms.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub over_10ms: u64,
    pub over_50ms: u64,
    /// Appends of 100 ms or more.
    pub stalls: u64,
    /// The slowest appends of 10 ms or more, slowest first, at most 10.
    pub slowest: Vec<SlowAppend>,
}

/// One slow append.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct SlowAppend {
    /// When it ended, in seconds from the start (stalls that come at a
    /// steady period point at something periodic: a flush, a host job).
    pub at_s: f64,
    pub ms: f64,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The directories this command makes, outermost last, to remove after.
    let mut created: Vec<&Path> = args
        .data_dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    anyhow::ensure!(
        !args.data_dir.exists() || args.data_dir.is_dir(),
        "{} is not a directory",
        args.data_dir.display()
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let measured = measure(&args);
    for dir in created.drain(..) {
        // Only what this command made: the scratch journal is gone by now.
        let _ = std::fs::remove_dir(dir);
    }
    let report = measured?;
    print!("{}", summary(&report));
    let wal = args.data_dir.join("store/wal");
    if let Ok(journal) = std::fs::read_link(&wal) {
        crate::outln!(
            "note: this data directory's journal is in {} (serve --journal-dir): its acks wait \
             on that disk, so measure it with --data-dir on it",
            journal.display()
        )?;
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends to a scratch journal under `args.data_dir` for `args.seconds`.
fn measure(args: &Args) -> anyhow::Result<DiskReport> {
    let scratch = tempfile::Builder::new()
        .prefix(".check-disk-")
        .tempdir_in(&args.data_dir)
        .with_context(|| format!("making a scratch directory in {}", args.data_dir.display()))?;
    let mut journal = Journal::open(scratch.path(), JournalOptions::default())
        .with_context(|| format!("opening a scratch journal in {}", scratch.path().display()))?;
    // Bytes that no file system compresses or dedupes away.
    let payload: Vec<u8> = (0..args.append_bytes)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 7) as u8)
        .collect();
    let mut record = Vec::with_capacity(payload.len() + 64);
    let (run_for, pause) = (
        Duration::from_secs(args.seconds),
        Duration::from_millis(args.interval_ms),
    );
    let progress = progress_bar(args.seconds);
    let started = Instant::now();
    let mut took: Vec<(Duration, Duration)> = Vec::new();
    let mut lsn = 0u64;
    while started.elapsed() < run_for {
        // As the server does once its tables hold them: full segments
        // become spares that later ones write over, and the scratch journal
        // stays within a few segments however long it runs and however
        // large its appends (nothing to do, and no I/O, until one fills).
        journal
            .expire_through(lsn)
            .and_then(|expired| expired.retire())
            .with_context(|| format!("retiring segments in {}", scratch.path().display()))?;
        lsn += 1;
        record.clear();
        encode_record(lsn, &[&payload], &mut record);
        let at = Instant::now();
        journal.append(&record, lsn).with_context(|| {
            format!(
                "appending to the scratch journal in {}",
                scratch.path().display()
            )
        })?;
        let end = Instant::now();
        took.push((end - started, end - at));
        progress.set_position(started.elapsed().as_secs().min(args.seconds));
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    drop(journal);
    scratch.close().with_context(|| {
        format!(
            "removing the scratch journal in {}",
            args.data_dir.display()
        )
    })?;
    Ok(report(args, seconds, &took))
}

/// A bar of the seconds measured, on a terminal (indicatif draws nothing
/// otherwise).
fn progress_bar(seconds: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(seconds);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} s appending to a scratch journal",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The report of appends that took `took` (when each ended, from the
/// start; how long it took).
fn report(args: &Args, seconds: f64, took: &[(Duration, Duration)]) -> DiskReport {
    let mut sorted: Vec<Duration> = took.iter().map(|&(_, d)| d).collect();
    sorted.sort_unstable();
    let at = |q: f64| -> f64 {
        let Some(last) = sorted.len().checked_sub(1) else {
            return 0.0;
        };
        // The nearest rank: the smallest value with at least q of them at
        // or below it.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        ms(sorted[rank.min(last)])
    };
    let over = |limit: Duration| took.iter().filter(|&&(_, d)| d > limit).count() as u64;
    let stalls = took.iter().filter(|&&(_, d)| d >= STALL).count() as u64;
    let mut slowest: Vec<(Duration, Duration)> = took.to_vec();
    slowest.sort_unstable_by_key(|&(_, took)| std::cmp::Reverse(took));
    slowest.truncate(10);
    let appends = took.len() as u64;
    let per_s = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
    DiskReport {
        data_dir: args.data_dir.clone(),
        seconds: round3(seconds),
        append_bytes: args.append_bytes,
        interval_ms: args.interval_ms,
        appends,
        appends_per_s: round3(per_s(appends as f64)),
        mib_per_s: round3(per_s(
            (appends * args.append_bytes) as f64 / f64::from(1 << 20),
        )),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: sorted.last().copied().map_or(0.0, ms),
        over_10ms: over(Duration::from_millis(10)),
        over_50ms: over(Duration::from_millis(50)),
        stalls,
        slowest: slowest
            .iter()
            .filter(|&&(_, d)| d >= Duration::from_millis(10))
            .map(|&(end, d)| SlowAppend {
                at_s: round3(end.as_secs_f64()),
                ms: ms(d),
            })
            .collect(),
    }
}

/// Lines for a person, ending in what the figures mean for acks.
fn summary(r: &DiskReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} appends of {} bytes in {:.1} s into {} ({:.0} a second, {:.2} MiB/s), each a write and an fdatasync",
        r.appends,
        r.append_bytes,
        r.seconds,
        r.data_dir.display(),
        r.appends_per_s,
        r.mib_per_s
    );
    let _ = writeln!(
        s,
        "append latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
    );
    let _ = writeln!(
        s,
        "appends over 10 ms: {}, over 50 ms: {}, over 100 ms: {}",
        r.over_10ms, r.over_50ms, r.stalls
    );
    if r.stalls > 0 {
        let worst = r
            .slowest
            .iter()
            .take(5)
            .map(|slow| format!("{:.0} ms at {:.1} s", slow.ms, slow.at_s))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "the disk stalled: {} took 100 ms or more (the slowest: {worst}). Every batch that \
             arrives during a stall waits for it, so acks on this disk will show such waits at \
             their p99 whatever the load; if nothing else was writing to it, the disk (or the \
             host under a virtual one) is where they come from",
            if r.stalls == 1 {
                "1 append".to_string()
            } else {
                format!("{} appends", r.stalls)
            }
        );
    } else {
        let _ = writeln!(
            s,
            "no stalls: an ack waits for one append, so this disk adds about {:.1} ms to an ack's \
             p99 (and up to {:.1} ms at worst) besides the server's own work",
            r.p99_ms, r.max_ms
        );
    }
    s
}

fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1e3)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            data_dir: PathBuf::from("d"),
            seconds: 1,
            append_bytes: 4096,
            interval_ms: 0,
            report: None,
        }
    }

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_counts_and_the_slowest_come_from_the_appends() {
        // 1,000 appends of 1 ms, one of 300 ms at 2 s and one of 60 ms.
        let mut took: Vec<(Duration, Duration)> = (0..998).map(|i| (ms_(i), ms_(1))).collect();
        took.push((ms_(2000), ms_(300)));
        took.push((ms_(2500), ms_(60)));
        let r = report(&args(), 4.0, &took);
        assert_eq!(r.appends, 1000);
        assert_eq!((r.p50_ms, r.p99_ms), (1.0, 1.0));
        // The 999th of 1,000 is the 60 ms one, the 1,000th the stall.
        assert_eq!((r.p999_ms, r.max_ms), (60.0, 300.0));
        assert_eq!((r.over_10ms, r.over_50ms, r.stalls), (2, 2, 1));
        let slowest: Vec<(f64, f64)> = r.slowest.iter().map(|s| (s.at_s, s.ms)).collect();
        assert_eq!(slowest, vec![(2.0, 300.0), (2.5, 60.0)]);
        assert_eq!(r.appends_per_s, 250.0);
        let text = summary(&r);
        assert!(text.contains("the disk stalled: 1 append took"), "{text}");
        assert!(text.contains("300 ms at 2.0 s"), "{text}");
    }

    #[test]
    fn a_disk_without_stalls_is_told_what_it_adds() {
        let took: Vec<(Duration, Duration)> = (0..100).map(|i| (ms_(i), ms_(2))).collect();
        let r = report(&args(), 1.0, &took);
        assert_eq!(r.stalls, 0);
        assert!(r.slowest.is_empty(), "nothing reached 10 ms");
        assert!(summary(&r).contains("no stalls"), "{}", summary(&r));
    }

    #[test]
    fn no_appends_is_zeros_not_a_panic() {
        let r = report(&args(), 0.0, &[]);
        assert_eq!(
            (r.appends, r.p99_ms, r.max_ms, r.appends_per_s),
            (0, 0.0, 0.0, 0.0)
        );
    }
}
