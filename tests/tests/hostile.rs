//! Hostile or broken devices against a real server: what one of them does
//! must cost bounded memory and leave the others served.

use std::time::Duration;

use tillstream_client::client_endpoint;
use tillstream_protocol::frame::{self, FrameHeader};
use tillstream_protocol::*;

use crate::process::{ServeOpts, ServerProcess};

/// Opens a connection and says Hello as `device`; returns it with its
/// stream once welcomed.
async fn hello(
    endpoint: &tillstream_client::ClientEndpoint,
    addr: std::net::SocketAddr,
    device: u64,
    tokens: &tillstream_tests::Tokens,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let token = tokens.device(device, 1, true)?;
    let s = tillstream_tests::raw::RawSession::open(endpoint, addr, device, &token).await?;
    Ok((s.conn, s.send, s.recv))
}

/// The server's RSS (KiB) after `n` connections said Hello and closed:
/// a baseline that includes what every connection costs anyway.
async fn warm_rss(
    server: &ServerProcess,
    endpoint: &tillstream_client::ClientEndpoint,
    opts: &ServeOpts,
    tokens: &tillstream_tests::Tokens,
    n: u64,
    first_device: u64,
) -> anyhow::Result<u64> {
    let mut warm = Vec::new();
    for d in 0..n {
        warm.push(hello(endpoint, opts.quic, first_device + d, tokens).await?);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(server.proc_status_kib("VmRSS").unwrap_or(0))
}

/// Connections that declare a 1 MiB batch frame and then stall: the server
/// allocated (and zeroed) each declared megabyte before a byte of it came,
/// so 200 of them pinned 200 MiB. Buffers now grow with what arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_pin_no_memory_for_what_never_came() -> anyhow::Result<()> {
    const CONNECTIONS: u64 = 200;
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    let server = ServerProcess::start(&opts)?;
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    let tokens = tillstream_tests::Tokens::of_data_dir(&opts.data_dir).await?;
    let before = warm_rss(&server, &endpoint, &opts, &tokens, CONNECTIONS, 10_000).await?;

    let declared = vec![0u8; (frame::DEFAULT_MAX_PAYLOAD - 64) as usize];
    let mut head = Vec::new();
    FrameHeader::write(MsgType::Batch, &declared, &mut head);
    let mut stalled = Vec::new();
    for d in 0..CONNECTIONS {
        let (conn, mut send, recv) = hello(&endpoint, opts.quic, 20_000 + d, &tokens).await?;
        send.write_all(&head).await?;
        send.write_all(&declared[..1024]).await?;
        stalled.push((conn, send, recv));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.proc_status_kib("VmRSS").unwrap_or(0);
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!("{CONNECTIONS} stalled 1 MiB frames: RSS {before} -> {after} KiB");
    assert!(
        grew_mib < 64,
        "{CONNECTIONS} stalled frames grew the server by {grew_mib} MiB"
    );
    drop(stalled);
    Ok(())
}

/// Past `max_connections` the server refuses new connections (their
/// devices back off) instead of paying for every one a flood opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_until_one_closes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = tillstream_tests::test_config(dir.path(), 1);
    cfg.max_connections = 3;
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = tillstream_tests::endpoint_for(&server)?;
    let addr = server.quic_addr();
    let tokens = tillstream_tests::Tokens::of(&server)?;
    let mut held = Vec::new();
    for d in 1..=3 {
        held.push(hello(&endpoint, addr, d, &tokens).await?);
    }
    let refused = endpoint.connect(addr, "localhost")?.await;
    assert!(
        matches!(refused, Err(quinn::ConnectionError::ConnectionClosed(_))),
        "a fourth connection was accepted: {refused:?}"
    );
    // One closes: a new device gets in.
    let (conn, _, _) = held.remove(0);
    conn.close(0u32.into(), b"bye");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match hello(&endpoint, addr, 4, &tokens).await {
            Ok(c) => {
                held.push(c);
                break;
            }
            // The close takes a moment to reach the server.
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("no room after a connection closed: {e}"),
        }
    }
    drop(held);
    server.shutdown().await?;
    Ok(())
}

/// A device past its event rate is slowed, not refused: its batches wait
/// before admission, and every one is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_past_its_rate_is_slowed_and_loses_nothing() -> anyhow::Result<()> {
    use tillstream_tests::*;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.limits.max_events_per_batch = 500;
    cfg.max_events_per_s_per_device = 2_000;
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    // 10 batches of 500 events: 5,000 events, a one-batch burst, then
    // 2,000 a second.
    let s = script(95, 1, true, 10, 500, now_us() - 60_000_000);
    let dev = device(
        &endpoint,
        server.quic_addr(),
        s.device,
        Tokens::of(&server)?.script(&s)?,
    );
    let started = std::time::Instant::now();
    for b in prepare(&s)? {
        dev.send(b).await?;
    }
    dev.wait_acked(10, Duration::from_secs(60)).await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_200),
        "5,000 events at 2,000/s after a 500-event burst took only {took:?}"
    );
    dev.close().await;
    caught_up(&server).await?;
    let report =
        tillstream_storage::verify::verify(&*server.store(), Some(&fleet_util::manifest(&[s])))?;
    assert!(report.ok && report.missing == 0, "{report:?}");
    server.shutdown().await?;
    Ok(())
}

