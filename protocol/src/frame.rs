//! The frame codec: a fixed 16-byte header outside rkyv, then the payload.
//!
//! ```text
//! offset size field
//!      0    4 magic            b"TLST"
//!      4    1 protocol version 1 or 2 (the sender's; see below)
//!      5    1 message type     MsgType
//!      6    2 flags            0 (reserved; non-zero is refused)
//!      8    4 payload length   u32 LE, at most the negotiated maximum
//!     12    4 payload checksum CRC-32 (IEEE) of the payload, u32 LE
//! ```
//!
//! Reading a frame from untrusted bytes is: [`FrameHeader::parse`] the 16
//! bytes (magic, version, type, flags and the length bound are checked before
//! a single payload byte is read), read `len` bytes into a 16-byte aligned
//! buffer, [`FrameHeader::check_payload`] (CRC), then validate the payload
//! as the archived type with [`access`] or [`ValidatedBatch::new`].
//!
//! A frame carries its sender's protocol version. A device writes its own
//! ([`encode`]: [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION)); a server,
//! which accepts
//! [`MIN_PROTOCOL_VERSION`](crate::MIN_PROTOCOL_VERSION)`..=`[`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION),
//! answers a device in the version its `Hello` stated
//! ([`encode_versioned`]), so that a device of an older build, which
//! parses only its own version, can read the answer.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::codes::ErrorCode;
use crate::message::{ArchivedBatch, Batch};

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 16;
/// The frame magic.
pub const MAGIC: [u8; 4] = *b"TLST";
/// Default and hard maximum payload size: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;
/// Alignment of payload buffers; rkyv's archived types need at most this.
pub const PAYLOAD_ALIGN: usize = 16;
/// An aligned buffer a payload is read into.
pub type PayloadBuf = AlignedVec<PAYLOAD_ALIGN>;

/// Message types, the header's byte 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// Device → server, first frame.
    Hello = 1,
    /// Server → device, answer to a good `Hello`.
    Welcome = 2,
    /// Server → device, answer to a refused `Hello`.
    Reject = 3,
    /// Device → server, events.
    Batch = 4,
    /// Server → device, cumulative durable ack.
    Ack = 5,
    /// Server → device, a frame could not be taken.
    Error = 6,
    /// Server → device (version 2 and later), the device's store is served
    /// by another node; the connection then closes.
    Redirect = 7,
}

impl MsgType {
    /// Decodes the header byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => MsgType::Hello,
            2 => MsgType::Welcome,
            3 => MsgType::Reject,
            4 => MsgType::Batch,
            5 => MsgType::Ack,
            6 => MsgType::Error,
            7 => MsgType::Redirect,
            _ => return None,
        })
    }
}

/// Why a frame was refused. Each maps to an [`ErrorCode`] for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header does not start with the magic.
    #[error("bad frame magic {0:02x?}, expected b\"TLST\"")]
    BadMagic([u8; 4]),
    /// Protocol version outside what this build accepts.
    #[error("protocol version {got} is not supported (accepted: {min}..={max})")]
    UnsupportedVersion {
        /// The header's version.
        got: u8,
        /// Oldest accepted.
        min: u8,
        /// Newest accepted.
        max: u8,
    },
    /// Unknown message type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Reserved flag bits set.
    #[error("reserved header flags {0:#06x} must be zero")]
    ReservedFlags(u16),
    /// Payload longer than allowed.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// CRC mismatch.
    #[error("payload checksum {got:#010x} does not match header {expected:#010x}")]
    Checksum {
        /// From the header.
        expected: u32,
        /// Computed.
        got: u32,
    },
    /// The payload is not a valid archive of the expected type.
    #[error("invalid {what} payload: {reason}")]
    Invalid {
        /// The expected message.
        what: &'static str,
        /// What bytecheck said.
        reason: String,
    },
    /// More events than the negotiated maximum.
    #[error("batch holds {count} events, more than the limit of {max}")]
    BatchTooLarge {
        /// Events in it.
        count: usize,
        /// The limit.
        max: u32,
    },
    /// A protocol rule broken inside an otherwise valid payload.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// A resent seq whose batch is not the one stored under it.
    #[error("seq conflict: {0}")]
    SeqConflict(&'static str),
    /// More distinct stores than one device may send for.
    #[error("the batch names stores beyond the {limit} this device may send for")]
    TooManyStores {
        /// Distinct stores a device may send for.
        limit: u32,
    },
    /// More distinct terminals than one device may sell on.
    #[error("the batch names terminals beyond the {limit} this device may sell on")]
    TooManyTerminals {
        /// Distinct terminals a device may sell on.
        limit: u32,
    },
    /// More distinct SKUs than one device may name.
    #[error("the batch names SKUs beyond the {limit} this device may name")]
    TooManySkus {
        /// Distinct (store, SKU) pairs a device may name.
        limit: u32,
    },
}

