use rkyv::{Archive, Deserialize, Serialize};

/// The server refuses a `Hello`; the connection closes after it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Reject {
    /// An [`ErrorCode`](crate::ErrorCode) value.
    pub code: u16,
    /// A sentence for the device's operator.
    pub reason: String,
}
