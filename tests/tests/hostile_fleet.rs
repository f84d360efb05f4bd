//! The hostile fleet: while honest devices stream at a fixed rate (the
//! loadgen, against a real server process), hostile clients send random
//! bytes, oversized, truncated and bit-flipped frames, the wrong ALPN,
//! Hello a byte at a time, batches they never read the acks of, sprayed
//! store and terminal ids, random SKUs, clocks hours fast, seq leaps, reused seqs, and
//! more events than their rate.
//!
//! Passes when the server never panics and stays under its memory cap,
//! every hostile client gets its code or is closed, and nothing the honest
//! devices were acknowledged is lost or doubled (`verify --expected`). The
//! honest throughput and ack p99 with and without the hostiles are printed
//! for the record (speed is measured, not asserted: see README).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustls::pki_types::pem::PemObject;
use tillstream_client::{EndpointOptions, client_endpoint, client_endpoint_with};
use tillstream_protocol::frame::{self, FrameHeader, decode};
use tillstream_protocol::*;
use tillstream_tests::raw::{RawSession, read_msg};
use tillstream_tests::{machine, now_us};

use crate::crash::{loadgen_args, stop_and_verify};
use crate::process::{ServeOpts, ServerProcess, tail};

/// Peak resident memory the server may reach under the hostile fleet.
const RSS_CAP_MIB: u64 = 1024;
/// Honest load: events a second, and for how long.
const HONEST_RATE: u64 = 10_000;
const HONEST_SECS: u64 = 8;

async fn connect(
    endpoint: &tillstream_client::ClientEndpoint,
    opts: &ServeOpts,
) -> anyhow::Result<quinn::Connection> {
    Ok(endpoint.connect(opts.quic, "localhost")?.await?)
}

/// Says Hello with a valid credential: a hostile device is a compromised
/// one, not only a stranger. Each plays a sensor of the store its events
/// name (a till of store 1 for the terminal sprayer), so what it is
/// refused for is what it does, not who it is.
async fn hello(
    endpoint: &tillstream_client::ClientEndpoint,
    opts: &ServeOpts,
    device: u64,
    kind: usize,
) -> anyhow::Result<RawSession> {
    let tokens = tillstream_tests::Tokens::of_data_dir(&opts.data_dir).await?;
    let token = match kind {
        13 => tokens.device(device, 1, true)?,
        12 => tokens.device(device, 3, false)?,
        0..=10 => tokens.device(device, 1, false)?,
        _ => tokens.device(device, 2, false)?,
    };
    RawSession::open(endpoint, opts.quic, device, &token).await
}

/// Reads until an Error frame with `code` (skipping acks), or the
/// connection closes: either is the server answering the hostile.
async fn coded_or_closed(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    code: ErrorCode,
) -> anyhow::Result<&'static str> {
    loop {
        match read_msg(recv).await {
            Ok((MsgType::Error, p)) => {
                let e = decode::<Error>(&p)?;
                anyhow::ensure!(
                    e.code == code.as_u16(),
                    "expected {code:?}, got {} ({})",
                    e.code,
                    e.reason
                );
                return Ok("code");
            }
            Ok(_) => continue,
            Err(_) => {
                tokio::time::timeout(Duration::from_secs(20), conn.closed()).await?;
                return Ok("closed");
            }
        }
    }
}

use tillstream_tests::raw::batch_frame as batch;

/// `n` receipts stamped `ts`, event `i` for the (store, SKU) `at(i)`.
fn movements(n: usize, mut at: impl FnMut(usize) -> (u32, u64), ts: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let (store, sku) = at(i);
            Event::Movement(StockMovement {
                ts_us: ts,
                store,
                sku,
                delta: 1,
                reason: MovementKind::Receipt,
            })
        })
        .collect()
}

