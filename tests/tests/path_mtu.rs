//! The devices of one client endpoint share what QUIC's path MTU
//! discovery found: a later connection starts at the first one's path
//! MTU and sends no probes, and connections dialled together wait for the
//! first one's discovery (see `tillstream_client::ClientEndpoint`).

use std::time::{Duration, Instant};

use tillstream_tests::netns::ip;
use tillstream_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// QUIC's smallest UDP payload, where every connection's discovery starts.
const QUIC_MIN_MTU: u16 = tillstream_client::gso::MIN_MTU;

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
    send_all(&dev, script).await?;
    Ok(dev)
}

/// Sends every batch of `script` through `dev` and waits for the last ack.
async fn send_all(
    dev: &tillstream_client::DeviceClient,
    script: &DeviceScript,
) -> anyhow::Result<()> {
    let prepared = prepare(script)?;
    let last = prepared.last().map_or(0, |b| b.seq);
    for b in prepared {
        dev.send(b).await?;
    }
    dev.wait_acked(last, WAIT).await?;
    Ok(())
}

/// Streams `script` through a new device on `endpoint` and waits until
/// the endpoint has learned a path MTU to `server` from it.
async fn find_path(
    endpoint: &tillstream_client::ClientEndpoint,
    server: &tillstream_engine::Server,
    script: &DeviceScript,
) -> anyhow::Result<tillstream_client::DeviceClient> {
    let dev = stream(endpoint, server, &Tokens::of(server)?, script).await?;
    let addr = server.quic_addr();
    wait_for("a path MTU learned", || {
        endpoint.path_mtu(addr).is_some_and(|m| m > QUIC_MIN_MTU)
    })
    .await?;
    Ok(dev)
}

/// Waits until `dev`'s path MTU search has ended: no probe sent and the
/// path MTU unchanged for a second (on loopback, where no probe is lost,
/// the next probe follows the last one's ack within a round trip; a
/// loaded machine may still stall for some milliseconds). Its stats then.
async fn settled(
    dev: &tillstream_client::DeviceClient,
) -> anyhow::Result<tillstream_client::ClientStats> {
    let deadline = Instant::now() + WAIT;
    let mut last = dev.stats();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = dev.stats();
        if (now.path_mtu, now.mtu_probes) != (last.path_mtu, last.mtu_probes) {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the path MTU search went on for {WAIT:?}: {last:?}"
        );
    }
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
    let _machine = machine::with_deadlines();
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let tokens = Tokens::of(&server)?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let t0 = now_us() - 3_600_000_000;

    // Loopback carries every probe: the first device's discovery climbs
    // from QUIC's minimum to the server's limit.
    let first = find_path(&endpoint, &server, &script(300, 1, true, 3, 20, t0)).await?;
    let searched = settled(&first).await?;
    assert!(
        searched.mtu_probes > 0,
        "the first connection searched: {searched:?}"
    );
    first.close().await;
    // Its close records where its search ended.
    let learned = endpoint.path_mtu(addr).unwrap_or(0);
    assert_eq!(
        learned, searched.path_mtu,
        "the endpoint kept what the first found"
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connecting_at_once_wait_for_one_to_find_the_path_mtu() -> anyhow::Result<()> {
    let _machine = machine::with_deadlines();
    const DEVICES: u64 = 6;
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let tokens = Tokens::of(&server)?;
    // The others wait as long as the scout may take on a loaded machine
    // (the default, 250 ms, suits an idle one).
    let endpoint = tillstream_client::client_endpoint_with(
        &std::fs::read(server.cert_path())?,
        server.quic_addr(),
        &tillstream_client::EndpointOptions {
            scout_wait: WAIT,
            ..Default::default()
        },
    )?;
    let t0 = now_us() - 3_600_000_000;

    // A fleet's first start: every device dials a server this endpoint
    // has found nothing of yet, at the same moment.
    let scripts: Vec<DeviceScript> = (0..DEVICES)
        .map(|i| script(400 + i, 1, true, 3, 20, t0))
        .collect();
    let mut fleet = Vec::new();
    for s in &scripts {
        let token = tokens.script(s)?;
        fleet.push(device(&endpoint, server.quic_addr(), s.device, token));
    }
    for (dev, s) in fleet.iter().zip(&scripts) {
        send_all(dev, s).await?;
    }
    wait_for("every connection's path MTU", || {
        fleet.iter().all(|d| d.stats().path_mtu > QUIC_MIN_MTU)
    })
    .await?;
    // Past the samples at 20 and 100 ms after each Welcome.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let learned = endpoint.path_mtu(server.quic_addr()).unwrap_or(0);
    let stats: Vec<_> = fleet.iter().map(|d| d.stats()).collect();
    let searched = stats.iter().filter(|s| s.mtu_probes > 0).count();
    // One scouts; the others waited for it and started at what it found.
    // Each device searching for itself is `DEVICES` here.
    assert_eq!(searched, 1, "one device searched the path: {stats:?}");
    assert!(
        stats.iter().all(|s| s.path_mtu == learned),
        "every device reached {learned} bytes: {stats:?}"
    );
    for d in fleet {
        d.close().await;
    }
    Ok(())
}

/// A loopback address whose route carries 1500-byte packets, as an
/// Ethernet interface's would; removed (with its route) when dropped.
struct NarrowRoute(std::net::Ipv4Addr);

impl NarrowRoute {
    fn add(addr: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        let cidr = format!("{addr}/32");
        let _ = ip(&["addr", "del", &cidr, "dev", "lo"]);
        ip(&["addr", "add", &cidr, "dev", "lo"])?;
        let route = Self(addr);
        let a = addr.to_string();
        ip(&[
            "route", "replace", "local", &a, "dev", "lo", "table", "local", "proto", "kernel",
            "scope", "host", "src", &a, "mtu", "lock", "1500",
        ])?;
        Ok(route)
    }
}

impl Drop for NarrowRoute {
    fn drop(&mut self) {
        let a = self.0.to_string();
        let _ = ip(&["route", "del", "local", &a, "dev", "lo", "table", "local"]);
        let _ = ip(&["addr", "del", &format!("{a}/32"), "dev", "lo"]);
    }
}

/// Needs root (it adds an address and a route to loopback), so it is
/// ignored by default; `.ci/run` runs it as root, as it does the full-disk
/// test; by hand: `cargo test --workspace --test e2e -- --ignored
/// path_mtu::`. Loopback itself carries 64 KiB datagrams whatever the
/// route says (quinn sends with the kernel's path MTU ignored), so only
/// a device that reads its route stops at 1,472 bytes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to give a loopback address a 1500-byte route; .ci/run runs it as root"]
async fn a_device_probes_no_higher_than_its_route_carries() -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "giving a loopback address a route of its own needs root: run this test as root"
    );
    let route = NarrowRoute::add(std::net::Ipv4Addr::new(127, 31, 15, 0))?;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.listen = (route.0, 0).into();
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let t0 = now_us() - 3_600_000_000;

    // Discovery from 1,200 to 1,472 bytes ends in a handful of probes.
    let dev = find_path(&endpoint, &server, &script(500, 1, true, 3, 20, t0)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = dev.stats();
    assert_eq!(
        (endpoint.path_mtu(addr), stats.path_mtu),
        (Some(1472), 1472),
        "a 1500-byte IPv4 route carries 1,472 bytes of UDP payload: {stats:?}"
    );
    assert!(stats.mtu_probes <= 6, "{stats:?}");
    dev.close().await;
    server.shutdown().await?;
    Ok(())
}
