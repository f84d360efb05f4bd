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
//! up to [`EndpointOptions::scout_wait`] (250 ms by default) for what it
//! finds before they dial. Without the wait, the loadgen's 100 devices sent
//! 900 probes at every start, 4% of the server's CPU over a million-event
//! run.
//!
//! The endpoint is made here too ([`client_endpoint`]): the endpoint owns
//! its socket and its devices' default TLS settings (`tls`), so it is built
//! where it is defined and `tls` needs nothing of it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::gso::GsoCapped;
use crate::tls::{DeviceTls, device_tls};
use crate::{ClientError, EndpointOptions};

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

/// A client QUIC endpoint that trusts the certificates in `ca_pem` (PEM, one
/// or more) and speaks ALPN `tillstream/1` over TLS 1.3 with ring, 0-RTT
/// off. It binds one UDP socket of `server`'s address family on an
/// ephemeral port, shared by every device connected through it, with
/// socket buffers of several MiB where the OS allows. Transport settings are
/// [`EndpointOptions::default`].
///
/// Must be called inside a tokio runtime (the endpoint's driver is spawned
/// on it).
pub fn client_endpoint(ca_pem: &[u8], server: SocketAddr) -> Result<ClientEndpoint, ClientError> {
    client_endpoint_with(ca_pem, server, &EndpointOptions::default())
}

/// [`client_endpoint`] with explicit transport settings.
pub fn client_endpoint_with(
    ca_pem: &[u8],
    server: SocketAddr,
    opts: &EndpointOptions,
) -> Result<ClientEndpoint, ClientError> {
    let tls = device_tls(ca_pem, opts, None)?;
    let socket = bind(server, opts.socket_buffer_bytes).map_err(ClientError::Socket)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(opts.max_udp_payload)
        .map_err(|e| {
            ClientError::Tls(format!(
                "QUIC max UDP payload {}: {e} (allowed: 1200 to 65527)",
                opts.max_udp_payload
            ))
        })?;
    // Until a connection has found the path MTU, batches are sized for
    // the largest packet there may be (`ClientEndpoint::learn` resizes them).
    let socket = crate::gso::quic_socket(socket, opts.max_udp_payload, &*runtime)
        .map_err(ClientError::Socket)?;
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, None, socket.clone(), runtime)
            .map_err(ClientError::Socket)?;
    // For a plain `connect` to the server the endpoint was made for,
    // discovery bounded by that server's route, as a device's dial is.
    endpoint
        .set_default_client_config(tls.quinn_config_at(None, crate::udp::route_payload(server)));
    Ok(ClientEndpoint::new(endpoint, tls, socket, opts.scout_wait))
}

/// Binds a UDP socket of `server`'s family on an ephemeral port, with
/// large buffers where the kernel allows (`crate::udp`; a smaller one only
/// costs speed, so it is logged, not refused).
fn bind(server: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let (socket, buffers) = crate::udp::bind(crate::udp::any_port_for(server), buffer)?;
    if buffers.recv_short() {
        tracing::debug!(?buffers, "the UDP receive buffer is smaller than asked for");
    }
    Ok(socket)
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

    #[tokio::test]
    async fn refuses_pem_without_certificates() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        assert!(matches!(
            client_endpoint(b"not a pem", addr),
            Err(ClientError::Tls(_))
        ));
    }

    /// What a connection learns of its path sizes the endpoint's GSO
    /// batches: the largest path MTU known of any server, and only until
    /// a smaller one is learned for that same server.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_learned_path_mtu_sizes_the_sockets_batches() -> anyhow::Result<()> {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let a: SocketAddr = ([127, 0, 0, 1], 7400).into();
        let b: SocketAddr = ([127, 0, 0, 1], 7500).into();
        let endpoint = client_endpoint(ca.cert.pem().as_bytes(), a)?;
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
