use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tillstream_protocol::Limits;

use tillstream_scylla::ScyllaConfig;

use crate::auth::AuthConfig;
use crate::faults::Faults;

/// How long acknowledged rows wait before they are written to the tables,
/// by default ([`ServerConfig::flush_interval`]).
///
/// Why 500 ms: where no other rule starts a write (rows that hold a
/// quarter of a shard's budget), each
/// write costs about the same for every store it touches, whatever its
/// rows. 10,000 devices over 1,000 stores at 5 events/s took 12.5 and
/// 12.8 µs of server CPU an event at 500 ms against 13.9–14.8 at 250 (4
/// runs); 1,000 devices at 100/s, 2.67 against 2.83 and 3.05. Under load
/// the quarter budget starts each write, so the peak does not see it
/// (the main command, 3 pairs: 1,088 k events/s against 1,078 k). The cost:
/// rows reach `query` up to half a second later (the tables are synced
/// every 500 ms anyway), and a crash at a low rate leaves up to that much
/// more journal to replay.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 500;

/// How to run a server. `ServerConfig::new(dir)` works with no other
/// setting: loopback QUIC on port 7400, a self-signed certificate in the
/// data directory, one shard per two cores.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// QUIC (UDP) address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded store and the TLS files live.
    pub data_dir: PathBuf,
    /// Where the embedded store's journal lives, if not in `store/wal`
    /// (`serve --journal-dir`): placed there at open, under the store's
    /// lock (storage `EmbeddedStore::open_placed`).
    pub journal_dir: Option<PathBuf>,
    /// Shard actors (default: half the cores, at least one: the QUIC
    /// connections, the journal and the table writes need the others).
    pub shards: u16,
    /// HTTP address for /metrics, /healthz, /readyz and /v1/*; None for none.
    pub http: Option<SocketAddr>,
    /// How long acknowledged rows wait before they are written to the
    /// tables (the journal already holds them), unless they hold a quarter
    /// of a shard's in-flight budget first: longer gathers more per write,
    /// so each store's blocks and level delta are written once per
    /// interval, not once per few batches.
    pub flush_interval: Duration,
    /// Write to the tables early once this many rows wait.
    pub flush_max_rows: usize,
    /// What devices are told they may send.
    pub limits: Limits,
    /// Bytes of batch payload a shard may hold before it is durable (queued,
    /// applied, or waiting for its commit) before sessions routing to it
    /// stop reading: with slow storage, this is what bounds the memory.
    pub max_inflight_bytes_per_shard: usize,
    /// PEM certificate chain and key; None: a self-signed pair in data_dir/tls.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Grace period of a drain on shutdown.
    pub drain_timeout: Duration,
    /// Connections set up at once (handshake, Hello, Welcome); more wait
    /// in a queue, so a reconnect storm is served at full speed instead of
    /// every handshake slowing down together. Default: 16 per core (on 2
    /// cores, 32 reconnected 10,000 devices faster than 16, 64, 128 or 512).
    pub max_handshakes: usize,
    /// Longest a new connection waits for its turn before it is refused
    /// (the device backs off and dials again). Default 4 s: below the
    /// devices' 5 s idle timeout, past which a waiting handshake is wasted.
    pub handshake_max_wait: Duration,
    /// Stores (their SKUs), rollup days and device slots unchanged for this
    /// long leave memory once their rows are in the tables, and are read
    /// again when needed. Default 15 minutes: longer than a till's quiet
    /// spell in opening hours, so what sells stays resident.
    pub passivate_after: Duration,
    /// How far ahead of the server's clock an event may be stamped (whole
    /// seconds). Later events are refused as `future_timestamp` and kept in
    /// `rejected_events` with their bytes. Default 5 minutes: a till whose
    /// clock runs hours fast must not push the SKUs it sells ahead of the
    /// honest shelf counts.
    pub max_clock_skew: Duration,
    /// `/readyz` answers 503 once no batch has been acknowledged for this
    /// long although batches wait (`tillstream_ack_stall_seconds` shows the
    /// stall as it grows). Default 10 s: far above a healthy server's worst
    /// ack (hundreds of ms at full load), short enough for a load balancer
    /// to stop sending before devices time out.
    pub ack_stall_not_ready: Duration,
    /// Longest one ack may wait to be written (the device's stream window
    /// full: it does not read) before the connection is closed, so that a
    /// device that stopped reading holds nothing for ever. Default 5 s.
    pub ack_write_deadline: Duration,
    /// Connections open at once, in handshake or serving; more are
    /// refused (CONNECTION_REFUSED, counted as `too_many_connections`).
    /// Each one costs a session's tasks and buffers; a device holds one
    /// (a newer connection of a device closes its older one). Default
    /// 20,000: twice a 10,000-device fleet.
    pub max_connections: usize,
    /// Events a second one device may send (GCRA, bursts of a few
    /// batches); past it its reader waits, so QUIC flow control slows the
    /// device and nothing is lost. A batch counts as at least 64 events
    /// (each costs a journal record, shard messages and an ack whatever it
    /// holds). 0: no limit. Default 50,000: a till sends a few a second, a
    /// store gateway thousands; one runaway device cannot take the server
    /// from the others.
    pub max_events_per_s_per_device: u32,
    /// Distinct stores one device may send for while the server holds its
    /// slot (until it is passivated). A batch naming more is refused whole
    /// (`too_many_stores`, kept as a dead letter). Default 16: a till or
    /// sensor belongs to one store, a gateway to a few.
    pub max_stores_per_device: usize,
    /// Distinct terminals one device may sell on (its sales and refunds),
    /// likewise; refused whole as `too_many_terminals`. Default 16.
    pub max_terminals_per_device: usize,
    /// Distinct (store, SKU) pairs one device may name while the server
    /// holds its slot (each new one is an entity a shard keeps); a batch
    /// naming more is refused whole as `too_many_skus`. Default 200,000:
    /// a shelf-sensor gateway counting a large store's whole range; a till
    /// names a few thousand. What it costs to track: ~24 bytes a pair.
    pub max_skus_per_device: usize,
    /// How long a device has, once its handshake is done, to open its
    /// stream, and then again to say Hello. A device does both at once;
    /// the set-up slot it holds meanwhile is one of a few, so a silent
    /// connection must not keep it long (at 10 s, 32 silent connections
    /// held every slot for 20 s). Default 2 s.
    pub hello_timeout: Duration,
    /// A connection silent this long (no packet, not even a keep-alive) is
    /// closed. The server sends a keep-alive at half of it (at most every
    /// 5 s) and tillstream-client after 2 s of silence, so it only ends
    /// connections whose device is gone.
    pub idle_timeout: Duration,
    /// Bytes of frame payload all connections together may hold while
    /// their frames arrive (a frame being read is not yet any shard's
    /// in-flight budget). A reader waits for room before it reads more, so
    /// its device waits on QUIC flow control. Default 256 MiB: thousands
    /// of honest frames (tens of KiB each) at once, while 20,000
    /// connections each dripping a 1 MiB frame could otherwise pin 20 GiB.
    pub max_frame_buffer_bytes: usize,
    /// Longest a device may take to send the rest of a frame it started,
    /// plus what the frame's size needs at 64 KiB/s (time its reader
    /// waited for buffer room not counted); past it the connection is
    /// closed, so a drip cannot hold its share of the buffer budget for
    /// long. Default 10 s (a 1 MiB frame: 26 s).
    pub frame_deadline: Duration,
    /// QUIC receive window of each connection (stream and connection):
    /// the most a connection may have buffered in the server before its
    /// reader takes it. The reader takes bytes as they arrive, so frames
    /// larger than the window pass; what it bounds is a stalled reader's
    /// backlog, times every connection. Default 256 KiB.
    pub quic_window_bytes: u64,
    /// The largest UDP payload the server accepts (QUIC's
    /// `max_udp_payload_size`, which bounds the devices' path MTU
    /// discovery and so what they send). Default
    /// [`DEFAULT_MAX_UDP_PAYLOAD`](tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD),
    /// 65,507, so that only the path bounds a packet; 1472 holds every
    /// packet to a 1500-byte Ethernet frame.
    pub quic_max_udp_payload: u16,
    /// Device and API authentication, revocation, the audit log. Default:
    /// on, tokens signed by `DATA_DIR/auth/signing.key` (made on first
    /// start), client certificates once `tillstream ca init` made a CA.
    pub auth: AuthConfig,
    /// Where the journal and the tables live: the embedded store in the
    /// data directory (default), or a ScyllaDB cluster.
    pub store: StoreChoice,
    /// Faults to inject (tests and incident rehearsals); none by default.
    pub faults: Faults,
    /// Asks the process's allocator to hand the pages freed so far back
    /// to the OS; run after each passivation sweep. The binary that picks
    /// the allocator sets it (`tillstream serve`: mimalloc's `mi_collect`).
    /// Without it an idle server's RSS stays where its busiest moment left
    /// it: mimalloc returns freed pages on later allocator calls, and an
    /// idle server makes none. None by default.
    pub release_memory: Option<fn()>,
    /// RSS past which the server is under memory pressure
    /// (`memory_limit`): freed pages go back to the OS at once instead of
    /// after the allocator's delay, and each shard holds half its
    /// in-flight budget; each connection served raises it by
    /// `memory_limit::CONNECTION_BYTES`. 0 (the default here; `tillstream
    /// serve` sets 320 MiB) turns it off.
    pub memory_soft_limit_bytes: u64,
    /// Switches the process's allocator between returning freed pages
    /// soon (`true`) and after its own delay; set by the binary that picks
    /// the allocator (`tillstream serve`: mimalloc's purge delay). Without
    /// it the soft limit only holds back budget. None by default.
    pub purge_soon: Option<fn(bool)>,
    /// Serve one fleet with other nodes over the same ScyllaDB keyspace
    /// (`cluster`): stores are divided between the live members, devices
    /// are redirected to their store's node, a dead node's stores move.
    /// None (the default): this node serves every store.
    pub cluster: Option<ClusterConfig>,
}

