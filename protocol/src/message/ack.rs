use rkyv::{Archive, Deserialize, Serialize};

/// Cumulative acknowledgement: every batch of this device with a seq at or
/// below `durable_seq` is durable.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Ack {
    /// Highest durable batch seq.
    pub durable_seq: u64,
    /// Events of the acknowledged batches that were refused on semantic
    /// grounds (and stored in `rejected_events`). Usually empty.
    pub rejected: Vec<RejectedRef>,
}

/// One event refused on semantic grounds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RejectedRef {
    /// The batch it came in.
    pub seq: u64,
    /// Its index in the batch.
    pub idx: u32,
    /// A [`RejectCode`](crate::RejectCode) value.
    pub code: u16,
}
