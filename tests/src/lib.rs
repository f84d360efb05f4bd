//! End-to-end tests across real QUIC on loopback and real stores on disk;
//! the tests live in `tests/main.rs` (one binary, one module per area), and
//! this library holds what they share.

/// The ```rust blocks of the book and of the repository's other markdown
/// pages, compiled and run as doc tests against the workspace's crates
/// (which pages: `build.rs`).
#[cfg(doctest)]
mod doc_examples {
    include!(concat!(env!("OUT_DIR"), "/doc_examples.rs"));
}

pub mod fleet_util;
pub mod machine;
pub mod netns;
pub mod raw;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tillstream_auth::Role;
use tillstream_auth::token::{SigningKey, TokenRequest};

use tillstream_client::{
    ClientConfig, ClientEndpoint, DeviceClient, PreparedBatch, client_endpoint,
};
use tillstream_engine::{Server, ServerConfig};
use tillstream_protocol::*;

/// The settings of a test server over `dir`: a free loopback port and
/// `shards` shards, the rest as a user gets them. Tests change what they
/// exercise, then `Server::start` it.
pub fn test_config(dir: &std::path::Path, shards: u16) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir);
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.shards = shards;
    cfg
}

/// A server on a loopback port over a fresh temporary directory, writing
/// its tables every millisecond (verify sees acked batches at once).
pub async fn start_server(dir: &std::path::Path, shards: u16) -> anyhow::Result<Server> {
    let mut cfg = test_config(dir, shards);
    cfg.flush_interval = Duration::from_millis(1);
    Ok(Server::start(cfg).await?)
}

/// Whether this process runs as root (the tests that mount a tmpfs or
/// change loopback's routes need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
            .unwrap_or(false)
    })
}

/// Opens the store of a stopped server's data directory as `tillstream
/// verify` does: its journal replayed into the tables first.
pub fn open_recovered(
    data_dir: &std::path::Path,
) -> anyhow::Result<tillstream_embedded::EmbeddedStore> {
    let store = tillstream_embedded::EmbeddedStore::open(&data_dir.join("store"))?;
    tillstream_engine::recover(&store)?;
    Ok(store)
}

/// Waits until a live server's tables hold every batch it acknowledged
/// (they trail the journal by a flush interval), so verify sees them all.
pub async fn caught_up(server: &Server) -> anyhow::Result<()> {
    anyhow::ensure!(
        server.tables_caught_up(Duration::from_secs(60)).await,
        "the server's tables did not catch up with its journal within 60 s"
    );
    Ok(())
}

/// Device tokens signed with a test server's key, as `tillstream token
/// issue` makes them: the tests' devices authenticate like real ones.
/// With authentication off (`Tokens::none`), tokens are empty.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Option<Arc<SigningKey>>);

impl Tokens {
    /// The signer of `server`'s tokens (none if it runs `--auth none`).
    pub fn of(server: &Server) -> anyhow::Result<Self> {
        match server.signing_key_path() {
            Some(p) => Self::from_key(p),
            None => Ok(Self::none()),
        }
    }

