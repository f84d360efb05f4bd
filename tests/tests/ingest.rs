//! Devices stream over real QUIC to a real server with a store on disk.

use std::time::Duration;

use tillstream_storage::verify::{ExpectedBatch, verify};
use tillstream_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn manifest(scripts: &[DeviceScript]) -> Vec<ExpectedBatch> {
    scripts
        .iter()
        .flat_map(|s| {
            s.batches.iter().map(|b| ExpectedBatch {
                device: s.device,
                seq: b.seq,
                events: u32::try_from(b.events.len()).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

fn events(scripts: &[DeviceScript]) -> u64 {
    scripts
        .iter()
        .flat_map(|s| s.batches.iter())
        .map(|b| b.events.len() as u64)
        .sum()
}

/// Sends every batch of `script` and waits until the last one is durable.
async fn stream_all(
    endpoint: tillstream_client::ClientEndpoint,
    server: std::net::SocketAddr,
    tokens: Tokens,
    script: DeviceScript,
) -> anyhow::Result<()> {
    let dev = device(&endpoint, server, script.device, tokens.script(&script)?);
    let prepared = prepare(&script)?;
    let last = prepared.last().map_or(0, |b| b.seq);
    for b in prepared {
        dev.send(b).await?;
    }
    dev.wait_acked(last, WAIT).await?;
    dev.close().await;
    Ok(())
}

/// A device that lost its ack state resends everything it holds.
async fn replay_all(
    endpoint: tillstream_client::ClientEndpoint,
    server: std::net::SocketAddr,
    tokens: Tokens,
    script: DeviceScript,
) -> anyhow::Result<()> {
    let dev = device_with(
        &endpoint,
        server,
        script.device,
        tokens.script(&script)?,
        true,
    );
    let prepared = prepare(&script)?;
    let last = prepared.last().map_or(0, |b| b.seq);
    for b in prepared {
        dev.send(b).await?;
    }
    dev.wait_acked(last, WAIT).await?;
    dev.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_stream_reconnect_and_every_acked_event_is_stored_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let tokens = Tokens::of(&server)?;
    let endpoint = endpoint_for(&server)?;
    let t0 = now_us() - 3_600_000_000;
    let scripts: Vec<DeviceScript> = (0..6u64)
        .map(|i| {
            script(
                100 + i,
                1 + u32::try_from(i % 2).unwrap_or(0),
                i < 4,
                30,
                25,
                t0,
            )
        })
        .collect();

    // Devices 101..=105 stream normally, all at once.
    let addr = server.quic_addr();
    let mut others = tokio::task::JoinSet::new();
    for s in &scripts[1..] {
        others.spawn(stream_all(
            endpoint.clone(),
            addr,
            tokens.clone(),
            s.clone(),
        ));
    }

    // Device 100 loses its connection mid-way: its first client sends half
    // of its batches and is closed before all are acknowledged; a second
    // client (the device after a reboot, holding every batch) connects,
    // learns the watermark from Welcome and resends only what is missing.
    let reconnecting = async {
        let prepared = prepare(&scripts[0])?;
        let first = device(&endpoint, addr, 100, tokens.script(&scripts[0])?);
        for b in prepared.iter().take(15).cloned() {
            first.send(b).await?;
        }
        first.wait_acked(3, WAIT).await?;
        let acked_before = *first.acks().borrow();
        first.close().await;

        // The rebooted device replays its own queue: batches the server
        // already holds are taken as acknowledged, not refused as stale.
        let second = device_with(&endpoint, addr, 100, tokens.script(&scripts[0])?, true);
        for b in prepared {
            second.send(b).await?;
        }
        second.wait_acked(30, WAIT).await?;
        let stats = second.stats();
        second.close().await;
        anyhow::Ok((acked_before, stats))
    };
    let (acked_before, _stats) = reconnecting.await?;
    while let Some(r) = others.join_next().await {
        r??;
    }
    assert!(
        acked_before >= 3,
        "the first client saw acks before closing"
    );

    let expected = manifest(&scripts);
    caught_up(&server).await?;
    let report = verify(&*server.store(), Some(&expected))?;
    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.events, events(&scripts));
    server.shutdown().await?;

    // Restart over the same directory: watermarks survive, a device that
    // resends everything is acknowledged without a single new row, and new
    // batches apply on top of the recovered stock levels and rollups.
    let server = start_server(dir.path(), 3).await?;
    let tokens = Tokens::of(&server)?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    replay_all(endpoint.clone(), addr, tokens.clone(), scripts[2].clone()).await?;
    let more = script(104, 1, false, 40, 25, t0);
    // Device 104 holds its 30 stored batches and 10 new ones.
    replay_all(endpoint.clone(), addr, tokens.clone(), more.clone()).await?;
    let mut all = scripts;
    all[4] = more;
    caught_up(&server).await?;
    let report = verify(&*server.store(), Some(&manifest(&all)))?;
    assert!(report.ok, "verify after restart failed: {report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.events, events(&all));
    server.shutdown().await?;
    Ok(())
}

/// A till replaced mid-day (or backed up by a second device) reports the
/// same (store, terminal) under two device ids. Its rollup minutes must
/// count both devices' sales: each row has one writer, whichever device
/// reported. Before terminals were routed by (store, terminal), devices on
/// different shards overwrote each other's absolute rollup rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_reported_by_two_devices_keeps_one_rollup_per_minute() -> anyhow::Result<()> {
    use tillstream_engine_core::shard_of_device;
    const SHARDS: u16 = 4;
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), SHARDS).await?;
    let tokens = Tokens::of(&server)?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let t0 = now_us() - 3_600_000_000;
    // Terminal = device % 1000: pick a pair on different device shards,
    // so the old routing would have split the till.
    let till = (1..1000u64)
        .find(|d| shard_of_device(*d, SHARDS) != shard_of_device(d + 1000, SHARDS))
        .ok_or_else(|| anyhow::anyhow!("no pair of devices on different shards"))?;
    let scripts = vec![
        script(till, 1, true, 20, 25, t0),
        script(till + 1000, 1, true, 20, 25, t0),
    ];
    let mut devices = tokio::task::JoinSet::new();
    for s in &scripts {
        devices.spawn(stream_all(
            endpoint.clone(),
            addr,
            tokens.clone(),
            s.clone(),
        ));
    }
    while let Some(r) = devices.join_next().await {
        r??;
    }
    caught_up(&server).await?;
    let report = verify(&*server.store(), Some(&manifest(&scripts)))?;
    assert_eq!(report.rollup_mismatches, 0, "{report:?}");
    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!(report.events, events(&scripts));
    server.shutdown().await?;
    Ok(())
}

/// Every refused event is named in the acks, whoever refused it: the
/// router (a zero movement, a sale without lines) or the SKU's shard at
/// apply time (a shelf count older than the SKU's late window, which only
/// the shard holding the SKU's history can judge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_every_refused_event_in_event_order() -> anyhow::Result<()> {
    use tillstream_client::{ClientConfig, ClientEvent, DeviceClient, PreparedBatch};
    use tillstream_protocol::{
        Batch, Event, MovementKind, RejectCode, Sale, ShelfCount, StockMovement,
    };
    const MIN_US: i64 = 60_000_000;
    let dir = tempfile::tempdir()?;
    // One device here plays till and sensor at once, to show every rule's
    // code side by side; a credential would refuse half of its events as
    // not permitted for its role (the auth tests show that code).
    let mut cfg = test_config(dir.path(), 3);
    cfg.flush_interval = Duration::from_millis(1);
    cfg.auth = tillstream_engine::AuthConfig::none();
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    let now = now_us();
    let count = |ts_us, level| {
        Event::Count(ShelfCount {
            ts_us,
            store: 1,
            sku: 5,
            level,
        })
    };
    let movement = |ts_us, delta| {
        Event::Movement(StockMovement {
            ts_us,
            store: 1,
            sku: 5,
            delta,
            reason: MovementKind::Receipt,
        })
    };
    let batches = [
        Batch {
            seq: 1,
            sent_at_us: now,
            events: vec![count(now - 10 * MIN_US, 40)],
        },
        Batch {
            seq: 2,
            sent_at_us: now,
            events: vec![
                movement(now - 5 * MIN_US, 0),
                count(now - 180 * MIN_US, 7),
                movement(now - 5 * MIN_US, 3),
                Event::Sale(Sale {
                    ts_us: now - MIN_US,
                    store: 1,
                    terminal: 1,
                    operator: 1,
                    txn: [1; 16],
                    currency: *b"EUR",
                    lines: vec![],
                    tenders: vec![],
                    customer: None,
                }),
            ],
        },
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let dev = DeviceClient::start_with_events(
        endpoint.clone(),
        ClientConfig::new(server.quic_addr(), 900),
        tx,
    );
    for b in &batches {
        dev.send(PreparedBatch::encode(b)?).await?;
    }
    dev.wait_acked(2, WAIT).await?;
    dev.close().await;
    let mut told = Vec::new();
    while let Some(e) = rx.recv().await {
        if let ClientEvent::Acked(a) = e {
            told.extend(a.rejected.iter().map(|r| (r.seq, r.idx, r.code)));
        }
    }
    let code = |c: RejectCode| c.as_u16();
    assert_eq!(
        told,
        [
            (2, 0, code(RejectCode::ZeroDelta)),
            (2, 1, code(RejectCode::CountTooLate)),
            (2, 3, code(RejectCode::NoLines)),
        ]
    );
    server.shutdown().await?;
    Ok(())
}

/// A quiet device stays connected under a server idle timeout shorter
/// than its own keep-alive: the server sends keep-alives too, at half its
/// idle timeout. With the server's fixed 5 s, a till silent for longer
/// than `--idle-timeout-s` lost its connection and reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_device_outlives_a_short_server_idle_timeout() -> anyhow::Result<()> {
    quiet_device_keeps_its_connection(SHORT_IDLE, None).await
}

/// The same with the short idle timeout on the device's side: the
/// client lowers its keep-alive to half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_device_outlives_its_own_short_idle_timeout() -> anyhow::Result<()> {
    quiet_device_keeps_its_connection(Duration::from_secs(30), Some(SHORT_IDLE)).await
}