impl FrameError {
    /// The code sent back in an `Error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic(_) => ErrorCode::BadMagic,
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::UnknownType(_) => ErrorCode::UnknownMessageType,
            FrameError::ReservedFlags(_) => ErrorCode::ProtocolViolation,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Truncated { .. } => ErrorCode::Truncated,
            FrameError::Checksum { .. } => ErrorCode::ChecksumMismatch,
            FrameError::Invalid { .. } => ErrorCode::InvalidPayload,
            FrameError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            FrameError::Violation(_) => ErrorCode::ProtocolViolation,
            FrameError::SeqConflict(_) => ErrorCode::SeqConflict,
            FrameError::TooManyStores { .. } => ErrorCode::TooManyStores,
            FrameError::TooManyTerminals { .. } => ErrorCode::TooManyTerminals,
            FrameError::TooManySkus { .. } => ErrorCode::TooManySkus,
        }
    }

    /// Whether the stream can still be read after this error: true when the
    /// header was sound, so the payload's length is known and was consumed.
    /// After a bad header the byte stream has lost its framing.
    pub fn keeps_framing(&self) -> bool {
        matches!(
            self,
            FrameError::Checksum { .. }
                | FrameError::Invalid { .. }
                | FrameError::BatchTooLarge { .. }
                | FrameError::Violation(_)
                | FrameError::SeqConflict(_)
                | FrameError::TooManyStores { .. }
                | FrameError::TooManyTerminals { .. }
                | FrameError::TooManySkus { .. }
        )
    }
}

/// A parsed, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the frame.
    pub version: u8,
    /// What the payload is.
    pub msg_type: MsgType,
    /// Payload bytes that follow.
    pub len: u32,
    /// CRC-32 of the payload.
    pub checksum: u32,
}

impl FrameHeader {
    /// Parses and checks a header from untrusted bytes. `max_payload` is the
    /// limit for this session (never above [`DEFAULT_MAX_PAYLOAD`]... unless
    /// the caller negotiated more).
    pub fn parse(bytes: &[u8], max_payload: u32) -> Result<Self, FrameError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got: bytes.len(),
            });
        };
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = h[4];
        if !(crate::MIN_PROTOCOL_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
            return Err(FrameError::UnsupportedVersion {
                got: version,
                min: crate::MIN_PROTOCOL_VERSION,
                max: crate::PROTOCOL_VERSION,
            });
        }
        let msg_type = MsgType::from_u8(h[5]).ok_or(FrameError::UnknownType(h[5]))?;
        let flags = u16::from_le_bytes([h[6], h[7]]);
        if flags != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if len > max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: max_payload,
            });
        }
        let checksum = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        Ok(Self {
            version,
            msg_type,
            len,
            checksum,
        })
    }

    /// Checks the payload's length and CRC against this header.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() != self.len as usize {
            return Err(FrameError::Truncated {
                expected: self.len as usize,
                got: payload.len(),
            });
        }
        let got = crc32fast::hash(payload);
        if got != self.checksum {
            return Err(FrameError::Checksum {
                expected: self.checksum,
                got,
            });
        }
        Ok(())
    }

    /// Writes the header for `payload` into `out`, stating this build's
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub fn write(msg_type: MsgType, payload: &[u8], out: &mut Vec<u8>) {
        Self::write_versioned(crate::PROTOCOL_VERSION, msg_type, payload, out);
    }

    /// Writes the header for `payload` into `out`, stating `version` (a
    /// server answering a device of an older version; tests of odd
    /// headers). It writes any `version` it is given: [`encode_versioned`]
    /// checks it.
    pub fn write_versioned(version: u8, msg_type: MsgType, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.push(msg_type as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    }
}

/// A message type that travels in a frame.
pub trait WireMessage:
    Archive + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
where
    Self::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// The header's message type.
    const TYPE: MsgType;
    /// A name for error messages.
    const NAME: &'static str;
}

macro_rules! wire {
    ($t:ty, $m:ident, $n:literal) => {
        impl WireMessage for $t {
            const TYPE: MsgType = MsgType::$m;
            const NAME: &'static str = $n;
        }
    };
}
wire!(crate::Hello, Hello, "Hello");
wire!(crate::Welcome, Welcome, "Welcome");
wire!(crate::Reject, Reject, "Reject");
wire!(Batch, Batch, "Batch");
wire!(crate::Ack, Ack, "Ack");
wire!(crate::Error, Error, "Error");
wire!(crate::Redirect, Redirect, "Redirect");

/// Encodes `msg` as a whole frame (header and payload) appended to `out`,
/// stating this build's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
pub fn encode<M>(msg: &M, out: &mut Vec<u8>) -> Result<(), FrameError>
where
    M: WireMessage,
    M::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    encode_versioned(msg, crate::PROTOCOL_VERSION, out)
}

