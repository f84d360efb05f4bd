//! Passivation in a real server process: stores, rollup days and device
//! slots that sat idle leave memory once their rows are in the tables, the
//! allocator is asked to hand what they held back to the OS, and they
//! come back from the store unchanged when their devices send again.

use std::time::{Duration, Instant};

use tillstream_client::client_endpoint;
use tillstream_storage::verify::verify;
use tillstream_tests::fleet_util::{manifest, total_events};
use tillstream_tests::*;

use crate::process::{ServeOpts, ServerProcess};

const WAIT: Duration = Duration::from_secs(60);

/// Sends batches `from..=to` of `script` as one session and waits for
/// their acks.
async fn stream_range(
    endpoint: &tillstream_client::ClientEndpoint,
    addr: std::net::SocketAddr,
    tokens: &Tokens,
    script: &DeviceScript,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    let dev = device(endpoint, addr, script.device, tokens.script(script)?);
    for b in prepare(script)?
        .into_iter()
        .filter(|b| (from..=to).contains(&b.seq))
    {
        dev.send(b).await?;
    }
    dev.wait_acked(to, WAIT).await?;
    dev.close().await;
    Ok(())
}

/// Polls `cond` on the server's metrics until it holds or `limit` passes.
fn wait_metrics(
    server: &ServerProcess,
    limit: Duration,
    cond: impl Fn(&ServerProcess) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond(server)? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(false)
}

/// A server process that passivates after `after_s` seconds and flushes
/// every 5 ms, and what a test needs to stream to it.
struct Passivating {
    server: ServerProcess,
    opts: ServeOpts,
    tokens: Tokens,
    endpoint: tillstream_client::ClientEndpoint,
}

async fn start(dir: &std::path::Path, shards: u16, after_s: u64) -> anyhow::Result<Passivating> {
    let mut opts = ServeOpts::new(&dir.join("data"), &dir.join("serve.log"), shards)?;
    opts.extra = vec![
        "--passivate-after-s".into(),
        after_s.to_string(),
        "--flush-interval-ms".into(),
        "5".into(),
    ];
    let server = ServerProcess::start(&opts)?;
    let tokens = Tokens::of_data_dir(&opts.data_dir).await?;
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    Ok(Passivating {
        server,
        opts,
        tokens,
        endpoint,
    })
}

impl Passivating {
    /// Sends batches `from..=to` of `script` as one session and waits for
    /// their acks.
    async fn stream(&self, script: &DeviceScript, from: u64, to: u64) -> anyhow::Result<()> {
        stream_range(
            &self.endpoint,
            self.opts.quic,
            &self.tokens,
            script,
            from,
            to,
        )
        .await
    }
}

