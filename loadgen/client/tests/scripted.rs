//! The device client against a scripted QUIC server on loopback: resend
//! after a lost connection, retryable and final errors (with and without a
//! seq), rejected `Hello`, device ids the server already holds seqs of,
//! and clusters of scripted nodes that redirect devices to one another.
//! The real engine is exercised by the end-to-end tests in `tests/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use tillstream_client::{
    ClientConfig, ClientError, ClientEvent, DeviceClient, PreparedBatch, client_endpoint,
};
use tillstream_protocol::frame::{DEFAULT_MAX_PAYLOAD, FrameHeader, HEADER_LEN, PayloadBuf};
use tillstream_protocol::frame::{decode, encode_to_vec};
use tillstream_protocol::{
    ALPN, Ack, Batch, Error as ErrorMsg, ErrorCode, Hello, Limits, MsgType, Redirect, Reject,
    ValidatedBatch, Welcome,
};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What the scripted server does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    /// Close the connection without acking.
    Close,
    /// Send an `Error` with this code for the batch.
    Error(ErrorCode),
    /// Send an `Error` with this code and `batch_seq` 0, as a server does
    /// for a frame whose seq it could not read (the watermark then moves
    /// over the gap with the next batch, as the engine's ledger does).
    ErrorNoSeq(ErrorCode),
    /// Send a `Redirect` to `Log::redirect_owner` instead of an ack, and
    /// close.
    Redirect,
}

/// How a scripted node answers `Hello` instead of `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Reject(ErrorCode),
    /// A `Redirect` naming this owner.
    Redirect(String),
}

/// Decides per (connection number, batch seq).
type Script = Arc<dyn Fn(usize, u64) -> Action + Send + Sync>;
/// Decides per connection number whether to refuse or redirect `Hello`.
type HelloScript = Arc<dyn Fn(usize) -> Option<Answer> + Send + Sync>;

#[derive(Default)]
struct Log {
    /// (connection number, seq) of every batch received.
    received: Vec<(usize, u64)>,
    durable: HashMap<u64, u64>,
    connections: usize,
    /// How long the server waits before answering `Hello` with `Welcome`.
    welcome_delay: Duration,
    /// The node (its address) and device of every `Hello`, in order.
    hellos: Vec<(SocketAddr, u64)>,
    /// The owner `Action::Redirect` names.
    redirect_owner: String,
}

struct Scripted {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    log: Arc<Mutex<Log>>,
    _endpoint: quinn::Endpoint,
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Scripted nodes of one cluster: one certificate, one store (the log:
/// durable seqs, connections, hellos).
struct Cluster {
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
    log: Arc<Mutex<Log>>,
}

impl Cluster {
    fn new() -> BoxResult<Self> {
        Ok(Self {
            cert: rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?,
            log: Arc::default(),
        })
    }

    fn node(&self, script: Script, hello: HelloScript) -> BoxResult<Scripted> {
        node(&self.cert, self.log.clone(), script, hello)
    }
}

/// A scripted server alone.
fn server(script: Script, hello: HelloScript) -> BoxResult<Scripted> {
    Cluster::new()?.node(script, hello)
}

fn node(
    ck: &rcgen::CertifiedKey<rcgen::KeyPair>,
    log: Arc<Mutex<Log>>,
    script: Script,
    hello: HelloScript,
) -> BoxResult<Scripted> {
    let ca_pem = ck.cert.pem().into_bytes();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let endpoint = quinn::Endpoint::server(cfg, ([127, 0, 0, 1], 0).into())?;
    let addr = endpoint.local_addr()?;
    let (ep, lg) = (endpoint.clone(), log.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let n = {
                let mut l = lg.lock().unwrap();
                l.connections += 1;
                l.connections - 1
            };
            let (lg, script, hello) = (lg.clone(), script.clone(), hello.clone());
            tokio::spawn(async move {
                let _ = serve(incoming, addr, n, lg, script, hello).await;
            });
        }
    });
    Ok(Scripted {
        addr,
        ca_pem,
        log,
        _endpoint: endpoint,
    })
}

async fn read(recv: &mut quinn::RecvStream) -> Option<(MsgType, PayloadBuf)> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head).await.ok()?;
    let h = FrameHeader::parse(&head, DEFAULT_MAX_PAYLOAD).ok()?;
    let mut buf = PayloadBuf::with_capacity(h.len as usize);
    buf.resize(h.len as usize, 0);
    recv.read_exact(&mut buf).await.ok()?;
    h.check_payload(&buf).ok()?;
    Some((h.msg_type, buf))
}

