//! What a client endpoint's connections learn of their path to a server:
//! the largest UDP payload it carries, so that the next connection over
//! the same socket to the same server starts there instead of searching
//! again.
//!
//! Why: path MTU discovery (on by default, up to 65,507 bytes) sends a
//! connection's probes one after the other, nine of them from 1,200
//! bytes up when the path carries jumbo frames (a data centre's
//! network) and twelve on loopback, all but the payload PADDING, which the server's
//! QUIC stack reads a byte at a time. With 10,000 devices connecting
//! over loopback that was 0.86 ms of the server's CPU a connection, more
//! than the handshake itself: 13.8 CPU-seconds to connect the fleet
//! where devices limited to 1,472 bytes took 5.2. A path's MTU is the
//! socket's and the server's, not the device's, so every device sharing
//! an endpoint (the loadgen's fleet, a gateway) and every reconnect of one
//! device (after a server restart) reuses what the first connection found,
//! as the kernel keeps a route's MTU for every socket to it.
//!
//! A fleet's first connections to a server start together, before any
//! has found anything: the first one scouts the path, and the others wait
//! up to [`SCOUT_WAIT`] (by default) for what it finds before they dial. Without the
//! wait, the loadgen's 100 devices sent 900 probes at every start, 4% of
//! the server's CPU over a million-event run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::gso::GsoCapped;
use crate::tls::DeviceTls;

/// How long, by default, a connection to a server no connection has
/// found the path MTU of waits for the one finding it (the scout;
/// `EndpointOptions::scout_wait`). On loopback or a LAN
/// the scout's handshake and first sample take ~25 ms; where they take
/// longer (a far server, one that is down), the waiting ones search for
/// themselves, as they would without a scout, at most this much later.
pub(crate) const SCOUT_WAIT: Duration = Duration::from_millis(250);

/// What the connections of an endpoint found, per server.
#[derive(Debug, Default)]
struct Paths {
    mtus: HashMap<SocketAddr, u16>,
    /// Servers a connection is finding the path MTU of, and since when.
    scouts: HashMap<SocketAddr, Instant>,
}

#[derive(Debug, Default)]
struct PathBook {
    paths: Mutex<Paths>,
    /// Woken at every path MTU learned.
    learned: Notify,
}

impl PathBook {
    fn lock(&self) -> MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client QUIC endpoint (one UDP socket), its devices' default TLS
/// settings, and the path MTU its connections found to each server.
/// Cheap to clone: clones share the socket and what was learned. It
/// derefs to the [`quinn::Endpoint`] for anything else.
#[derive(Debug, Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    default_tls: DeviceTls,
    book: Arc<PathBook>,
    /// The endpoint's socket, whose GSO batches follow the path MTU
    /// learned (`crate::gso`).
    socket: Arc<GsoCapped>,
    /// How long a connection waits for the scout's path MTU.
    scout_wait: Duration,
}

impl ClientEndpoint {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        default_tls: DeviceTls,
        socket: Arc<GsoCapped>,
        scout_wait: Duration,
    ) -> Self {
        Self {
            endpoint,
            default_tls,
            book: Arc::default(),
            socket,
            scout_wait,
        }
    }

    /// The quinn endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The UDP payload size the last connection to `server` reached, if
    /// one did.
    pub fn path_mtu(&self, server: SocketAddr) -> Option<u16> {
        self.book.lock().mtus.get(&server).copied()
    }

    /// Starts a connection to `server` with `tls` (the endpoint's default
    /// if `None`), at the path MTU learned so far, or once the scout has
    /// learned it (see `EndpointOptions::scout_wait`).
    pub(crate) async fn dial(
        &self,
        tls: Option<&DeviceTls>,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connecting, quinn::ConnectError> {
        let mtu = self.path_mtu_or_scout(server).await;
        let route = crate::udp::route_payload(server);
        if route.is_none() {
            tracing::debug!(%server, "the kernel does not say what the route carries: discovery keeps to quinn's own bound");
        }
        let config = tls.unwrap_or(&self.default_tls).quinn_config_at(mtu, route);
        self.endpoint.connect_with(config, server, server_name)
    }

    /// The path MTU learned for `server`. If none is and a scout has been
    /// finding it for less than the scout wait, waits for it until then;
    /// if there is no scout, the caller becomes it (and gets `None`).
    async fn path_mtu_or_scout(&self, server: SocketAddr) -> Option<u16> {
        loop {
            // Enabled before the check, so a learn between the two wakes it.
            let learned = self.book.learned.notified();
            let mut learned = std::pin::pin!(learned);
            learned.as_mut().enable();
            let until = {
                let mut paths = self.book.lock();
                if let Some(&mtu) = paths.mtus.get(&server) {
                    return Some(mtu);
                }
                let now = Instant::now();
                match paths.scouts.get(&server) {
                    Some(&since) if now < since + self.scout_wait => since + self.scout_wait,
                    _ => {
                        paths.scouts.insert(server, now);
                        return None;
                    }
                }
            };
            if tokio::time::timeout_at(until, learned).await.is_err() {
                return None;
            }
        }
    }

    /// Records the UDP payload size `conn` (to `server`) reaches now. The
    /// latest wins, not the largest: after quinn lowered it (a black hole)
    /// the next connection should not start above the path again.
    /// The socket's GSO batches are sized for the largest of the servers'
    /// latest path MTUs, so that no connection's batch passes one datagram.
    pub(crate) fn learn(&self, server: SocketAddr, mtu: u16) {
        {
            let mut paths = self.book.lock();
            paths.mtus.insert(server, mtu);
            paths.scouts.remove(&server);
            let largest = paths.mtus.values().copied().max().unwrap_or(mtu);
            self.socket.fit_packets_of(largest);
        }
        self.book.learned.notify_waiters();
    }
}

impl Deref for ClientEndpoint {
    type Target = quinn::Endpoint;

    fn deref(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use quinn::AsyncUdpSocket;

    use super::*;

    /// What a connection learns of its path sizes the endpoint's GSO
    /// batches: the largest path MTU known of any server, and only until
    /// a smaller one is learned for that same server.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_learned_path_mtu_sizes_the_sockets_batches() -> anyhow::Result<()> {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let a: SocketAddr = ([127, 0, 0, 1], 7400).into();
        let b: SocketAddr = ([127, 0, 0, 1], 7500).into();
        let endpoint = crate::client_endpoint(ca.cert.pem().as_bytes(), a)?;
        let segments = || endpoint.socket.max_transmit_segments();
        assert_eq!(segments(), 1, "a packet of up to 65,507 bytes a send");
        endpoint.learn(a, 1472);
        assert_eq!(segments(), 44, "no UDP segmentation offload here?");
        endpoint.learn(b, 8952);
        assert_eq!(segments(), 7, "sized for the larger of the two paths");
        endpoint.learn(b, 1452);
        assert_eq!(segments(), 44, "the latest MTU of a server counts");
        Ok(())
    }
}
