//! A tillstream device client: connect over QUIC, say `Hello`, send
//! batches, keep what is unacknowledged, reconnect and resend.
//!
//! It is:
//! - [`client_endpoint`]: one QUIC endpoint (one UDP socket) that trusts the
//!   server's certificate, shared by any number of devices, whose
//!   connections start at the path MTU an earlier one found ([`ClientEndpoint`]);
//! - [`DeviceClient`]: one device's session, driven by a background tokio
//!   task that connects, reconnects with exponential backoff and jitter,
//!   resends what the server has not made durable, and reports acks;
//! - [`PreparedBatch`]: a batch encoded into its whole frame ahead of time,
//!   so a load test spends no time encoding once the clock runs;
//! - [`Window`], [`Backoff`] and [`Dialer`]: the bookkeeping (unacknowledged
//!   batches, delays between attempts, the address to dial next), as plain
//!   structs without I/O, tested on their own.
//!
//! It is not:
//! - a generator of events (that is `tillstream-loadgen`);
//! - durable: a device's unacknowledged batches live in memory, so a crash of
//!   the device process loses them (a real till would keep them on disk).
//!
//! The session, over one bidirectional stream per connection: the device
//! writes `Hello`; the server answers `Welcome { durable_seq, limits }` (or
//! `Reject` and closes); the device drops every buffered batch at or below
//! `durable_seq`, resends the rest in seq order, and goes on with new ones.
//! The server answers with cumulative `Ack { durable_seq }` frames and with
//! `Error { code, batch_seq }` frames. A retryable code (busy, draining,
//! store unavailable, not owner) makes the client keep the batch, back off,
//! reconnect and resend; any other code with a `batch_seq` means the server refused
//! that frame for good, so it leaves the resend buffer and is reported as a
//! [`ClientEvent::Refused`]. An `Error` without a `batch_seq` (the server
//! could not read the frame) refers to the oldest batch written on the
//! connection that is neither acknowledged nor refused: the server answers
//! in order and writes owed acks before an error. A `Reject` of `Hello` with
//! a code that is not retryable is fatal for the device.
//!
//! Several nodes may serve one fleet, each store belonging to one node. A
//! device knows some of them, its seeds ([`ClientConfig::server`] and
//! [`ClientConfig::seeds`]), and starts at seed `device % n`. A node that
//! does not serve the device's store answers `Hello` with `Redirect {
//! owner }` (the device speaks protocol version 2): the device resolves
//! the owner and dials it at once, its unacknowledged batches kept as on
//! any reconnect, at most [`MAX_REDIRECTS`] times in a row without a
//! `Welcome`. Past that, or on a `Redirect` without a usable owner, it
//! backs off and tries its next seed; so it does after a connection that
//! fails (refused, handshake or idle timeout) and after a `not_owner`
//! refusal. Other retryable refusals, and a plain disconnect, keep it at
//! the same address after a backoff: the owner that welcomed it. The rules
//! are [`Dialer`]'s; [`ClientStats::redirects`] counts the `Redirect`s.
//!
//! Seqs are per device id: a server that already holds seqs of the device
//! at or above the client's batches (the id was used before) makes the
//! client refuse them as stale ([`ClientError::Stale`],
//! [`ClientEvent::Stale`]) rather than take them as acknowledged, unless
//! [`ClientConfig::replay`] says the client resends an earlier life's
//! batches.
//!
//! Nothing the server sends can make this crate panic: frames are parsed
//! with [`FrameHeader::parse`](tillstream_protocol::FrameHeader::parse), read
//! into an aligned buffer, checked and validated before a field is read.

mod backoff;
mod device;
mod ending;
mod error;
mod events;
mod options;
mod path;
mod prepared;
mod route;
mod session;
mod shared;
mod stats;
mod tls;
mod window;
mod wire;

/// The socket code the server shares (`tillstream-socket`), under the
/// paths the client has always given it.
pub use tillstream_socket::{gso, udp};

pub use backoff::Backoff;
pub use device::DeviceClient;
pub use error::ClientError;
pub use events::{AckEvent, AckedBatch, ClientEvent, RefusedBatch, StaleBatch};
pub use options::EndpointOptions;
pub use path::{ClientEndpoint, client_endpoint, client_endpoint_with};
pub use prepared::PreparedBatch;
pub use route::{Dialer, MAX_REDIRECTS, NextAttempt};
pub use stats::ClientStats;
pub use tls::{DeviceTls, client_tls_with_identity};
pub use window::{Settled, Window};

use std::net::SocketAddr;
use std::time::Duration;

/// How one device connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's QUIC address: the first seed of the device, or its only
    /// one.
    pub server: SocketAddr,
    /// More QUIC addresses of the same cluster (nodes that share one
    /// certificate, [`server_name`](Self::server_name)), after
    /// [`server`](Self::server); empty by default. A device starts at seed
    /// `device % n` and goes to the next one when a node fails it (see
    /// [`Dialer`]). Every seed must be of `server`'s address family: the
    /// endpoint's socket is.
    pub seeds: Vec<SocketAddr>,
    /// The name the server's certificate must carry (default `localhost`);
    /// every node of a cluster, and every owner a `Redirect` names, must
    /// present a certificate for it.
    pub server_name: String,
    /// The device id sent in `Hello`.
    pub device: u64,
    /// A signed device token for `Hello`; empty when the server runs without
    /// token authentication.
    pub token: Vec<u8>,
    /// Most batches kept unacknowledged; the server's `Welcome` may lower it.
    pub max_inflight: usize,
    /// First delay before a reconnect.
    pub backoff_min: Duration,
    /// Longest delay between reconnects.
    pub backoff_max: Duration,
    /// Longest wait for the QUIC handshake, then for the answer to `Hello`,
    /// and for the lookup of a `Redirect`'s owner.
    pub connect_timeout: Duration,
    /// The device's own TLS settings, to present a client certificate
    /// (mutual TLS; see [`client_tls_with_identity`]); `None`: the
    /// endpoint's, with no certificate.
    pub tls: Option<DeviceTls>,
    /// Whether the batches handed to this client may include some that an
    /// earlier life of the device already sent (a device that rebooted and
    /// resends what it kept on disk): then a batch at or below the server's
    /// durable seq is taken as acknowledged. Off (the default), the
    /// client's batches are new, so a durable seq at or above one of them
    /// means the device id was already used with higher seqs on this
    /// server: [`DeviceClient::send`] fails with [`ClientError::Stale`], and
    /// a batch queued before the `Welcome` that told it is refused as
    /// [`ClientEvent::Stale`] instead of being acknowledged unstored.
    pub replay: bool,
}

impl ClientConfig {
    /// Defaults for `device` talking to `server` (its only seed): server
    /// name `localhost`, no token, 64 batches in flight, backoff from 50 ms
    /// to 5 s, a 10 s connect timeout, no replays (see
    /// [`replay`](Self::replay)).
    pub fn new(server: SocketAddr, device: u64) -> Self {
        Self {
            server,
            seeds: Vec::new(),
            server_name: "localhost".to_owned(),
            device,
            token: Vec::new(),
            tls: None,
            max_inflight: 64,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            replay: false,
        }
    }
}
