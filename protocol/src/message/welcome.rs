use rkyv::{Archive, Deserialize, Serialize};

/// The server's answer to a valid `Hello`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Welcome {
    /// The highest batch seq of this device that is durable. The device
    /// drops everything at or below it and resends the rest in order.
    pub durable_seq: u64,
    /// What this server accepts on this session.
    pub limits: Limits,
}

/// Limits a device must respect for the session.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Limits {
    /// Largest payload of a frame, in bytes.
    pub max_frame_bytes: u32,
    /// Most events in one batch.
    pub max_events_per_batch: u32,
    /// Most batches sent and not yet acknowledged.
    pub max_inflight_batches: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: crate::frame::DEFAULT_MAX_PAYLOAD,
            max_events_per_batch: 4096,
            max_inflight_batches: 64,
        }
    }
}
