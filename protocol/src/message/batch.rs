use rkyv::{Archive, Deserialize, Serialize};

use super::Event;

/// A batch of events from one device. Seqs start at 1 and grow by one per
/// batch; a batch is resent with the same seq and the same events.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Batch {
    /// The batch's sequence number, unique per device, from 1.
    pub seq: u64,
    /// When the device built it (UTC µs); for latency figures only.
    pub sent_at_us: i64,
    /// The events, in the device's order.
    pub events: Vec<Event>,
}
