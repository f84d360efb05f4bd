//! Fault 4 of the reliability issue: every store commit takes 50 to 500 ms
//! (`--inject-commit-delay-ms 50..500`), and the devices offer twice the
//! load the server can then sustain. Memory must stay under a cap, devices
//! must be slowed (QUIC flow control and their window of unacknowledged
//! batches), nothing may be dropped, and what was acknowledged is intact.
//!
//! `TILLSTREAM_OVERLOAD_SECS` sets how long the double load is offered
//! (10 s here; `tests/chaos/overload.sh` runs the full minute).

use crate::crash::{loadgen_args, stop_and_verify};
use crate::process::{ServeOpts, ServerProcess};

/// Peak resident memory the server may reach, MiB (measured: 680 to 790).
/// The bounds that keep it there: 16 MiB of payload per shard until
/// durable (`--max-inflight-mib-per-shard`), one frame of QUIC window per
/// connection, fjall's memtables (32 MiB for blocks, 8 MiB per other
/// table) and block cache.
const RSS_CAP_MIB: u64 = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_storage_under_double_load_stays_bounded_and_loses_nothing() -> anyhow::Result<()> {
    let secs = env_u64("TILLSTREAM_OVERLOAD_SECS", 10);
    let dir = tempfile::tempdir()?;
    let serve_opts = |name: &str| -> anyhow::Result<ServeOpts> {
        let mut o = ServeOpts::new(&dir.path().join(name), &dir.path().join("serve.log"), 2)?;
        o.extra = vec![
            "--inject-commit-delay-ms=50..500".into(),
            "--max-inflight-mib-per-shard=16".into(),
        ];
        Ok(o)
    };

    // What the slow server sustains: devices flat out for a few seconds,
    // against a server of its own (the same tills in one store would
    // report the same terminals under other device ids).
    let probe_opts = serve_opts("probe")?;
    let probe_server = ServerProcess::start(&probe_opts)?;
    let mut probe = loadgen_args(&probe_opts, &dir.path().join("probe.json"), 40_000, 0, 21)?;
    probe.max_inflight = 64;
    let probe = tillstream_loadgen::run::run(probe).await?;
    assert!(probe.ok, "{:?}", probe.failures);
    drop(probe_server);
    let sustained = probe.events_per_s.max(100.0);

    // Twice that, offered for `secs` seconds.
    let opts = serve_opts("data")?;
    let server = ServerProcess::start(&opts)?;
    let offered = (sustained * 2.0).round() as u64;
    let manifest = dir.path().join("acked.json");
    let mut args = loadgen_args(&opts, &manifest, offered * secs, offered, 22)?;
    args.max_inflight = 64;
    let report = tillstream_loadgen::run::run(args).await?;

    let peak_mib = server.proc_status_kib("VmHWM").unwrap_or(u64::MAX) >> 10;
    let flushes = server.metric("tillstream_flushes_total")?;
    eprintln!(
        "overload: sustained {sustained:.0} events/s with 50-500 ms commits; offered \
         {offered}/s for {secs} s; achieved {:.0}/s, {} of {} events acked, errors {:?}, \
         ack p50 {:.0} ms p99 {:.0} ms; {flushes} commits; server peak RSS {peak_mib} MiB \
         (cap {RSS_CAP_MIB} MiB)",
        report.events_per_s,
        report.events_acked,
        report.events_total,
        report.errors_by_code,
        report.ack_latency_ms.p50,
        report.ack_latency_ms.p99,
    );
    assert!(report.ok, "the run failed: {:?}", report.failures);
    assert_eq!(report.events_acked, report.events_total, "nothing dropped");
    assert_eq!(report.events_refused, 0, "nothing refused for good");
    assert!(
        report.errors_by_code.keys().all(|k| k == "busy"),
        "only explicit busy answers may slow devices: {:?}",
        report.errors_by_code
    );
    assert!(
        peak_mib < RSS_CAP_MIB,
        "server peak RSS {peak_mib} MiB is over the cap of {RSS_CAP_MIB} MiB"
    );
    stop_and_verify(server, &manifest)
}

/// A stall (batches wait and nothing is acknowledged) used to be invisible:
/// `/readyz` answered 200 while no device got an ack. Now the stall's age
/// is a metric and `/readyz` fails past a threshold, then recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_in_acknowledgements_shows_on_readyz_and_metrics() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use tillstream_tests::*;

    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.http = Some("127.0.0.1:0".parse()?);
    cfg.ack_stall_not_ready = Duration::from_millis(500);
    // Every journal append takes 3 s: the first batch waits that long.
    cfg.faults.commit_delay = Some((Duration::from_secs(3), Duration::from_secs(3)));
    let server = tillstream_engine::Server::start(cfg).await?;
    let http = format!(
        "http://{}",
        server
            .http_addr()
            .ok_or_else(|| anyhow::anyhow!("no http"))?
    );
    let get = |path: &'static str| {
        let url = format!("{http}{path}");
        tokio::task::spawn_blocking(move || crate::process::http_get(&url))
    };
    assert_eq!(get("/readyz").await??.0, 200, "ready before any batch");

    let endpoint = endpoint_for(&server)?;
    let s = script(81, 1, true, 1, 5, now_us() - 60_000_000);
    let dev = device(
        &endpoint,
        server.quic_addr(),
        81,
        Tokens::of(&server)?.script(&s)?,
    );
    for b in prepare(&s)? {
        dev.send(b).await?;
    }
    // Within the append's 3 s, /readyz turns 503 and names the stall.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline && seen.is_none() {
        let (status, body) = get("/readyz").await??;
        if status == 503 {
            let (_, metrics) = get("/metrics").await??;
            seen = Some((
                body,
                crate::process::metric_sum(&metrics, "tillstream_ack_stall_seconds"),
            ));
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (body, stalled_s) =
        seen.ok_or_else(|| anyhow::anyhow!("/readyz never reported the stall"))?;
    assert!(body.contains("acknowledged"), "{body}");
    assert!(
        stalled_s >= 0.5,
        "tillstream_ack_stall_seconds = {stalled_s}"
    );
    // Once the append lands the ack goes out and the server is ready again.
    dev.wait_acked(1, Duration::from_secs(30)).await?;
    assert_eq!(get("/readyz").await??.0, 200, "ready again after the ack");
    dev.close().await;
    server.shutdown().await?;
    Ok(())
}
