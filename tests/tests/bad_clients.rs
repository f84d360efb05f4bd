//! Clients that send bad bytes: each bad frame gets a clear error code, is
//! kept as a dead letter, and never disturbs the server or other devices.

use std::time::Duration;

use tillstream_protocol::frame::{self, FrameHeader, decode};
use tillstream_protocol::*;
use tillstream_storage::{RowRef, Table};
use tillstream_tests::*;

/// A raw session: the test writes frames by hand.
pub(crate) struct Raw {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    _conn: quinn::Connection,
}

impl Raw {
    /// A new device's session.
    pub(crate) async fn open(
        server: &tillstream_engine::Server,
        device: u64,
    ) -> anyhow::Result<Self> {
        Self::open_at(server, device, 0).await
    }

    /// A session of a device the server holds batches up to `durable` of.
    pub(crate) async fn open_at(
        server: &tillstream_engine::Server,
        device: u64,
        durable: u64,
    ) -> anyhow::Result<Self> {
        let endpoint = endpoint_for(server)?;
        let token = Tokens::of(server)?.device(device, 1, true)?;
        let s = raw::RawSession::open(&endpoint, server.quic_addr(), device, &token).await?;
        anyhow::ensure!(s.welcome.durable_seq == durable);
        Ok(Self {
            send: s.send,
            recv: s.recv,
            _conn: s.conn,
        })
    }
}