/// Each hostile behaviour once; returns what the server answered.
async fn hostile(
    kind: usize,
    opts: ServeOpts,
    device: u64,
) -> anyhow::Result<(&'static str, &'static str)> {
    let ca = std::fs::read(opts.cert_path())?;
    let endpoint = client_endpoint(&ca, opts.quic)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(device);
    let name = match kind {
        0 => {
            let conn = connect(&endpoint, &opts).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let junk: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
            send.write_all(&junk).await?;
            return Ok((
                "random bytes",
                coded_or_closed(&conn, &mut recv, ErrorCode::BadMagic).await?,
            ));
        }
        1 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            let mut head = Vec::new();
            FrameHeader::write(MsgType::Batch, &[], &mut head);
            head[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
            raw.send.write_all(&head).await?;
            return Ok((
                "oversized frame",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::FrameTooLarge).await?,
            ));
        }
        2 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            let whole = batch(1, movements(20, |i| (1, i as u64), now_us()))?;
            raw.send.write_all(&whole[..whole.len() / 2]).await?;
            raw.send.finish()?;
            return Ok((
                "truncated frame",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::Truncated).await?,
            ));
        }
        3 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            let mut f = batch(1, movements(20, |i| (1, i as u64), now_us()))?;
            let at = frame::HEADER_LEN + rng.random_range(0..f.len() - frame::HEADER_LEN);
            f[at] ^= 0x5a;
            raw.send.write_all(&f).await?;
            return Ok((
                "bit-flipped frame",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::ChecksumMismatch).await?,
            ));
        }
        4 => {
            let wrong = wrong_alpn_endpoint(&ca)?;
            let r = wrong.connect(opts.quic, "localhost")?.await;
            anyhow::ensure!(r.is_err(), "a connection with the wrong ALPN was accepted");
            return Ok(("wrong ALPN", "closed"));
        }
        5 => {
            // Slowloris: Hello a byte every 300 ms, all but its last
            // byte, which never comes: the server must give up on it
            // (`hello_timeout`, 2 s) however slowly this machine runs;
            // a complete Hello, however late, would be a valid one.
            let conn = connect(&endpoint, &opts).await?;
            let (mut send, _recv) = conn.open_bi().await?;
            let mut h = frame::encode_to_vec(&Hello {
                version: PROTOCOL_VERSION,
                device,
                token: Vec::new(),
            })?;
            h.pop();
            let drip = async {
                for b in h {
                    if send.write_all(&[b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                // Never ends: the closing is what is waited for.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = drip => {}
                _ = conn.closed() => {}
                () = tokio::time::sleep(Duration::from_secs(60)) => {
                    anyhow::bail!("a Hello dripped a byte at a time was waited on for 60 s")
                }
            }
            return Ok(("slowloris Hello", "closed"));
        }
        6 => {
            // Never reads its acks (a 64-byte window).
            let deaf = client_endpoint_with(
                &ca,
                opts.quic,
                &EndpointOptions {
                    stream_receive_window: Some(64),
                    idle_timeout: Duration::from_secs(60),
                    ..Default::default()
                },
            )?;
            let raw = hello(&deaf, &opts, device, kind).await?;
            let RawSession {
                conn,
                mut send,
                recv,
                ..
            } = raw;
            let writer = async {
                for seq in 1..=5_000 {
                    let b = batch(seq, movements(8, |i| (1, i as u64), now_us()))?;
                    if send.write_all(&b).await.is_err() {
                        break;
                    }
                }
                anyhow::Ok(())
            };
            tokio::select! {
                r = writer => r?,
                _ = conn.closed() => {}
            }
            tokio::time::timeout(Duration::from_secs(30), conn.closed()).await?;
            drop(recv);
            return Ok(("never reads acks", "closed"));
        }
        7 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            let sprayed = movements(256, |_| (rng.random(), rng.random()), now_us());
            raw.send.write_all(&batch(1, sprayed)?).await?;
            return Ok((
                "random stores",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::TooManyStores).await?,
            ));
        }
        8 => "clock two hours fast",
        12 => "random SKUs",
        13 => {
            use tillstream_engine_core::testkit::{line, sale};
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            let sprayed: Vec<Event> = (0..64)
                .map(|_| sale(now_us(), 1, rng.random(), vec![line(1, 1, 100)]))
                .collect();
            raw.send.write_all(&batch(1, sprayed)?).await?;
            return Ok((
                "random terminals",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::TooManyTerminals).await?,
            ));
        }
        9 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            raw.send
                .write_all(&batch(1, movements(4, |i| (1, i as u64), now_us()))?)
                .await?;
            raw.send
                .write_all(&batch(
                    2 + (1 << 21),
                    movements(4, |i| (1, i as u64), now_us()),
                )?)
                .await?;
            return Ok((
                "seq leap",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::ProtocolViolation).await?,
            ));
        }
        10 => {
            let mut raw = hello(&endpoint, &opts, device, kind).await?;
            raw.send
                .write_all(&batch(1, movements(4, |i| (1, i as u64), now_us()))?)
                .await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            raw.send
                .write_all(&batch(1, movements(5, |i| (1, i as u64), now_us()))?)
                .await?;
            return Ok((
                "reused seq",
                coded_or_closed(&raw.conn, &mut raw.recv, ErrorCode::SeqConflict).await?,
            ));
        }
        _ => "past its rate",
    };
    // Kinds 8, 11 and 12 send acceptable frames: their batches are acked
    // (events refused by rule where they should be), never the server hurt.
    let mut raw = hello(&endpoint, &opts, device, kind).await?;
    let batches: u64 = if kind == 11 { 60 } else { 20 };
    let ahead = 2 * 3_600_000_000;
    for seq in 1..=batches {
        let events = match kind {
            12 => movements(256, |_| (3, rng.random()), now_us()),
            8 => movements(64, |i| (1, i as u64), now_us() + ahead),
            _ => movements(1024, |i| (2, i as u64), now_us()),
        };
        raw.send.write_all(&batch(seq, events)?).await?;
    }
    let mut durable = 0;
    let mut refused = 0;
    while durable < batches {
        let (t, p) = read_msg(&mut raw.recv).await?;
        anyhow::ensure!(t == MsgType::Ack, "{name}: expected Ack, got {t:?}");
        let a = decode::<Ack>(&p)?;
        durable = a.durable_seq;
        refused += a
            .rejected
            .iter()
            .filter(|r| r.code == RejectCode::FutureTimestamp.as_u16())
            .count();
    }
    if kind == 8 {
        anyhow::ensure!(
            refused == 20 * 64,
            "{refused} future events refused of {}",
            20 * 64
        );
    }
    Ok((name, "acked"))
}