/// The short idle timeout of these tests. Its keep-alives go at half of
/// it, so a process stalled for less than that (2 s: CI runs these beside
/// a Cassandra cluster on 2 cores) loses nothing; at 1 s, a stall of
/// half a second closed the connection once.
const SHORT_IDLE: Duration = Duration::from_secs(4);

/// A device sends a batch, stays silent for twice the shorter idle
/// timeout, sends another, and must not have reconnected in between. Its
/// own keep-alive is 10 s, and without `device_idle` its idle timeout is
/// 60 s, so only the keep-alives under test keep the connection.
async fn quiet_device_keeps_its_connection(
    server_idle: Duration,
    device_idle: Option<Duration>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.flush_interval = Duration::from_millis(1);
    cfg.idle_timeout = server_idle;
    let server = tillstream_engine::Server::start(cfg).await?;
    let tokens = Tokens::of(&server)?;
    let options = tillstream_client::EndpointOptions {
        idle_timeout: device_idle.unwrap_or(Duration::from_secs(60)),
        keep_alive: Duration::from_secs(10),
        ..tillstream_client::EndpointOptions::default()
    };
    let ca = std::fs::read(server.cert_path())?;
    let endpoint = tillstream_client::client_endpoint_with(&ca, server.quic_addr(), &options)?;
    let s = script(42, 1, true, 2, 5, now_us());
    let dev = device(&endpoint, server.quic_addr(), s.device, tokens.script(&s)?);
    let mut batches = prepare(&s)?.into_iter();
    let (first, second) = batches
        .next()
        .zip(batches.next())
        .ok_or_else(|| anyhow::anyhow!("the script has fewer than two batches"))?;
    dev.send(first).await?;
    dev.wait_acked(1, WAIT).await?;
    // Twice the shorter idle timeout, with nothing to send.
    let idle = device_idle.map_or(server_idle, |d| d.min(server_idle));
    tokio::time::sleep(2 * idle).await;
    dev.send(second).await?;
    dev.wait_acked(2, WAIT).await?;
    assert_eq!(
        dev.stats().reconnects,
        0,
        "the quiet connection was closed: {:?}",
        dev.stats()
    );
    dev.close().await;
    server.shutdown().await?;
    Ok(())
}

