//! A tillstream device client: connect over QUIC, say `Hello`, send
//! batches, keep what is unacknowledged, reconnect and resend.
//!
//! It is:
//! - [`client_endpoint`]: one QUIC endpoint (one UDP socket) that trusts the
//!   server's certificate, shared by any number of devices;
//! - [`DeviceClient`]: one device's session, driven by a background tokio
//!   task that connects, reconnects with exponential backoff and jitter,
//!   resends what the server has not made durable, and reports acks;
//! - [`PreparedBatch`]: a batch encoded into its whole frame ahead of time,
//!   so a load test spends no time encoding once the clock runs;
//! - [`Window`] and [`Backoff`]: the bookkeeping, as plain structs without
//!   I/O, tested on their own.
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
//! store unavailable) makes the client keep the batch, back off, reconnect
//! and resend; any other code with a `batch_seq` means the server refused
//! that frame for good, so it leaves the resend buffer and is reported as a
//! [`ClientEvent::Refused`]. A `Reject` of `Hello` with a code that is not
//! retryable is fatal for the device.
//!
//! Nothing the server sends can make this crate panic: frames are parsed
//! with [`FrameHeader::parse`](tillstream_protocol::FrameHeader::parse), read
//! into an aligned buffer, checked and validated before a field is read.

mod backoff;
mod device;
mod error;
mod events;
mod prepared;
mod session;
mod stats;
mod tls;
mod window;
mod wire;

pub use backoff::Backoff;
pub use device::DeviceClient;
pub use error::ClientError;
pub use events::{AckEvent, AckedBatch, ClientEvent, RefusedBatch};
pub use prepared::PreparedBatch;
pub use stats::ClientStats;
pub use tls::{EndpointOptions, client_endpoint, client_endpoint_with};
pub use window::Window;

use std::net::SocketAddr;
use std::time::Duration;

/// How one device connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's QUIC address.
    pub server: SocketAddr,
    /// The name the server's certificate must carry (default `localhost`).
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
    /// Longest wait for the QUIC handshake, and then for the answer to
    /// `Hello`.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for `device` talking to `server`: server name `localhost`,
    /// no token, 64 batches in flight, backoff from 50 ms to 5 s, a 10 s
    /// connect timeout.
    pub fn new(server: SocketAddr, device: u64) -> Self {
        Self {
            server,
            server_name: "localhost".to_owned(),
            device,
            token: Vec::new(),
            max_inflight: 64,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
