use std::time::Instant;

use tillstream_protocol::RejectedRef;

/// What a device client reports to whoever listens (see
/// [`DeviceClient::start_with_events`](crate::DeviceClient::start_with_events)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Batches became durable.
    Acked(AckEvent),
    /// The server refused a batch for good; it will not be resent.
    Refused(RefusedBatch),
    /// A queued batch that the server's durable seq already covers though
    /// this client never sent it: the device id was already used with
    /// higher seqs on this server. It is not stored; it will not be sent.
    Stale(StaleBatch),
    /// The server rejected the device's `Hello` for good; the device stopped.
    Fatal {
        /// The device.
        device: u64,
        /// The `Reject` code ([`ErrorCode`](tillstream_protocol::ErrorCode) value).
        code: u16,
        /// The server's sentence.
        reason: String,
    },
}

/// Batches newly covered by a cumulative acknowledgement (an `Ack`, or the
/// `durable_seq` of a `Welcome` after a reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEvent {
    /// The device.
    pub device: u64,
    /// The cumulative durable seq the server announced.
    pub durable_seq: u64,
    /// When the acknowledgement was read.
    pub at: Instant,
    /// The batches it took out of the resend buffer, in seq order.
    pub batches: Vec<AckedBatch>,
    /// Events of these batches the server refused on semantic grounds (they
    /// are durable, in `rejected_events`).
    pub rejected: Vec<RejectedRef>,
}

impl AckEvent {
    /// Events in the newly acknowledged batches.
    pub fn events(&self) -> u64 {
        self.batches.iter().map(|b| u64::from(b.events)).sum()
    }
}

/// One batch that became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedBatch {
    /// Its seq.
    pub seq: u64,
    /// Events in it.
    pub events: u32,
    /// When it was first written to a stream (None if it never was: the
    /// server already had it from an earlier life of the device, which only
    /// a client with [`ClientConfig::replay`](crate::ClientConfig::replay)
    /// takes as acknowledged).
    pub first_sent: Option<Instant>,
}

/// A batch the server refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBatch {
    /// The device.
    pub device: u64,
    /// Its seq.
    pub seq: u64,
    /// Events in it.
    pub events: u32,
    /// The `Error` code ([`ErrorCode`](tillstream_protocol::ErrorCode) value).
    pub code: u16,
    /// The server's sentence.
    pub reason: String,
    /// When the refusal was read.
    pub at: Instant,
}

/// A batch refused as stale: the server holds the device's seqs up to
/// `durable`, at or above this one, from an earlier user of the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleBatch {
    /// The device.
    pub device: u64,
    /// Its seq.
    pub seq: u64,
    /// Events in it.
    pub events: u32,
    /// The server's durable seq for the device.
    pub durable: u64,
    /// When the watermark that covers it was read.
    pub at: Instant,
}