/// Encodes `msg` as a whole frame appended to `out`, stating `version` in
/// its header: how a server answers a device in the version its `Hello`
/// stated. The payload is the same whatever the version. A version this
/// build does not accept
/// ([`MIN_PROTOCOL_VERSION`](crate::MIN_PROTOCOL_VERSION)`..=`[`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION))
/// is refused as [`FrameError::UnsupportedVersion`], and nothing is
/// appended.
pub fn encode_versioned<M>(msg: &M, version: u8, out: &mut Vec<u8>) -> Result<(), FrameError>
where
    M: WireMessage,
    M::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    if !(crate::MIN_PROTOCOL_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion {
            got: version,
            min: crate::MIN_PROTOCOL_VERSION,
            max: crate::PROTOCOL_VERSION,
        });
    }
    let payload = rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| FrameError::Invalid {
        what: M::NAME,
        reason: e.to_string(),
    })?;
    if payload.len() > DEFAULT_MAX_PAYLOAD as usize {
        return Err(FrameError::TooLarge {
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            max: DEFAULT_MAX_PAYLOAD,
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    FrameHeader::write_versioned(version, M::TYPE, &payload, out);
    out.extend_from_slice(&payload);
    Ok(())
}

/// Encodes `msg` as a new frame.
pub fn encode_to_vec<M>(msg: &M) -> Result<Vec<u8>, FrameError>
where
    M: WireMessage,
    M::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// Encodes `msg` as a new frame stating `version` (see
/// [`encode_versioned`]).
pub fn encode_to_vec_versioned<M>(msg: &M, version: u8) -> Result<Vec<u8>, FrameError>
where
    M: WireMessage,
    M::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let mut out = Vec::new();
    encode_versioned(msg, version, &mut out)?;
    Ok(out)
}

/// Validates an aligned payload as `M`'s archived form and returns it.
pub fn access<M>(payload: &[u8]) -> Result<&M::Archived, FrameError>
where
    M: WireMessage,
    M::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<M::Archived, rancor::Error>(payload).map_err(|e| FrameError::Invalid {
        what: M::NAME,
        reason: e.to_string(),
    })
}

/// Validates and deserializes a small message (Hello, Welcome, Ack, ...).
/// Batches are never deserialized on the server: use [`ValidatedBatch`].
pub fn decode<M>(payload: &[u8]) -> Result<M, FrameError>
where
    M: WireMessage,
    M::Archived: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<M, rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
{
    let archived = access::<M>(payload)?;
    rkyv::deserialize::<M, rancor::Error>(archived).map_err(|e| FrameError::Invalid {
        what: M::NAME,
        reason: e.to_string(),
    })
}

/// Copies `payload` into a fresh aligned buffer (for callers whose bytes
/// are not already aligned, such as tests and fuzzers).
pub fn aligned(payload: &[u8]) -> PayloadBuf {
    let mut buf = PayloadBuf::with_capacity(payload.len());
    buf.extend_from_slice(payload);
    buf
}

/// A batch payload that passed validation once and is now immutable, so
/// the shards it is routed to can read it without copying or validating
/// again. Share it behind an `Arc`.
#[derive(Debug)]
pub struct ValidatedBatch {
    buf: PayloadBuf,
}

impl ValidatedBatch {
    /// Validates `buf` as an archived [`Batch`]: bytecheck, seq ≥ 1, at most
    /// `max_events` events.
    pub fn new(buf: PayloadBuf, max_events: u32) -> Result<Self, FrameError> {
        Self::try_new(buf, max_events).map_err(|(e, _)| e)
    }

    /// As [`ValidatedBatch::new`], but hands the bytes back on failure so the
    /// caller can keep them (as a dead letter).
    pub fn try_new(buf: PayloadBuf, max_events: u32) -> Result<Self, (FrameError, PayloadBuf)> {
        match Self::check(&buf, max_events) {
            Ok(()) => Ok(Self { buf }),
            Err(e) => Err((e, buf)),
        }
    }

    fn check(buf: &[u8], max_events: u32) -> Result<(), FrameError> {
        let batch = access::<Batch>(buf)?;
        let count = batch.events.len();
        if count > max_events as usize {
            return Err(FrameError::BatchTooLarge {
                count,
                max: max_events,
            });
        }
        if batch.seq.to_native() == 0 {
            return Err(FrameError::Violation("batch seq must start at 1"));
        }
        Ok(())
    }

    /// The archived batch.
    #[allow(unsafe_code)]
    pub fn get(&self) -> &ArchivedBatch {
        // SAFETY: `new` validated these exact bytes as an `ArchivedBatch`
        // with bytecheck, and `buf` is private and never mutated after, so
        // the archive is still valid.
        unsafe { rkyv::access_unchecked::<ArchivedBatch>(&self.buf) }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of the payload.
    pub fn payload_len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
