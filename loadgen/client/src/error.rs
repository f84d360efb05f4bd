use tillstream_protocol::{ErrorCode, FrameError};

/// Errors of the device client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A batch could not be encoded into a frame.
    #[error("cannot encode batch {seq}: {source}")]
    Encode {
        /// The batch's seq.
        seq: u64,
        /// What the codec said.
        #[source]
        source: FrameError,
    },
    /// The certificate to trust or the TLS configuration is unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The client's UDP socket could not be created.
    #[error("cannot create the client UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The server refused the device's `Hello` for good (bad credentials,
    /// unsupported version, ...). The device stops.
    #[error("server rejected device {device}: {} ({reason})", code_name(*.code))]
    Rejected {
        /// The device.
        device: u64,
        /// The `Reject` code ([`ErrorCode`] value).
        code: u16,
        /// The server's sentence.
        reason: String,
    },
    /// The server refused this batch for good (it was dead-lettered).
    #[error("server refused batch {seq}: {} ({reason})", code_name(*.code))]
    Refused {
        /// The batch.
        seq: u64,
        /// The `Error` code ([`ErrorCode`] value).
        code: u16,
        /// The server's sentence.
        reason: String,
    },
    /// Batches must be sent with strictly increasing seqs.
    #[error("batch seq {seq} is not above the last queued seq {last}; seqs must grow")]
    OutOfOrder {
        /// The refused seq.
        seq: u64,
        /// The last seq queued.
        last: u64,
    },
    /// The server already holds this device's batches up to `durable`, at
    /// or above this seq: the device id was already used with higher seqs
    /// on this server (an earlier run, another device), and the batch would
    /// be acknowledged as a duplicate without being stored. Use a fresh
    /// device id (or [`ClientConfig::replay`](crate::ClientConfig::replay)
    /// when the client really resends what an earlier life of this device
    /// already sent).
    #[error(
        "batch seq {seq} is at or below seq {durable}, which the server already holds for this \
         device id: the id was already used with higher seqs on this server; use a fresh device id"
    )]
    Stale {
        /// The refused seq.
        seq: u64,
        /// The server's durable seq for the device.
        durable: u64,
    },
    /// Batch seqs start at 1.
    #[error("batch seq 0 is not allowed; seqs start at 1")]
    ZeroSeq,
    /// The wait for an acknowledgement ran out.
    #[error("timed out waiting for batch {seq} to be acknowledged (durable: {durable})")]
    Timeout {
        /// The awaited seq.
        seq: u64,
        /// The durable seq when the wait ended.
        durable: u64,
    },
    /// The client was closed.
    #[error("the device client is closed")]
    Closed,
}

/// The name of a wire code, or its number when this build does not know it.
pub(crate) fn code_name(code: u16) -> String {
    ErrorCode::from_u16(code).map_or_else(|| format!("code {code}"), |c| c.name().to_owned())
}