/// Connections that each drip most of a 1 MiB frame and stall: each
/// could pin its megabyte (and a QUIC window more), so enough of them
/// could take any amount of memory. A global budget for the frames being
/// read (8 MiB here) and a small QUIC window bound them all together, a
/// deadline closes the drippers, and an honest device is served after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripped_frames_share_one_bounded_budget_and_time_out() -> anyhow::Result<()> {
    const CONNECTIONS: u64 = 60;
    const BUDGET_MIB: u64 = 8;
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    opts.extra = vec![
        format!("--max-frame-buffers-mib={BUDGET_MIB}"),
        "--frame-deadline-s=3".into(),
        "--quic-window-kib=64".into(),
    ];
    let server = ServerProcess::start(&opts)?;
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    let tokens = tillstream_tests::Tokens::of_data_dir(&opts.data_dir).await?;
    let before = warm_rss(&server, &endpoint, &opts, &tokens, CONNECTIONS, 30_000).await?;

    let declared = vec![0u8; (frame::DEFAULT_MAX_PAYLOAD - 64) as usize];
    let mut head = Vec::new();
    FrameHeader::write(MsgType::Batch, &declared, &mut head);
    let mut drips = tokio::task::JoinSet::new();
    let mut conns = Vec::new();
    for d in 0..CONNECTIONS {
        let (conn, mut send, recv) = hello(&endpoint, opts.quic, 40_000 + d, &tokens).await?;
        conns.push((conn.clone(), recv));
        let (head, body) = (head.clone(), declared[..900 << 10].to_vec());
        drips.spawn(async move {
            // Blocks on flow control where the server does not read.
            let _ = send.write_all(&head).await;
            let _ = send.write_all(&body).await;
            send
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = server.proc_status_kib("VmRSS").unwrap_or(0);
    let grew_mib = during.saturating_sub(before) / 1024;
    eprintln!(
        "{CONNECTIONS} dripped 900 KiB frames: RSS {before} -> {during} KiB (unbounded: {} MiB)",
        CONNECTIONS * 900 / 1024
    );
    assert!(
        grew_mib < BUDGET_MIB + 24,
        "{CONNECTIONS} dripped frames grew the server by {grew_mib} MiB"
    );

    // An honest device's batch (small frames do not queue behind the
    // large ones) is acknowledged meanwhile, and the deadline closes the
    // drippers, a few at a time as each gets its share.
    let honest_token = tokens.device(7, 1, true)?;
    let mut cfg = tillstream_client::ClientConfig::new(opts.quic, 7);
    cfg.token = honest_token;
    let dev = tillstream_client::DeviceClient::start(endpoint.clone(), cfg);
    let s = tillstream_tests::script(7, 1, true, 1, 10, tillstream_tests::now_us() - 60_000_000);
    for b in tillstream_tests::prepare(&s)? {
        dev.send(b).await?;
    }
    dev.wait_acked(1, Duration::from_secs(30)).await?;
    let mut closed = 0;
    for _ in 0..600 {
        closed = conns
            .iter()
            .filter(|(c, _)| c.close_reason().is_some())
            .count();
        if closed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{closed} of {CONNECTIONS} drippers closed by the deadline so far");
    assert!(closed > 0, "no dripper was closed");
    assert!(server.metric("tillstream_frames_too_slow_total")? > 0.0);
    drips.abort_all();
    Ok(())
}

/// A device naming ever new SKUs would make its store's shard keep an
/// entity for each: past `max_skus_per_device` its batch is refused whole
/// (`too_many_skus`, a dead letter), and SKUs it named before still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_naming_too_many_skus_is_refused_and_known_ones_pass() -> anyhow::Result<()> {
    use tillstream_engine_core::testkit::movement;
    use tillstream_protocol::frame::decode;
    use tillstream_tests::raw::{RawSession, batch_frame, read_msg};
    let dir = tempfile::tempdir()?;
    let mut cfg = tillstream_tests::test_config(dir.path(), 1);
    cfg.max_skus_per_device = 100;
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = tillstream_tests::endpoint_for(&server)?;
    let token = tillstream_tests::Tokens::of(&server)?.device(61, 1, false)?;
    let mut raw = RawSession::open(&endpoint, server.quic_addr(), 61, &token).await?;
    let now = tillstream_tests::now_us();
    let skus = |from: u64, to: u64| (from..to).map(|sku| movement(now, 1, sku, 1)).collect();
    raw.send.write_all(&batch_frame(1, skus(0, 64))?).await?;
    raw.send.write_all(&batch_frame(2, skus(64, 128))?).await?;
    raw.send.write_all(&batch_frame(3, skus(0, 10))?).await?;
    let (mut refused, mut durable) = (Vec::new(), 0);
    while durable < 3 {
        let (t, p) = read_msg(&mut raw.recv).await?;
        match t {
            MsgType::Error => {
                let e = decode::<Error>(&p)?;
                refused.push((e.batch_seq, e.code));
            }
            MsgType::Ack => durable = decode::<Ack>(&p)?.durable_seq,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, vec![(2, ErrorCode::TooManySkus.as_u16())]);
    server.shutdown().await?;
    Ok(())
}
