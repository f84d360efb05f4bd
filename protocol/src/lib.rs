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
/// The largest UDP payload a server and a device accept, and the bound of
/// a device's QUIC path MTU discovery, unless configured otherwise: the
/// most one IPv4 datagram carries (65,535 bytes less the IP and UDP
/// headers), so that only the path bounds a packet. Discovery probes up
/// from 1200 and keeps what the path carries: 1472 where the device's
/// own network is 1500-byte Ethernet (1452 over IPv6), 8952 with jumbo
/// frames, and all of it on loopback. A device probes no higher than its
/// own route carries (its interface's MTU); a probe too large for a later
/// hop is a lost probe, not lost data, and discovery ends below it.
/// QUIC's costs per packet (header protection, AEAD set-up, ACKs, one
/// datagram's trip through the kernel) fall with the count: a 128-event
/// batch of about 26 KiB goes in 18 packets of 1472 bytes, 3 of 8952, 1
/// here. On loopback the devices send a third of the packets they sent
/// at 8952 bytes; the server's CPU an event was the same within the
/// noise (README, Benchmarks, 2026-11-28 early morning).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 65_507;
/// The protocol version this build speaks: 2, whose devices follow a
/// [`Redirect`] to the node that serves their store. Frames are otherwise
/// byte for byte those of version 1 (`FORMAT.md`, "Version 2").
pub const PROTOCOL_VERSION: u8 = 2;
/// The oldest version the server still accepts during a rollout: 1, whose
/// devices cannot follow a [`Redirect`] and get a `Reject` with
/// [`ErrorCode::NotOwner`] instead.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// The first version whose devices follow a [`Redirect`]: a server sends
/// one only to a device whose `Hello.version` is at least this.
pub const REDIRECT_VERSION: u8 = 2;
