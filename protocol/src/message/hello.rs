use rkyv::{Archive, Deserialize, Serialize};

/// First message of a session, device to server.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The protocol version the device speaks (also in every frame header).
    pub version: u8,
    /// Who the device says it is; proven by `token` or its client certificate.
    pub device: u64,
    /// A signed device token, or empty when the device uses mutual TLS or the
    /// server runs without authentication (development).
    pub token: Vec<u8>,
}
