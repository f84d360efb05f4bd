//! The devices of one client endpoint share what QUIC's path MTU
//! discovery found: a later connection starts at the first one's path
//! MTU and sends no probes (see `tillstream_client::ClientEndpoint`).

use std::time::{Duration, Instant};

use tillstream_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// QUIC's smallest UDP payload, where every connection's discovery starts.
const QUIC_MIN_MTU: u16 = 1200;

/// Streams `script` through a new device and waits for its last ack.
async fn stream(
    endpoint: &tillstream_client::ClientEndpoint,
    server: &tillstream_engine::Server,
    tokens: &Tokens,
    script: &DeviceScript,
) -> anyhow::Result<tillstream_client::DeviceClient> {
    let dev = device(
        endpoint,
        server.quic_addr(),
        script.device,
        tokens.script(script)?,
    );
    let prepared = prepare(script)?;
    let last = prepared.last().map_or(0, |b| b.seq);
    for b in prepared {
        dev.send(b).await?;
    }
    dev.wait_acked(last, WAIT).await?;
    Ok(dev)
}

/// Waits until `what` holds, polling.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_connection_starts_at_the_path_mtu_the_first_one_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let tokens = Tokens::of(&server)?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let t0 = now_us() - 3_600_000_000;

    // Loopback carries every probe: the first device's discovery climbs
    // from QUIC's minimum to the server's limit.
    let first = stream(
        &endpoint,
        &server,
        &tokens,
        &script(300, 1, true, 3, 20, t0),
    )
    .await?;
    wait_for("the first connection's path MTU", || {
        endpoint.path_mtu(addr).is_some_and(|m| m > QUIC_MIN_MTU)
    })
    .await?;
    let learned = endpoint.path_mtu(addr).unwrap_or(0);
    let searched = first.stats();
    assert!(
        searched.mtu_probes > 0,
        "the first connection searched: {searched:?}"
    );
    first.close().await;

    // A second device on the same endpoint starts there: nothing to probe.
    let second = stream(
        &endpoint,
        &server,
        &tokens,
        &script(301, 1, true, 3, 20, t0),
    )
    .await?;
    // Its first samples are 20, 100 and 400 ms after its Welcome.
    wait_for("the second connection's path MTU", || {
        second.stats().path_mtu > 0
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = second.stats();
    assert_eq!(
        (started.path_mtu, started.mtu_probes),
        (learned, 0),
        "the second connection started at {learned} bytes and sent no probe"
    );
    second.close().await;
    Ok(())
}
