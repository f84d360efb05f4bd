//! Faults 6 and 7 of the reliability issue, on a real `tillstream serve`
//! process with the loadgen streaming from 104 devices:
//! - a graceful drain on SIGTERM, then a restart;
//! - restarts with a different `--shards` each time.
//!
//! Both end with the server checking the loadgen's manifest of acknowledged
//! batches and `tillstream verify` checking the store offline.

use std::time::Duration;

use tillstream_loadgen::report::Report;

use crate::crash::{loadgen_args, stop_and_verify};
use crate::process::{ServeOpts, ServerProcess};

/// Checks a finished loadgen run: every event acknowledged.
fn assert_all_acked(report: &Report) {
    assert!(report.ok, "the run failed: {:?}", report.failures);
    assert_eq!(report.events_acked, report.events_total);
    assert_eq!(report.watermark_regressions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_acknowledges_what_it_flushed_and_devices_resend_the_rest()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit_s = 5;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    opts.extra = vec![format!("--drain-timeout-s={limit_s}")];
    let server = ServerProcess::start(&opts)?;
    let manifest = dir.path().join("acked.json");
    let loadgen = tokio::spawn(tillstream_loadgen::run::run(loadgen_args(
        &opts, &manifest, 48_000, 6_000, 7,
    )?));

    let drain = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        server.wait_acked(300, Duration::from_secs(120));
        let acked_before = server.metric("tillstream_batches_acked_total")?;
        let (status, took) = server.terminate(Duration::from_secs(limit_s + 10))?;
        std::thread::sleep(Duration::from_millis(500));
        let restarted = ServerProcess::start(&opts)?;
        Ok((acked_before, status, took, restarted))
    });
    let (acked_before, status, took, server) = drain.await??;
    let report = loadgen.await??;

    // Every batch the drain flushed was acknowledged before it closed, so
    // nothing the devices resent to the new process was already stored.
    let resent_duplicates = server.metric("tillstream_batches_duplicate_total")?;
    eprintln!(
        "SIGTERM drain: {acked_before} batches acked before it, drain took {took:?} \
         (limit {limit_s} s), exit {status}; then {} reconnects, {} batches resent, \
         {resent_duplicates} of them already stored; {} events acked, ack p99 {:.0} ms",
        report.reconnects, report.resent_batches, report.events_acked, report.ack_latency_ms.p99
    );
    assert!(acked_before > 0.0, "the drain came mid-stream");
    assert!(status.success(), "a drain exits 0, got {status}");
    assert!(
        took < Duration::from_secs(limit_s + 5),
        "the drain overran its limit: {took:?}"
    );
    assert!(report.reconnects >= 100, "every device came back");
    assert!(
        report.cpu.is_none(),
        "the CPU time of two server processes is not one run's: {:?}",
        report.cpu
    );
    assert_eq!(
        resent_duplicates, 0.0,
        "a batch flushed during the drain was not acknowledged before the close"
    );
    assert_all_acked(&report);
    stop_and_verify(server, &manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_shard_count_across_restarts_keeps_the_invariants() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let manifest = dir.path().join("acked.json");
    let loadgen = tokio::spawn(tillstream_loadgen::run::run(loadgen_args(
        &opts, &manifest, 60_000, 5_000, 11,
    )?));

    // 2 shards, then 3 after a drain, then 1 after a SIGKILL, then 4: each
    // SKU and terminal moves to another shard, which must rebuild its
    // state from the store.
    let reshard = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut server = server;
        let mut shards_seen = vec![2u16];
        for (i, shards) in [3u16, 1, 4].into_iter().enumerate() {
            std::thread::sleep(Duration::from_secs(3));
            let mut next = if i % 2 == 0 {
                let opts = server.opts.clone();
                server.terminate(Duration::from_secs(30))?;
                opts
            } else {
                server.kill9()?
            };
            next.shards = shards;
            server = ServerProcess::start(&next)?;
            shards_seen.push(shards);
        }
        Ok((server, shards_seen))
    });
    let (server, shards_seen) = reshard.await??;
    let report = loadgen.await??;
    let (_, settings) = server.get("/v1/settings")?;
    eprintln!(
        "shard changes {shards_seen:?}: {} events acked, {} reconnects, ack p99 {:.0} ms, \
         now {settings}",
        report.events_acked, report.reconnects, report.ack_latency_ms.p99
    );
    assert!(settings.contains("\"shards\":4"), "{settings}");
    assert_all_acked(&report);
    stop_and_verify(server, &manifest)
}