pub(crate) async fn read(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<(MsgType, frame::PayloadBuf)> {
    raw::read_msg(recv).await
}

pub(crate) async fn expect_error(
    recv: &mut quinn::RecvStream,
    code: ErrorCode,
) -> anyhow::Result<()> {
    let (t, payload) = read(recv).await?;
    anyhow::ensure!(t == MsgType::Error, "expected Error, got {t:?}");
    let e = decode::<Error>(&payload)?;
    anyhow::ensure!(
        e.code == code.as_u16(),
        "expected {code:?}, got {} ({})",
        e.code,
        e.reason
    );
    Ok(())
}

pub(crate) fn good_batch(seq: u64) -> anyhow::Result<Vec<u8>> {
    Ok(frame::encode_to_vec(&good_batch_msg(seq)?)?)
}

/// The batch of [`good_batch`], before encoding.
fn good_batch_msg(seq: u64) -> anyhow::Result<Batch> {
    let s = script(9, 1, true, 1, 3, now_us());
    let b = s
        .batches
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    Ok(Batch { seq, ..b })
}

pub(crate) async fn dead_letters(
    server: &tillstream_engine::Server,
    want: usize,
) -> anyhow::Result<Vec<u16>> {
    // Dead letters are committed without an ack to wait for: poll.
    for _ in 0..100 {
        let mut codes = Vec::new();
        server.store().scan(Table::DeadLetters, &mut |r| {
            if let RowRef::DeadLetter(d) = r {
                codes.push(d.code);
            }
        })?;
        if codes.len() >= want {
            return Ok(codes);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("dead letters did not appear")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_codes_and_dead_letters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let mut raw = Raw::open(&server, 9).await?;

    // A flipped payload bit: checksum error, the session goes on.
    let mut bad = good_batch(1)?;
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    raw.send.write_all(&bad).await?;
    expect_error(&mut raw.recv, ErrorCode::ChecksumMismatch).await?;

    // A payload with a right CRC that is not an archived batch.
    let junk = vec![0xAB; 64];
    let mut frame_bytes = Vec::new();
    FrameHeader::write(MsgType::Batch, &junk, &mut frame_bytes);
    frame_bytes.extend_from_slice(&junk);
    raw.send.write_all(&frame_bytes).await?;
    expect_error(&mut raw.recv, ErrorCode::InvalidPayload).await?;

    // A valid batch after the bad ones is applied and acknowledged.
    raw.send.write_all(&good_batch(1)?).await?;
    let (t, payload) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
    assert_eq!(decode::<Ack>(&payload)?.durable_seq, 1);

    // A bad header loses the framing: error, then the connection closes.
    let mut bad_magic = good_batch(2)?;
    bad_magic[0] = b'X';
    raw.send.write_all(&bad_magic).await?;
    expect_error(&mut raw.recv, ErrorCode::BadMagic).await?;
    let mut rest = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), raw.recv.read(&mut rest)).await?;
    assert!(
        matches!(closed, Ok(None) | Err(_)),
        "stream should end after a bad header"
    );

    let mut codes = dead_letters(&server, 3).await?;
    codes.sort_unstable();
    assert_eq!(
        codes,
        vec![
            ErrorCode::BadMagic.as_u16(),
            ErrorCode::ChecksumMismatch.as_u16(),
            ErrorCode::InvalidPayload.as_u16()
        ]
    );

    // The server is still healthy for everyone else.
    let mut other = Raw::open(&server, 10).await?;
    other.send.write_all(&good_batch(1)?).await?;
    let (t, _) = read(&mut other.recv).await?;
    assert_eq!(t, MsgType::Ack);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_before_its_payload_is_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let mut raw = Raw::open(&server, 11).await?;
    let mut head = Vec::new();
    FrameHeader::write(MsgType::Batch, &[], &mut head);
    head[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
    raw.send.write_all(&head).await?;
    expect_error(&mut raw.recv, ErrorCode::FrameTooLarge).await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_leaping_far_ahead_is_refused_and_later_batches_still_count() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let mut raw = Raw::open(&server, 12).await?;
    raw.send.write_all(&good_batch(1)?).await?;
    let (t, _) = read(&mut raw.recv).await?;
    assert_eq!(t, MsgType::Ack);
    // Accepting this would make every later real batch look like a replay.
    raw.send.write_all(&good_batch(1 << 40)?).await?;
    expect_error(&mut raw.recv, ErrorCode::ProtocolViolation).await?;
    raw.send.write_all(&good_batch(2)?).await?;
    let (t, payload) = read(&mut raw.recv).await?;
    assert_eq!(t, MsgType::Ack);
    assert_eq!(decode::<Ack>(&payload)?.durable_seq, 2);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_ack_is_written_before_an_error() -> anyhow::Result<()> {
    // Devices attribute an Error without a seq to their oldest frame that is
    // neither acked nor refused: that only works if acks come first.
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let mut raw = Raw::open(&server, 13).await?;
    let mut bad = good_batch(2)?;
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let mut both = good_batch(1)?;
    both.extend_from_slice(&bad);
    raw.send.write_all(&both).await?;
    let (t, payload) = read(&mut raw.recv).await?;
    anyhow::ensure!(
        t == MsgType::Ack,
        "expected the Ack of batch 1 first, got {t:?}"
    );
    assert_eq!(decode::<Ack>(&payload)?.durable_seq, 1);
    expect_error(&mut raw.recv, ErrorCode::ChecksumMismatch).await?;
    server.shutdown().await?;
    Ok(())
}

/// A client that finishes its handshake and never says Hello holds a
/// set-up slot; a device that has to wait for a slot longer than the
/// server allows is refused at once (not left to time out), backs off,
/// dials again and is served once the slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_waits_too_long_for_a_slot_is_refused_then_served() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.max_handshakes = 1;
    cfg.handshake_max_wait = Duration::from_millis(50);
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let silent = endpoint.connect(addr, "localhost")?.await?;

    let dev = device(
        &endpoint,
        addr,
        42,
        Tokens::of(&server)?.device(42, 1, true)?,
    );
    dev.send(tillstream_client::PreparedBatch::encode(&Batch {
        seq: 1,
        sent_at_us: now_us(),
        events: Vec::new(),
    })?)
    .await?;
    // Its first attempt waits behind the silent client's slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dev.stats().connects, 0, "no slot was free");
    silent.close(0u32.into(), b"done");

    dev.wait_acked(1, Duration::from_secs(30)).await?;
    let stats = dev.stats();
    assert!(stats.connect_failures >= 1, "{stats:?}");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{stats:?}"
    );
    dev.close().await;
    server.shutdown().await?;
    Ok(())
}

/// Connections that finish their handshake and then say nothing held the
/// set-up slots for 10 s each (and Hello for 10 s more): as many silent
/// connections as slots locked every new device out. Each stage now has a
/// short deadline, and the slot is freed once Hello is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_devices_out() -> anyhow::Result<()> {
    const SLOTS: usize = 4;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.max_handshakes = SLOTS;
    let server = tillstream_engine::Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    // Twice as many silent connections as slots: no stream, no Hello.
    let mut silent = Vec::new();
    for _ in 0..2 * SLOTS {
        silent.push(endpoint.connect(addr, "localhost")?);
    }
    let mut held = Vec::new();
    for s in silent {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(10), s).await {
            held.push(c);
        }
    }
    // One that opens its stream and then stalls before Hello.
    let stalling = endpoint.connect(addr, "localhost")?.await?;
    let (_stall_send, _stall_recv) = stalling.open_bi().await?;

    let started = std::time::Instant::now();
    let dev = device(
        &endpoint,
        addr,
        43,
        Tokens::of(&server)?.device(43, 1, true)?,
    );
    dev.send(tillstream_client::PreparedBatch::encode(&Batch {
        seq: 1,
        sent_at_us: now_us(),
        events: Vec::new(),
    })?)
    .await?;
    dev.wait_acked(1, Duration::from_secs(30)).await?;
    let took = started.elapsed();
    // Before, the slots were held 10 s: generous margin, not a speed test.
    assert!(
        took < Duration::from_secs(8),
        "the device waited {took:?} for a slot"
    );
    // The silent ones were closed by the server, not left to idle out.
    let closed = tokio::time::timeout(Duration::from_secs(10), held[0].closed()).await;
    assert!(closed.is_ok(), "a silent connection was left open");
    dev.close().await;
    drop(held);
    server.shutdown().await?;
    Ok(())
}