/// Stops the server and checks its tables against what `scripts` sent:
/// every event once, and each rollup the sum of its sales.
fn stop_and_verify(p: Passivating, scripts: &[DeviceScript]) -> anyhow::Result<()> {
    let (status, _) = p.server.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "serve exited with {status}");
    let store = open_recovered(&p.opts.data_dir)?;
    let report = verify(&store, Some(&manifest(scripts)))?;
    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!((report.missing, report.duplicates), (0, 0));
    assert_eq!(report.rollup_mismatches, 0);
    assert_eq!(report.events, total_events(scripts));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_leave_memory_and_come_back_unchanged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = start(dir.path(), 2, 1).await?;
    let t0 = now_us() - 3_600_000_000;
    // Two tills and two shelf sensors over two stores: sales, refunds,
    // counts and movements on the same 20 SKUs.
    let scripts: Vec<DeviceScript> = (0..4u64)
        .map(|i| {
            script(
                300 + i,
                1 + u32::try_from(i % 2).unwrap_or(0),
                i < 2,
                40,
                20,
                t0,
            )
        })
        .collect();

    for s in &scripts {
        p.stream(s, 1, 20).await?;
    }
    let passivated = wait_metrics(&p.server, Duration::from_secs(20), |s| {
        Ok(s.metric("tillstream_passivated_stores_total")? >= 2.0
            && s.metric("tillstream_passivated_day_rollups_total")? >= 1.0
            && s.metric("tillstream_passivated_devices_total")? >= 4.0
            && s.metric("tillstream_active_skus")? == 0.0
            && s.metric("tillstream_allocator_collections_total")? >= 1.0)
    })?;
    let skus_gone = p.server.metric("tillstream_passivated_skus_total")?;
    assert!(
        passivated,
        "nothing was passivated, or the allocator never asked to return it: stores {}, days {}, \
         devices {}, skus {skus_gone}, active skus {}, allocator collections {}",
        p.server.metric("tillstream_passivated_stores_total")?,
        p.server.metric("tillstream_passivated_day_rollups_total")?,
        p.server.metric("tillstream_passivated_devices_total")?,
        p.server.metric("tillstream_active_skus")?,
        p.server.metric("tillstream_allocator_collections_total")?,
    );
    assert!(skus_gone >= 20.0, "{skus_gone} SKUs passivated");

    // The devices come back: watermarks, levels, late windows and rollups
    // are read from the store, and the second half lands on top of them.
    for s in &scripts {
        p.stream(s, 21, 40).await?;
    }
    stop_and_verify(p, &scripts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_in_use_drops_its_idle_minutes_and_a_late_sale_adds_to_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Sweeps every 5 s: a minute goes after 5 s idle, its day after 20 s,
    // which leaves a slow machine 10 s or more between the two.
    let p = start(dir.path(), 1, 20).await?;
    // At the start of a minute: the till's 40 batches span 41 s of event
    // time, so both halves sell in the same minute.
    let minute = 60_000_000;
    let t0 = (now_us() - 3_600_000_000) / minute * minute;
    let till = script(401, 1, true, 40, 20, t0);

    p.stream(&till, 1, 20).await?;
    let evicted = wait_metrics(&p.server, Duration::from_secs(15), |s| {
        Ok(
            s.metric("tillstream_passivated_rollup_minute_slots_total")? >= 1.0
                && s.metric("tillstream_active_rollup_minute_slots")? == 0.0,
        )
    })?;
    let days = p.server.metric("tillstream_passivated_day_rollups_total")?;
    assert!(evicted, "no rollup minute left memory");
    assert_eq!(days, 0.0, "the day left too: the minute path was not taken");

    // The second half sells in the minute that left: it must add to the
    // stored rollup, not start it again from zero.
    p.stream(&till, 21, 40).await?;
    let days = p.server.metric("tillstream_passivated_day_rollups_total")?;
    assert_eq!(days, 0.0, "the day left before the second half came");
    stop_and_verify(p, &[till])
}

/// Past `--memory-soft-limit-mib` the server is under memory pressure
/// (the gauge says so, and the time under it is counted): each shard
/// holds back half its in-flight budget, and ingest carries on in the
/// other half; under a limit it never reaches, nothing is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_soft_limit_half_the_budget_is_held_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    // Any server is past 1 MiB of RSS.
    opts.extra = vec!["--memory-soft-limit-mib".into(), "1".into()];
    let server = ServerProcess::start(&opts)?;
    let on = wait_metrics(&server, Duration::from_secs(20), |s| {
        Ok(s.metric("tillstream_memory_pressure")? == 1.0)
    })?;
    assert!(on, "the server did not come under memory pressure");
    let p = Passivating {
        tokens: Tokens::of_data_dir(&opts.data_dir).await?,
        endpoint: client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?,
        server,
        opts,
    };
    let scripts = vec![script(500, 1, true, 40, 20, now_us() - 3_600_000_000)];
    p.stream(&scripts[0], 1, 40).await?;
    // The shard's gauge, refreshed as it applied those batches, counts the
    // half held back (16 of the default 32 MiB) as in flight.
    let held = p.server.metric("tillstream_shard_inflight_bytes")?;
    assert!(held >= 16.0 * 1024.0 * 1024.0, "in flight {held} bytes");
    // The time under pressure is counted, in whole seconds.
    let counted = wait_metrics(&p.server, Duration::from_secs(10), |s| {
        Ok(s.metric("tillstream_memory_pressure_seconds_total")? >= 1.0)
    })?;
    assert!(counted, "no second under pressure was counted");
    stop_and_verify(p, &scripts)?;

    // A limit far above the server's RSS: the gauge stays 0.
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    opts.extra = vec!["--memory-soft-limit-mib".into(), "1000000".into()];
    let server = ServerProcess::start(&opts)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.metric("tillstream_memory_pressure")?, 0.0);
    assert_eq!(
        server.metric("tillstream_memory_pressure_seconds_total")?,
        0.0
    );
    assert!(server.metric("tillstream_shard_inflight_bytes")? < 16.0 * 1024.0 * 1024.0);
    let (status, _) = server.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "serve exited with {status}");
    Ok(())
}
