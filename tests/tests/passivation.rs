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
    endpoint: &quinn::Endpoint,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_leave_memory_and_come_back_unchanged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    opts.extra = ["--passivate-after-s", "1", "--flush-interval-ms", "5"]
        .map(String::from)
        .to_vec();
    let server = ServerProcess::start(&opts)?;
    let tokens = Tokens::of_data_dir(&opts.data_dir).await?;
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
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
        stream_range(&endpoint, opts.quic, &tokens, s, 1, 20).await?;
    }
    let passivated = wait_metrics(&server, Duration::from_secs(20), |s| {
        Ok(s.metric("tillstream_passivated_stores_total")? >= 2.0
            && s.metric("tillstream_passivated_day_rollups_total")? >= 1.0
            && s.metric("tillstream_passivated_devices_total")? >= 4.0
            && s.metric("tillstream_active_skus")? == 0.0
            && s.metric("tillstream_allocator_collections_total")? >= 1.0)
    })?;
    let skus_gone = server.metric("tillstream_passivated_skus_total")?;
    assert!(
        passivated,
        "nothing was passivated, or the allocator never asked to return it: stores {}, days {}, \
         devices {}, skus {skus_gone}, active skus {}, allocator collections {}",
        server.metric("tillstream_passivated_stores_total")?,
        server.metric("tillstream_passivated_day_rollups_total")?,
        server.metric("tillstream_passivated_devices_total")?,
        server.metric("tillstream_active_skus")?,
        server.metric("tillstream_allocator_collections_total")?,
    );
    assert!(skus_gone >= 20.0, "{skus_gone} SKUs passivated");

    // The devices come back: watermarks, levels, late windows and rollups
    // are read from the store, and the second half lands on top of them.
    for s in &scripts {
        stream_range(&endpoint, opts.quic, &tokens, s, 21, 40).await?;
    }

    let data = opts.data_dir.clone();
    let (status, _) = server.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "serve exited with {status}");
    let store = open_recovered(&data)?;
    let report = verify(&store, Some(&manifest(&scripts)))?;
    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.events, total_events(&scripts));
    Ok(())
}
