//! What a client endpoint's connections learn of their path to a server:
//! the largest UDP payload it carries, so that the next connection over
//! the same socket to the same server starts there instead of searching
//! again.
//!
//! Why: path MTU discovery (on by default, up to 8,952 bytes) sends a
//! connection's probes one after the other, nine of them from 1,200
//! bytes up when the path carries jumbo frames (loopback, a data
//! centre's network), all but the payload PADDING, which the server's
//! QUIC stack reads a byte at a time. With 10,000 devices connecting
//! over loopback that was 0.86 ms of the server's CPU a connection, more
//! than the handshake itself: 13.8 CPU-seconds to connect the fleet
//! where devices limited to 1,472 bytes took 5.2. A path's MTU is the
//! socket's and the server's, not the device's, so every device sharing
//! an endpoint (the loadgen's fleet, a gateway) and every reconnect of one
//! device (after a server restart) reuses what the first connection found,
//! as the kernel keeps a route's MTU for every socket to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use crate::tls::DeviceTls;

/// A client QUIC endpoint (one UDP socket), its devices' default TLS
/// settings, and the path MTU its connections found to each server.
/// Cheap to clone: clones share the socket and what was learned. It
/// derefs to the [`quinn::Endpoint`] for anything else.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    default_tls: DeviceTls,
    mtus: Arc<Mutex<HashMap<SocketAddr, u16>>>,
}

impl ClientEndpoint {
    pub(crate) fn new(endpoint: quinn::Endpoint, default_tls: DeviceTls) -> Self {
        Self {
            endpoint,
            default_tls,
            mtus: Arc::default(),
        }
    }

    /// The quinn endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The UDP payload size the last connection to `server` reached, if
    /// one did.
    pub fn path_mtu(&self, server: SocketAddr) -> Option<u16> {
        self.mtus
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&server)
            .copied()
    }

    /// Starts a connection to `server` with `tls` (the endpoint's default
    /// if `None`), at the path MTU learned so far.
    pub(crate) fn dial(
        &self,
        tls: Option<&DeviceTls>,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connecting, quinn::ConnectError> {
        let config = tls
            .unwrap_or(&self.default_tls)
            .quinn_config_at(self.path_mtu(server));
        self.endpoint.connect_with(config, server, server_name)
    }

    /// Records the UDP payload size `conn` (to `server`) reaches now. The
    /// latest wins, not the largest: after quinn lowered it (a black hole)
    /// the next connection should not start above the path again.
    pub(crate) fn learn(&self, server: SocketAddr, mtu: u16) {
        self.mtus
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(server, mtu);
    }
}

impl Deref for ClientEndpoint {
    type Target = quinn::Endpoint;

    fn deref(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}