/// How this node takes part in a cluster of tillstream nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The QUIC address devices reach this node at (`host:port`), given
    /// to devices that must be sent here. Default: the bound address,
    /// which must then not be a wildcard.
    pub advertise_quic: Option<String>,
    /// The HTTP address operators reach this node at, shown by
    /// `/v1/cluster`. Default: the bound one.
    pub advertise_http: Option<String>,
}

/// Where the journal and the tables live.
#[derive(Debug, Clone, Default)]
pub enum StoreChoice {
    /// The embedded store in `DATA_DIR/store`: the journal in `wal/`, the
    /// tables on fjall.
    #[default]
    Embedded,
    /// A ScyllaDB cluster holds the journal, the checkpoint and the tables,
    /// so a node keeps nothing local that its data needs: a replacement
    /// started under the same node id resumes from the cluster. The data
    /// directory keeps the TLS certificate, the signing key, the QUIC keys
    /// and the audit log.
    Scylla(ScyllaConfig),
}

/// Shard actors for `cores` cores: half of them, at least one. A shard's
/// apply is about a fifth of the server's CPU per event (perf); the QUIC
/// connections, the session stages, the journal and the table writes need
/// the rest, and a shard actor per core left them none. On 2 cores, one
/// shard beat two in every workload measured (docs/operating/tune.md): the main
/// command, 695 k resident SKUs, 10,000 devices.
pub(crate) fn default_shards(cores: usize) -> u16 {
    u16::try_from(cores / 2).unwrap_or(u16::MAX).max(1)
}