async fn serve(
    incoming: quinn::Incoming,
    at: SocketAddr,
    n: usize,
    log: Arc<Mutex<Log>>,
    script: Script,
    hello: HelloScript,
) -> TestResult {
    let conn = incoming.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let (ty, payload) = read(&mut recv).await.ok_or("no hello")?;
    assert_eq!(ty, MsgType::Hello);
    let h: Hello = decode::<Hello>(&payload)?;
    log.lock().unwrap().hellos.push((at, h.device));
    if let Some(answer) = hello(n) {
        let frame = match answer {
            Answer::Reject(code) => encode_to_vec(&Reject {
                code: code.as_u16(),
                reason: "scripted".into(),
            })?,
            Answer::Redirect(owner) => encode_to_vec(&Redirect {
                store: 1,
                epoch: 3,
                owner,
            })?,
        };
        send.write_all(&frame).await?;
        send.finish()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(0u32.into(), b"rejected");
        return Ok(());
    }
    let delay = log.lock().unwrap().welcome_delay;
    tokio::time::sleep(delay).await;
    let durable = log
        .lock()
        .unwrap()
        .durable
        .get(&h.device)
        .copied()
        .unwrap_or(0);
    let w = Welcome {
        durable_seq: durable,
        limits: Limits {
            max_inflight_batches: 4,
            ..Limits::default()
        },
    };
    send.write_all(&encode_to_vec(&w)?).await?;
    while let Some((ty, payload)) = read(&mut recv).await {
        assert_eq!(ty, MsgType::Batch);
        let seq = ValidatedBatch::new(payload, 4096)?.get().seq.to_native();
        log.lock().unwrap().received.push((n, seq));
        let action = script(n, seq);
        match action {
            Action::Close => {
                conn.close(7u32.into(), b"scripted loss");
                return Ok(());
            }
            Action::Redirect => {
                let owner = log.lock().unwrap().redirect_owner.clone();
                let r = Redirect {
                    store: 1,
                    epoch: 4,
                    owner,
                };
                send.write_all(&encode_to_vec(&r)?).await?;
                send.finish()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.close(0u32.into(), b"redirected");
                return Ok(());
            }
            Action::Error(code) | Action::ErrorNoSeq(code) => {
                if !code.is_retryable() {
                    advance(&log, h.device, seq);
                }
                let e = ErrorMsg {
                    code: code.as_u16(),
                    batch_seq: if matches!(action, Action::ErrorNoSeq(_)) {
                        0
                    } else {
                        seq
                    },
                    reason: "scripted".into(),
                };
                send.write_all(&encode_to_vec(&e)?).await?;
            }
            Action::Ack => {
                let d = advance(&log, h.device, seq);
                let a = Ack {
                    durable_seq: d,
                    rejected: Vec::new(),
                };
                send.write_all(&encode_to_vec(&a)?).await?;
            }
        }
    }
    Ok(())
}

/// In-order watermark: a seq right above it advances it.
fn advance(log: &Mutex<Log>, device: u64, seq: u64) -> u64 {
    let mut l = log.lock().unwrap();
    let d = l.durable.entry(device).or_insert(0);
    if seq == *d + 1 {
        *d = seq;
    }
    *d
}

fn batch(seq: u64) -> Result<PreparedBatch, ClientError> {
    PreparedBatch::encode(&Batch {
        seq,
        sent_at_us: 0,
        events: Vec::new(),
    })
}

