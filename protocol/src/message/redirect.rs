use rkyv::{Archive, Deserialize, Serialize};

/// The server does not serve the device's store: another node does. Sent
/// in answer to `Hello` instead of `Welcome`, and only to a device whose `Hello.version` is at least
/// [`REDIRECT_VERSION`](crate::REDIRECT_VERSION); a version-1 device gets
/// `Reject` with [`ErrorCode::NotOwner`](crate::ErrorCode::NotOwner)
/// instead. The connection closes after it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Redirect {
    /// The device's store.
    pub store: u32,
    /// The store's ownership epoch as the sending node knows it; 0 when it
    /// knows none.
    pub epoch: u64,
    /// The QUIC address (`host:port`) of the node that serves the store,
    /// as that node advertises it (a DNS name, in Kubernetes); empty when
    /// no live node holds the store yet: the device backs off and tries
    /// another of its seeds.
    pub owner: String,
}
