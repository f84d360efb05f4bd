//! The tillstream wire contract.
//!
//! What a device and the server say to each other over a QUIC stream with
//! ALPN `tillstream/1`: a fixed 16-byte [`FrameHeader`] followed by an rkyv
//! payload. `FORMAT.md` beside this crate gives the byte layout.
//!
//! It is:
//! - the message types ([`message`]) and their archived forms;
//! - the frame codec ([`frame`]): encode, parse a header, validate a payload;
//! - the error and rejection codes ([`codes`]).
//!
//! It is not:
//! - I/O of any kind: no sockets, no async runtime (the engine and the
//!   device client drive it);
//! - policy: what the server does with a valid frame lives in the engine.
//!
//! Untrusted bytes are only ever read through [`frame::FrameHeader::parse`]
//! and the `validate_*`/[`frame::ValidatedBatch`] functions, which check the
//! checksum and run bytecheck before a field is touched. No function in this
//! crate panics on input.

pub mod codes;
pub mod frame;
pub mod message;

pub use codes::{ErrorCode, RejectCode};
pub use frame::{FrameError, FrameHeader, MsgType, ValidatedBatch};
pub use message::*;

/// ALPN protocol id negotiated by QUIC.
pub const ALPN: &[u8] = b"tillstream/1";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// The oldest version the server still accepts during a rollout.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
