//! Message types, one file per kind (as scylla-cql does).
//!
//! Every type derives rkyv's `Archive` with bytecheck, so its archived form
//! (`ArchivedX`) can be validated in place and read without a copy. Wire
//! types stay flat: fixed-size fields, `Vec`s and `Option`s; no maps, no
//! `Rc`/`Arc`, no trait objects.
//!
//! Conventions: money is integer minor units with an ISO-4217 currency code;
//! times are UTC microseconds since the Unix epoch; identifiers are
//! fixed-size integers or 16-byte ids.

mod ack;
mod batch;
mod error;
mod event;
mod hello;
mod redirect;
mod reject;
mod welcome;

pub use ack::{Ack, ArchivedAck, ArchivedRejectedRef, RejectedRef};
pub use batch::{ArchivedBatch, Batch};
pub use error::{ArchivedError, Error};
pub use event::*;
pub use hello::{ArchivedHello, Hello};
pub use redirect::{ArchivedRedirect, Redirect};
pub use reject::{ArchivedReject, Reject};
pub use welcome::{ArchivedLimits, ArchivedWelcome, Limits, Welcome};

/// A device (a till or a shelf sensor).
pub type DeviceId = u64;
/// A store (a shop of the chain).
pub type StoreId = u32;
/// A stock-keeping unit.
pub type Sku = u64;
/// A 16-byte transaction id (a UUID's bytes, typically).
pub type TxnId = [u8; 16];
/// An ISO-4217 currency code, as ASCII bytes (`*b"GBP"`).
pub type Currency = [u8; 3];