fn config(s: &Scripted) -> ClientConfig {
    let mut cfg = ClientConfig::new(s.addr, 1);
    cfg.max_inflight = 8;
    cfg.backoff_min = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(50);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

fn no_reject() -> HelloScript {
    Arc::new(|_| None)
}

/// Queues batches 1..=n and waits until batch n is acknowledged.
async fn send_all(dev: &DeviceClient, n: u64) -> TestResult {
    for seq in 1..=n {
        dev.send(batch(seq)?).await?;
    }
    dev.wait_acked(n, Duration::from_secs(10)).await?;
    Ok(())
}

/// Every seq in 1..=n acked exactly once across the events.
fn assert_acked_once(events: &[ClientEvent], n: u64) {
    let mut seqs = acked_seqs(events);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

fn drain(rx: &mut mpsc::Receiver<ClientEvent>) -> Vec<ClientEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Seqs of the batches acknowledged across the events, in order.
fn acked_seqs(events: &[ClientEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Acked(a) => Some(a.batches.iter().map(|b| b.seq)),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn resends_in_order_after_a_lost_connection() -> TestResult {
    let s = server(
        Arc::new(|conn, seq| match (conn, seq) {
            (0, 1..=5) => Action::Ack,
            (0, _) => Action::Close,
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, config(&s), tx);
    send_all(&dev, 20).await?;
    assert_eq!(*dev.acks().borrow(), 20);
    let stats = dev.stats();
    assert_eq!(stats.reconnects, 1);
    assert!(stats.resent_batches >= 1, "{stats:?}");
    assert_eq!(stats.acked_batches, 20);
    assert_eq!(stats.recoveries, 1);
    let later: Vec<u64> = {
        let l = s.log.lock().unwrap();
        l.received
            .iter()
            .filter(|(c, _)| *c == 1)
            .map(|(_, q)| *q)
            .collect()
    };
    assert_eq!(
        later,
        (6..=20).collect::<Vec<_>>(),
        "resent in order from the watermark"
    );
    dev.close().await;
    assert_acked_once(&drain(&mut rx), 20);
    Ok(())
}

#[tokio::test]
async fn retryable_error_keeps_the_batch_and_reconnects() -> TestResult {
    let s = server(
        Arc::new(|conn, seq| match (conn, seq) {
            (0, 3) => Action::Error(ErrorCode::Busy),
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let dev = DeviceClient::start(ep, config(&s));
    send_all(&dev, 6).await?;
    let stats = dev.stats();
    assert_eq!(
        stats.errors_by_code.get(&ErrorCode::Busy.as_u16()),
        Some(&1)
    );
    assert_eq!(stats.reconnects, 1);
    assert_eq!(stats.refused_batches, 0);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn final_error_drops_and_reports_the_batch() -> TestResult {
    let s = server(
        Arc::new(|_, seq| match seq {
            2 => Action::Error(ErrorCode::InvalidPayload),
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, config(&s), tx);
    send_all(&dev, 5).await?;
    // Batch 5 is durable, the ack covers 2 as well, yet 2 was refused.
    let r = dev.wait_acked(2, Duration::from_secs(1)).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Refused {
                seq: 2,
                code: 5,
                ..
            })
        ),
        "{r:?}"
    );
    let stats = dev.stats();
    assert_eq!(stats.refused_batches, 1);
    assert_eq!(stats.acked_batches, 4);
    assert_eq!(stats.reconnects, 0);
    dev.close().await;
    let events = drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Refused(r) if r.seq == 2))
    );
    let acked: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Acked(a) => Some(a.batches.iter().map(|b| b.seq)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(acked, vec![1, 3, 4, 5]);
    Ok(())
}

#[tokio::test]
async fn final_reject_stops_the_device() -> TestResult {
    let s = server(
        Arc::new(|_, _| Action::Ack),
        Arc::new(|_| Some(Answer::Reject(ErrorCode::AuthFailed))),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let (tx, mut rx) = mpsc::channel(16);
    let dev = DeviceClient::start_with_events(ep, config(&s), tx);
    dev.send(batch(1)?).await?;
    let err = dev.wait_acked(1, Duration::from_secs(10)).await;
    assert!(
        matches!(err, Err(ClientError::Rejected { code: 11, .. })),
        "{err:?}"
    );
    assert!(matches!(
        dev.send(batch(2)?).await,
        Err(ClientError::Rejected { .. })
    ));
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    assert!(matches!(
        ev,
        Some(ClientEvent::Fatal {
            device: 1,
            code: 11,
            ..
        })
    ));
    assert_eq!(
        s.log.lock().unwrap().connections,
        1,
        "no retry after a final reject"
    );
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn retryable_reject_is_retried() -> TestResult {
    let s = server(
        Arc::new(|_, _| Action::Ack),
        Arc::new(|conn| (conn < 2).then_some(Answer::Reject(ErrorCode::Draining))),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let dev = DeviceClient::start(ep, config(&s));
    dev.send(batch(1)?).await?;
    dev.wait_acked(1, Duration::from_secs(10)).await?;
    let stats = dev.stats();
    assert_eq!(stats.connect_failures, 2);
    assert_eq!(
        stats.rejects_by_code.get(&ErrorCode::Draining.as_u16()),
        Some(&2)
    );
    assert_eq!(stats.connects, 1);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn timeout_and_close() -> TestResult {
    // A server that never answers batches.
    let s = server(
        Arc::new(|_, _| Action::Error(ErrorCode::Busy)),
        Arc::new(|_| None),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let dev = DeviceClient::start(ep, config(&s));
    dev.send(batch(1)?).await?;
    let r = dev.wait_acked(1, Duration::from_millis(200)).await;
    assert!(
        matches!(r, Err(ClientError::Timeout { seq: 1, durable: 0 })),
        "{r:?}"
    );
    assert!(matches!(
        dev.send(batch(1)?).await,
        Err(ClientError::OutOfOrder { .. })
    ));
    dev.close().await;
    Ok(())
}

// Errors without a seq and device ids the server already holds.
#[path = "scripted/stale.rs"]
mod stale;

// Clusters: redirects, seeds.
#[path = "scripted/redirect.rs"]
mod redirect;