/// The client's sending path MTU once discovery has had `settle` to run
/// on a connection to a server that accepts `server_max` bytes a packet.
async fn path_mtu_after(server_max: u16, settle: Duration) -> anyhow::Result<u16> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.quic_max_udp_payload = server_max;
    let server = tillstream_engine::Server::start(cfg).await?;
    let ca = std::fs::read(server.cert_path())?;
    let endpoint = tillstream_client::client_endpoint(&ca, server.quic_addr())?;
    let conn = endpoint.connect(server.quic_addr(), "localhost")?.await?;
    let deadline = tokio::time::Instant::now() + settle;
    // Discovery probes up from 1200 one round trip at a time: on loopback
    // it is done in milliseconds. Stop early once it went past what a
    // 1500-byte frame carries.
    while conn.stats().path.current_mtu <= 1472 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mtu = conn.stats().path.current_mtu;
    conn.close(0u32.into(), b"done");
    server.shutdown().await?;
    Ok(mtu)
}

/// Where the path carries them (here, loopback), packets grow past the
/// 1452 bytes quinn stops at by default, and a server's own limit holds
/// them to a 1500-byte Ethernet frame when it asks for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_grow_to_what_the_path_and_the_server_allow() -> anyhow::Result<()> {
    let default = tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD;
    let grown = path_mtu_after(default, Duration::from_secs(5)).await?;
    assert!(
        grown > 1472 && grown <= default,
        "the path MTU stayed at {grown} on loopback"
    );
    let held = path_mtu_after(1472, Duration::from_millis(500)).await?;
    assert!(
        held <= 1472,
        "the server allows 1472 bytes, the device sent {held}"
    );
    Ok(())
}