/// A device that stops reading its stream (it advertises a 64-byte window,
/// so a couple of unread acks fill it) must not hold back anyone else's
/// acks. Before the journal, its acker blocked, its applied batches never
/// reached the flusher, and every later batch on the same shards waited
/// behind them: honest devices got no more acks. Now the session keeps
/// handing its batches on whatever its acker does, and an ack that cannot
/// be written within the deadline closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_its_acks_holds_back_no_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let ca = std::fs::read(server.cert_path())?;
    let opts = tillstream_client::EndpointOptions {
        stream_receive_window: Some(64),
        idle_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let deaf_endpoint = tillstream_client::client_endpoint_with(&ca, server.quic_addr(), &opts)?;
    let conn = deaf_endpoint
        .connect(server.quic_addr(), "localhost")?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        device: 66,
        token: Tokens::of(&server)?.device(66, 1, true)?,
    };
    send.write_all(&frame::encode_to_vec(&hello)?).await?;
    let (t, _) = read(&mut recv).await?;
    anyhow::ensure!(t == MsgType::Welcome, "expected Welcome, got {t:?}");
    // From here on the deaf device only writes.
    let deaf = tokio::spawn(async move {
        for seq in 1..=400 {
            let Ok(bytes) = good_batch(seq) else { break };
            if send.write_all(&bytes).await.is_err() {
                break;
            }
        }
        recv
    });

    // An honest device on the same stores and shards streams meanwhile.
    let endpoint = endpoint_for(&server)?;
    let s = script(67, 1, true, 120, 8, now_us() - 60_000_000);
    let honest = device(
        &endpoint,
        server.quic_addr(),
        s.device,
        Tokens::of(&server)?.script(&s)?,
    );
    let batches = prepare(&s)?;
    // Held back, its window fills and its sends wait for ever: a deadline
    // turns that into a failure.
    let streamed = tokio::time::timeout(Duration::from_secs(60), async {
        for b in batches {
            honest.send(b).await?;
        }
        honest
            .wait_acked(s.batches.len() as u64, Duration::from_secs(60))
            .await?;
        anyhow::Ok(())
    })
    .await;
    match streamed {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("the honest device failed: {e}"))?,
        Err(_) => anyhow::bail!("the honest device was held back: no acks within 60 s"),
    }

    // The deaf one is closed once an ack waits past the deadline.
    let closed = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
    anyhow::ensure!(closed.is_ok(), "the deaf device was never closed");
    drop(deaf.await?);
    honest.close().await;
    caught_up(&server).await?;
    let report =
        tillstream_storage::verify::verify(&*server.store(), Some(&fleet_util::manifest(&[s])))?;
    anyhow::ensure!(report.ok && report.missing == 0, "{report:?}");
    server.shutdown().await?;
    Ok(())
}