    /// The signer whose key is at `path`.
    pub fn from_key(path: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self(Some(Arc::new(SigningKey::load(path)?))))
    }

    /// The key of a server process's data directory, once it made it.
    pub async fn of_data_dir(dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = dir.join(tillstream_auth::token::SIGNING_KEY);
        for _ in 0..600 {
            if path.exists()
                && let Ok(t) = Self::from_key(&path)
            {
                return Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no signing key at {} after 30 s", path.display())
    }

    /// No tokens: for servers with authentication off.
    pub fn none() -> Self {
        Self(None)
    }

    /// A day's token for `device` of `store`: a till (sales, refunds,
    /// health) or a shelf sensor (counts, movements, health).
    pub fn device(&self, device: u64, store: u32, till: bool) -> anyhow::Result<Vec<u8>> {
        let Some(key) = &self.0 else {
            return Ok(Vec::new());
        };
        let role = if till {
            Role::Terminal
        } else {
            Role::ShelfSensor
        };
        let (token, _) = key.issue(&TokenRequest {
            device: Some(device),
            store: Some(store),
            role,
            ttl: Duration::from_secs(86_400),
        })?;
        Ok(token.into_bytes())
    }

    /// The token of a script's device.
    pub fn script(&self, s: &DeviceScript) -> anyhow::Result<Vec<u8>> {
        self.device(s.device, s.store, s.till)
    }

    /// An HTTP API token (`admin` or `analyst`).
    pub fn api(&self, role: Role) -> anyhow::Result<String> {
        let key = self.0.as_ref().context("authentication is off")?;
        let (token, _) = key.issue(&TokenRequest {
            device: None,
            store: None,
            role,
            ttl: Duration::from_secs(3600),
        })?;
        Ok(token)
    }
}

/// A client endpoint trusting `server`'s self-signed certificate.
pub fn endpoint_for(server: &Server) -> anyhow::Result<ClientEndpoint> {
    let ca = std::fs::read(server.cert_path())?;
    Ok(client_endpoint(&ca, server.quic_addr())?)
}

/// Starts a device client against `server`.
pub fn device(
    endpoint: &ClientEndpoint,
    server: std::net::SocketAddr,
    id: u64,
    token: Vec<u8>,
) -> DeviceClient {
    device_with(endpoint, server, id, token, false)
}

/// A device client that may be handed batches the server already holds
/// (`replay`): a device resending its own queue after a reboot.
pub fn device_with(
    endpoint: &ClientEndpoint,
    server: std::net::SocketAddr,
    id: u64,
    token: Vec<u8>,
    replay: bool,
) -> DeviceClient {
    let mut cfg = ClientConfig::new(server, id);
    cfg.token = token;
    cfg.replay = replay;
    cfg.max_inflight = 8;
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    DeviceClient::start(endpoint.clone(), cfg)
}

/// A small deterministic fleet: tills sell and refund, sensors count and
/// move stock, everyone pings health. `batches[i]` is batch seq `i + 1`.
#[derive(Debug, Clone)]
pub struct DeviceScript {
    /// The device.
    pub device: u64,
    /// Its store.
    pub store: u32,
    /// A till (else a shelf sensor).
    pub till: bool,
    /// Its batches in seq order.
    pub batches: Vec<Batch>,
}

/// Builds `batches` batches of `per_batch` events for a device.
pub fn script(
    device: u64,
    store: u32,
    till: bool,
    batches: u64,
    per_batch: u32,
    t0: i64,
) -> DeviceScript {
    let mut x = device.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for seq in 1..=batches {
        let mut events = Vec::new();
        for i in 0..per_batch {
            let ts = t0 + i64::try_from(seq * 1_000 + u64::from(i)).unwrap_or(0) * 1_000;
            let sku = 1 + next() % 20;
            let e = match (till, next() % 10) {
                (_, 0) => Event::Health(DeviceHealth {
                    ts_us: ts,
                    store,
                    battery_pct: 255,
                    temperature_dc: 200,
                    uptime_s: 1,
                    queue_depth: 0,
                    rssi_dbm: -50,
                }),
                (true, 1) => Event::Refund(Refund {
                    ts_us: ts,
                    store,
                    terminal: u32::try_from(device % 1000).unwrap_or(0),
                    operator: 1,
                    txn: [u8::try_from(i % 200).unwrap_or(0); 16],
                    original_txn: None,
                    currency: *b"GBP",
                    lines: vec![line(sku, 1)],
                    tenders: vec![tender(100)],
                }),
                (true, _) => Event::Sale(Sale {
                    ts_us: ts,
                    store,
                    terminal: u32::try_from(device % 1000).unwrap_or(0),
                    operator: 1,
                    txn: [u8::try_from(i % 200).unwrap_or(0); 16],
                    currency: *b"GBP",
                    lines: vec![line(sku, 2), line(sku % 20 + 1, 1)],
                    tenders: vec![tender(300)],
                    customer: None,
                }),
                (false, 1..=3) => Event::Count(ShelfCount {
                    ts_us: ts,
                    store,
                    sku,
                    level: i64::try_from(next() % 50).unwrap_or(0),
                }),
                (false, _) => Event::Movement(StockMovement {
                    ts_us: ts,
                    store,
                    sku,
                    delta: if next() % 2 == 0 { 12 } else { -1 },
                    reason: if next() % 2 == 0 {
                        MovementKind::Receipt
                    } else {
                        MovementKind::Shrink
                    },
                }),
            };
            events.push(e);
        }
        out.push(Batch {
            seq,
            sent_at_us: t0,
            events,
        });
    }
    DeviceScript {
        device,
        store,
        till,
        batches: out,
    }
}

fn line(sku: u64, quantity: i32) -> SaleLine {
    SaleLine {
        sku,
        quantity,
        unit_price: 100,
        discount: 0,
        tax: 20,
    }
}

fn tender(amount: i64) -> Tender {
    Tender {
        method: TenderMethod::Card,
        amount,
        tip: 0,
    }
}

/// Encodes every batch of a script.
pub fn prepare(script: &DeviceScript) -> anyhow::Result<Vec<PreparedBatch>> {
    script
        .batches
        .iter()
        .map(|b| Ok(PreparedBatch::encode(b)?))
        .collect()
}

/// Now in UTC microseconds.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
}