/// A client offering another protocol's ALPN.
fn wrong_alpn_endpoint(ca_pem: &[u8]) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// The honest fleet at a fixed rate: its events/s and ack p99.
async fn honest(
    opts: &ServeOpts,
    manifest: &std::path::Path,
    seed: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut args = loadgen_args(opts, manifest, HONEST_RATE * HONEST_SECS, HONEST_RATE, seed)?;
    // Each run its own devices.
    args.run_id = Some(u32::try_from(seed).unwrap_or(1));
    let report = tillstream_loadgen::run::run(args).await?;
    anyhow::ensure!(report.ok, "honest run failed: {:?}", report.failures);
    anyhow::ensure!(
        report.events_acked == report.events_total,
        "honest events not all acked"
    );
    Ok((report.events_per_s, report.ack_latency_ms.p99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_fleet_costs_the_honest_devices_nothing() -> anyhow::Result<()> {
    let _machine = machine::with_deadlines();
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    opts.extra = ["--max-events-per-s-per-device", "5000"]
        .map(String::from)
        .to_vec();
    let server = ServerProcess::start(&opts)?;

    // Baseline: the honest fleet alone.
    let base = honest(&opts, &dir.path().join("base.json"), 3).await?;

    // The same with the hostiles, each behaviour from a few clients
    // (TILLSTREAM_HOSTILE_KINDS=0,6,11 picks some, to see what costs what).
    let kinds: Vec<usize> = std::env::var("TILLSTREAM_HOSTILE_KINDS")
        .ok()
        .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| (0..14).collect());
    let started = Instant::now();
    let mut hostiles = tokio::task::JoinSet::new();
    for &kind in &kinds {
        for copy in 0..3u64 {
            let device = 0xbad0_0000 + (kind as u64) * 16 + copy;
            hostiles.spawn(hostile(kind, opts.clone(), device));
        }
    }
    let manifest = dir.path().join("acked.json");
    let with = honest(&opts, &manifest, 4).await?;
    let mut answered = std::collections::BTreeMap::new();
    while let Some(r) = hostiles.join_next().await {
        let (name, how) = r??;
        *answered.entry((name, how)).or_insert(0u32) += 1;
    }
    let total: u32 = answered.values().sum();
    assert_eq!(
        total as usize,
        3 * kinds.len(),
        "every hostile client was answered: {answered:?}"
    );
    let peak_mib = server.proc_status_kib("VmHWM").unwrap_or(0) >> 10;
    eprintln!(
        "hostile fleet ({:.1} s): {answered:?}\nhonest alone: {:.0} events/s, ack p99 {:.1} ms; \
         with hostiles: {:.0} events/s, ack p99 {:.1} ms; server peak RSS {peak_mib} MiB",
        started.elapsed().as_secs_f64(),
        base.0,
        base.1,
        with.0,
        with.1
    );
    assert!(peak_mib < RSS_CAP_MIB, "server peak RSS {peak_mib} MiB");
    let log = std::fs::read_to_string(&opts.log).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the server panicked:\n{}",
        tail(&opts.log)
    );
    stop_and_verify(server, &manifest)
}