/// Refused events are named in the Ack; 16 batches of 4,096 refused events
/// coalesced into one Ack made a frame past the 1 MiB limit, which the
/// device could not read, and the session never acked again. Acks now
/// split their references, and every one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_naming_many_refused_events_stay_within_the_frame_limit() -> anyhow::Result<()> {
    const BATCHES: u64 = 24;
    const EVENTS: u32 = 4096;
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 2);
    cfg.flush_interval = Duration::from_millis(1);
    // The device reads no ack until it has written every batch, so its
    // acker waits on the stream window for as long as the writes take:
    // past the 5 s default on a loaded machine, which closed the
    // connection (one CI run in five). Waiting is what this test needs,
    // to make the acks coalesce.
    cfg.ack_write_deadline = Duration::from_secs(120);
    let server = tillstream_engine::Server::start(cfg).await?;
    let mut raw = Raw::open(&server, 71).await?;
    let ts = now_us();
    let refused: Vec<Event> = (0..EVENTS)
        .map(|i| {
            Event::Movement(StockMovement {
                ts_us: ts,
                store: 1,
                sku: u64::from(i),
                delta: 0, // zero_delta: refused, kept in rejected_events
                reason: MovementKind::Receipt,
            })
        })
        .collect();
    // Every batch is written before any ack is read, so acks coalesce.
    let mut frames = Vec::new();
    for seq in 1..=BATCHES {
        frames.extend(frame::encode_to_vec(&Batch {
            seq,
            sent_at_us: ts,
            events: refused.clone(),
        })?);
    }
    raw.send.write_all(&frames).await?;
    let mut durable = 0;
    let mut refs = 0u64;
    while durable < BATCHES {
        let (t, payload) = read(&mut raw.recv).await?;
        anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
        let ack = decode::<Ack>(&payload)?;
        durable = durable.max(ack.durable_seq);
        refs += ack.rejected.len() as u64;
    }
    // The last refs may trail the last durable_seq by one Ack.
    while refs < BATCHES * u64::from(EVENTS) {
        let (t, payload) = read(&mut raw.recv).await?;
        anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
        refs += decode::<Ack>(&payload)?.rejected.len() as u64;
    }
    assert_eq!(refs, BATCHES * u64::from(EVENTS));
    server.shutdown().await?;
    Ok(())
}

/// Batch `seq` again with other bytes than `first` (its events stamped
/// later).
pub(crate) async fn other_batch(first: &[u8], seq: u64) -> anyhow::Result<Vec<u8>> {
    let mut other = good_batch(seq)?;
    while other == first {
        tokio::time::sleep(Duration::from_millis(2)).await;
        other = good_batch(seq)?;
    }
    Ok(other)
}

/// A device of protocol version 1 (it knows no Redirect) talks to a
/// version-2 server: it is welcomed and acknowledged in version-1 frames,
/// which it can read, and a refusal reaches it in version 1 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_device_is_answered_in_version_1() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let endpoint = endpoint_for(&server)?;
    let tokens = Tokens::of(&server)?;
    let conn = endpoint.connect(server.quic_addr(), "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        version: 1,
        device: 31,
        token: tokens.device(31, 1, true)?,
    };
    send.write_all(&frame::encode_to_vec_versioned(&hello, 1)?)
        .await?;
    let (h, payload) = raw::read_frame(&mut recv).await?;
    assert_eq!((h.msg_type, h.version), (MsgType::Welcome, 1));
    assert_eq!(decode::<Welcome>(&payload)?.durable_seq, 0);
    send.write_all(&frame::encode_to_vec_versioned(&good_batch_msg(1)?, 1)?)
        .await?;
    let (h, payload) = raw::read_frame(&mut recv).await?;
    assert_eq!((h.msg_type, h.version), (MsgType::Ack, 1));
    assert_eq!(decode::<Ack>(&payload)?.durable_seq, 1);
    // A bad token: the Reject comes in version 1 as well.
    let conn = endpoint.connect(server.quic_addr(), "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let forged = Hello {
        version: 1,
        device: 32,
        token: b"not a token".to_vec(),
    };
    send.write_all(&frame::encode_to_vec_versioned(&forged, 1)?)
        .await?;
    let (h, _) = raw::read_frame(&mut recv).await?;
    assert_eq!((h.msg_type, h.version), (MsgType::Reject, 1));
    server.shutdown().await?;
    Ok(())
}