impl ServerConfig {
    /// Defaults over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: data_dir.into(),
            journal_dir: None,
            shards: default_shards(cores),
            http: None,
            flush_interval: Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS),
            flush_max_rows: 1 << 20,
            limits: Limits::default(),
            max_inflight_bytes_per_shard: 32 << 20,
            tls: None,
            drain_timeout: Duration::from_secs(10),
            max_handshakes: 16 * cores,
            handshake_max_wait: Duration::from_secs(4),
            passivate_after: Duration::from_secs(15 * 60),
            max_clock_skew: Duration::from_secs(5 * 60),
            ack_stall_not_ready: Duration::from_secs(10),
            ack_write_deadline: Duration::from_secs(5),
            max_connections: 20_000,
            max_events_per_s_per_device: 50_000,
            max_stores_per_device: 16,
            max_terminals_per_device: 16,
            max_skus_per_device: 200_000,
            hello_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_frame_buffer_bytes: 256 << 20,
            frame_deadline: Duration::from_secs(10),
            quic_window_bytes: 256 << 10,
            quic_max_udp_payload: tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD,
            auth: AuthConfig::default(),
            store: StoreChoice::default(),
            faults: Faults::default(),
            release_memory: None,
            memory_soft_limit_bytes: 0,
            purge_soon: None,
            cluster: None,
        }
    }
}

/// The settings a running server reports (in loadgen reports and /v1/settings).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ServerSettings {
    /// Shard actors.
    pub shards: u16,
    /// Interval of the writes to the tables, milliseconds.
    pub flush_interval_ms: u64,
    /// Rows that start a write to the tables early.
    pub flush_max_rows: usize,
    /// Per-shard in-flight bound, bytes.
    pub max_inflight_bytes_per_shard: usize,
    /// Storage backend.
    pub backend: String,
    /// Most events per batch accepted.
    pub max_events_per_batch: u32,
    /// Most unacknowledged batches per device.
    pub max_inflight_batches: u32,
    /// Idle time after which entities leave memory, seconds.
    #[serde(default)]
    pub passivate_after_s: u64,
    /// How far ahead of the server's clock events may be stamped, seconds.
    #[serde(default)]
    pub max_clock_skew_s: u64,
    /// Device credentials accepted: `token`, `certificate`, both joined by
    /// `+`, or `none` (authentication off).
    #[serde(default)]
    pub auth: String,
    /// Largest UDP payload devices may send, bytes (0 from a server that
    /// predates the setting: 1472 then).
    #[serde(default)]
    pub quic_max_udp_payload: u16,
}

#[cfg(test)]
mod tests {
    use super::default_shards;

    #[test]
    fn half_the_cores_run_shards_and_never_none() {
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(1), 1);
        assert_eq!(default_shards(2), 1);
        assert_eq!(default_shards(3), 1);
        assert_eq!(default_shards(8), 4);
        assert_eq!(default_shards(1 << 20), u16::MAX);
    }
}
