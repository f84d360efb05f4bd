use rkyv::{Archive, Deserialize, Serialize};

/// The server could not take a frame. The session goes on unless the code
/// is `TooManyErrors`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Error {
    /// An [`ErrorCode`](crate::ErrorCode) value.
    pub code: u16,
    /// The batch it concerns, or 0 when the frame could not be read that far.
    pub batch_seq: u64,
    /// A sentence for the device's operator.
    pub reason: String,
}
