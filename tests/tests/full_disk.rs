//! Fault 3 of the reliability issue: the data directory is on a small
//! tmpfs that another writer fills mid-stream. The server must stop
//! acknowledging, answer 503 on /readyz, refuse batches with
//! `store_unavailable`, stay up (no crash loop) and keep everything it had
//! acknowledged; once space returns, a restart recovers and the devices
//! resend what was never acknowledged.
//!
//! Mounting a tmpfs needs root (CI runs as root). Elsewhere the test says
//! so and passes without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::{loadgen_args, stop_and_verify};
use crate::process::{ServeOpts, ServerProcess};
use tillstream_tests::is_root;

/// A tmpfs of a fixed size, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "tillstream-test",
            ])
            .arg(path)
            .status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs failed: {status}");
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0xA5u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written), // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls `check` every 5 ms for up to `limit`; how long it took.
fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if check() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// What the fault loop measured.
#[derive(Debug)]
struct Seen {
    acked_before: f64,
    ballast_bytes: u64,
    /// From the disk filling to /readyz answering 503.
    not_ready: Option<Duration>,
    /// From the disk filling to the first batch refused as store_unavailable.
    refusing: Option<Duration>,
    acked_when_full: f64,
    acked_later: f64,
    still_up: bool,
    readyz_later: u16,
    /// From the restart to /readyz answering 200.
    ready: Option<Duration>,
    /// From the restart to its first acknowledgement.
    first_ack: Option<Duration>,
}

/// Needs root (it mounts a tmpfs), so it is ignored by default: the test
/// summary counts it as such wherever it cannot run. `.ci/run` runs it
/// (`--ignored`) as root; by hand: `cargo test --workspace --test e2e --
/// --ignored full_disk` (`--workspace` reuses the suite's build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; .ci/run runs it as root"]
async fn a_full_disk_stops_acks_refuses_batches_and_a_restart_recovers() -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "mounting the small tmpfs needs root: run this test as root"
    );
    let dir = tempfile::tempdir()?;
    let disk = SmallDisk::mount(&dir.path().join("disk"), 256)?;
    let opts = ServeOpts::new(&disk.path.join("data"), &dir.path().join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let manifest = dir.path().join("acked.json");
    let loadgen = tokio::spawn(tillstream_loadgen::run::run(loadgen_args(
        &opts, &manifest, 100_000, 8_000, 3,
    )?));
    let ballast = disk.path.join("ballast");

    let fault = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        server.wait_acked(200, Duration::from_secs(120));
        let acked_before = server.metric("tillstream_batches_acked_total")?;
        let ballast_bytes = fill(&ballast)?;
        let full_at = Instant::now();
        let not_ready = wait_for(Duration::from_secs(30), || {
            server.get("/readyz").is_ok_and(|(s, _)| s == 503)
        });
        let refusing = wait_for(Duration::from_secs(30), || {
            server.get("/metrics").is_ok_and(|(_, m)| {
                m.lines().any(|l| {
                    !l.starts_with('#')
                        && l.contains("_refused_total")
                        && l.contains("store_unavailable")
                })
            })
        })
        .map(|_| full_at.elapsed());
        // Full for a while: up, not ready, and not acknowledging.
        let acked_when_full = server.metric("tillstream_batches_acked_total")?;
        std::thread::sleep(Duration::from_secs(3));
        let mut server = server;
        let still_up = server.is_running() && server.get("/healthz").is_ok_and(|(s, _)| s == 200);
        let readyz_later = server.get("/readyz")?.0;
        let acked_later = server.metric("tillstream_batches_acked_total")?;

        // Space returns; the operator (or the supervisor) restarts it.
        std::fs::remove_file(&ballast)?;
        let opts = server.kill9()?;
        let restart = Instant::now();
        let server = ServerProcess::start(&opts)?;
        let ready = wait_for(Duration::from_secs(30), || {
            server.get("/readyz").is_ok_and(|(s, _)| s == 200)
        })
        .map(|_| restart.elapsed());
        let first_ack = server
            .wait_first_ack(Duration::from_secs(60))
            .map(|_| restart.elapsed());
        let seen = Seen {
            acked_before,
            ballast_bytes,
            not_ready,
            refusing,
            acked_when_full,
            acked_later,
            still_up,
            readyz_later,
            ready,
            first_ack,
        };
        Ok((server, seen))
    });
    let report = loadgen.await??;
    let (server, seen) = fault.await??;
    eprintln!(
        "full disk: {seen:?}; run: {} of {} events acked, errors {:?}, ack p99 {:.0} ms",
        report.events_acked, report.events_total, report.errors_by_code, report.ack_latency_ms.p99,
    );
    assert!(seen.acked_before > 0.0, "the disk filled mid-stream");
    assert!(seen.ballast_bytes > 0, "the ballast took the free space");
    assert!(seen.not_ready.is_some(), "/readyz never turned 503");
    assert!(
        seen.refusing.is_some(),
        "batches were never refused as store_unavailable"
    );
    assert!(
        seen.still_up,
        "the server died or stopped answering on a full disk"
    );
    assert_eq!(seen.readyz_later, 503);
    assert_eq!(
        seen.acked_when_full, seen.acked_later,
        "acks went on with a full disk"
    );
    assert!(
        seen.ready.is_some(),
        "not ready after space returned and a restart"
    );
    assert!(
        seen.first_ack.is_some(),
        "no ack after space returned and a restart"
    );
    assert!(report.ok, "the run failed: {:?}", report.failures);
    assert_eq!(report.events_acked, report.events_total);
    stop_and_verify(server, &manifest)
}
