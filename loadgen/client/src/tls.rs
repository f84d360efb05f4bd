//! A device's TLS settings and the QUIC transport of each of its
//! connections ([`DeviceTls`]).

use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tillstream_protocol::ALPN;

use crate::gso::MIN_MTU;
use crate::{ClientError, EndpointOptions};

/// The TLS settings of one device that proves who it is with a client
/// certificate (PEM chain and PKCS#8 key, as `tillstream ca issue` writes
/// them); put it in [`ClientConfig::tls`](crate::ClientConfig::tls).
pub fn client_tls_with_identity(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    opts: &EndpointOptions,
) -> Result<DeviceTls, ClientError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("cannot read the device certificate: {e}")))?;
    if chain.is_empty() {
        return Err(ClientError::Tls(
            "the device certificate PEM holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ClientError::Tls(format!("cannot read the device key: {e}")))?;
    device_tls(ca_pem, opts, Some((chain, key)))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// quinn's default bound of path MTU discovery: a 1500-byte Ethernet
/// frame less the IPv6 and UDP headers.
const QUINN_PROBE_BOUND: u16 = 1452;

/// Ack-eliciting packets the server may receive before it must ACK.
const ACK_PACKET_THRESHOLD: u32 = 10;

/// The congestion window a connection starts with: one packet more than
/// [`ACK_PACKET_THRESHOLD`], of the size the connection starts at (never
/// under quinn's, RFC 9002's ten packets of 1,200 bytes, since a
/// connection starts at 1,200 bytes or more), and room for path MTU
/// discovery's probes where it will probe (`start_mtu` under
/// `probe_bound`).
///
/// The server holds an ACK back while fewer packets than the threshold
/// came in, for up to its max_ack_delay (quinn's 25 ms). A device that
/// filled its window with fewer packets than that would wait that long
/// before it could send the rest of its batch; a window of more packets
/// gets its ACK at once. Where an earlier connection found jumbo packets
/// (8,952 bytes), quinn's 12,000-byte window is a packet and a third,
/// less than half a 128-event batch (~26 KiB). A connection that
/// starts at 1,200 bytes gets 11 of them, 13,200 bytes.
///
/// The probes' room: quinn counts a probe in flight like data, sends the
/// next packet only if a whole one of the size found so far fits beside
/// what is in flight, and sends probes without asking the window. A
/// probe (up to `probe_bound`) with a packet of the size found so far
/// (under it) takes up to twice the bound; without that room, a probe
/// larger than what the window has free held back every batch until it
/// was acknowledged, or declared lost a probe timeout later. On a fresh
/// loopback connection the first probe is 33,353 bytes against 13,200:
/// through a relay with 5% loss and 100 ms of delay, devices' Hellos
/// missed the server's 2 s deadline and one device did not get through in
/// 10 s. The room is the bound's, which the route keeps to what can leave
/// the device (`crate::udp::route_payload`): 2,944 bytes more on a
/// 1500-byte path. It is there at the start only: after a loss, Cubic's
/// window (70% of what it was, at least two packets of the size found so
/// far) can again be short of a probe beside a packet mid-search, and a
/// batch then waits a round trip, or a probe timeout if the probe is lost.
fn initial_window(start_mtu: u16, probe_bound: u16) -> u64 {
    let packets = u64::from(ACK_PACKET_THRESHOLD + 1) * u64::from(start_mtu.max(MIN_MTU));
    let probes = if start_mtu < probe_bound {
        2 * u64::from(probe_bound)
    } else {
        0
    };
    packets + probes
}

/// A device's QUIC client settings: its TLS (which certificates it
/// trusts, and its own if it has one) and transport options. Each
/// connection gets a transport of its own from them
/// ([`DeviceTls::quinn_config`]), so that it can start at the path MTU
/// an earlier connection found (`path`).
#[derive(Clone)]
pub struct DeviceTls {
    crypto: Arc<QuicClientConfig>,
    opts: EndpointOptions,
    idle: quinn::IdleTimeout,
}

impl std::fmt::Debug for DeviceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTls")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The TLS settings of a device that trusts the certificates in `ca_pem`,
/// presenting `identity` if it has one.
pub(crate) fn device_tls(
    ca_pem: &[u8],
    opts: &EndpointOptions,
    identity: Option<Identity>,
) -> Result<DeviceTls, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // PEM through rustls-pki-types: rustls-pemfile is unmaintained.
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("cannot read the CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "the CA PEM holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM with SHA-256 first, as the server prefers: SHA-384 has no
    // CPU instructions on common x86 and dominates a handshake's hashing.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match identity {
        None => tls.with_no_client_auth(),
        Some((chain, key)) => tls
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::Tls(format!("the device certificate and key: {e}")))?,
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT data can be replayed by an attacker: never send it.
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let idle = quinn::IdleTimeout::try_from(opts.idle_timeout)
        .map_err(|e| ClientError::Tls(format!("idle timeout: {e}")))?;
    Ok(DeviceTls {
        crypto: Arc::new(crypto),
        opts: *opts,
        idle,
    })
}

impl DeviceTls {
    /// The quinn settings of a connection that starts at QUIC's smallest
    /// UDP payload (for connecting without a [`DeviceClient`](crate::DeviceClient)),
    /// its discovery kept to quinn's 1,452 bytes since no route is known.
    pub fn quinn_config(&self) -> quinn::ClientConfig {
        self.quinn_config_at(None, None)
    }

    /// The quinn settings of one connection; `initial_mtu`: the UDP
    /// payload size it starts at, if an earlier connection over the same
    /// path found it (at least 1200, as quinn requires); `route_payload`:
    /// the largest the device's route to the server carries, if known
    /// ([`crate::udp::route_payload`]), which bounds discovery below the
    /// endpoint's own `max_udp_payload`.
    pub(crate) fn quinn_config_at(
        &self,
        initial_mtu: Option<u16>,
        route_payload: Option<u16>,
    ) -> quinn::ClientConfig {
        let opts = &self.opts;
        let mut transport = quinn::TransportConfig::default();
        // A zero idle timeout is none, and a zero keep-alive would ping
        // without pause: then the interval stays as it is.
        let keep_alive = if opts.idle_timeout.is_zero() {
            opts.keep_alive
        } else {
            opts.keep_alive.min(opts.idle_timeout / 2)
        };
        transport.keep_alive_interval(Some(keep_alive));
        if let Some(window) = opts.stream_receive_window {
            transport.stream_receive_window(window.into());
        }
        transport.max_idle_timeout(Some(self.idle));
        // A device mostly sends. By default the server acknowledges every
        // second packet, and each ACK is a packet both sides build, encrypt,
        // send and process; asking for one ACK per ACK_PACKET_THRESHOLD
        // packets (QUIC ACK frequency extension, which quinn speaks on both
        // sides) cuts that work at no cost to loss recovery, which still
        // acts on the reordering threshold and the ack delay. The delay is
        // the server's own (25 ms): under load its Ack message leaves
        // within it and carries the ACK, one packet a batch where the 2 ms
        // once asked for here sent a bare ACK first (ARCHITECTURE.md, "One
        // event, device to disk"). The price is a probe timeout 23 ms
        // longer after a lost tail packet. `initial_window` keeps a device
        // from waiting on a held-back ACK.
        let mut ack_frequency = quinn::AckFrequencyConfig::default();
        ack_frequency.ack_eliciting_threshold(ACK_PACKET_THRESHOLD.into());
        transport.ack_frequency_config(Some(ack_frequency));
        // Batches are tens of KiB: where the path carries larger packets,
        // fewer of them cost less on both sides (DEFAULT_MAX_UDP_PAYLOAD).
        // Where the route is not known (not Linux), discovery keeps to
        // quinn's own bound, a 1500-byte Ethernet frame's: the first
        // window's room for probes (`initial_window`) is then 2,904
        // bytes, not 131 KB on a network that may not carry them.
        let probe_bound = route_payload
            .unwrap_or(QUINN_PROBE_BOUND)
            .min(opts.max_udp_payload)
            .max(MIN_MTU);
        let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
        mtu_discovery.upper_bound(probe_bound);
        transport.mtu_discovery_config(Some(mtu_discovery));
        // Starting where the last connection ended, discovery has nothing
        // left to probe (`path`); a path that carries less now loses the
        // big packets, and quinn's black hole detection falls back to
        // 1200 and searches again.
        let start_mtu = initial_mtu.map_or(MIN_MTU, |mtu| mtu.min(probe_bound).max(MIN_MTU));
        transport.initial_mtu(start_mtu);
        let mut congestion = quinn::congestion::CubicConfig::default();
        congestion.initial_window(initial_window(start_mtu, probe_bound));
        transport.congestion_controller_factory(Arc::new(congestion));
        let mut client = quinn::ClientConfig::new(self.crypto.clone());
        client.transport_config(Arc::new(transport));
        client
    }
}

#[cfg(test)]
mod tests {
    use tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD;

    use super::*;

    #[test]
    fn a_first_window_holds_more_packets_than_the_server_waits_for() {
        // Nothing known of the path, and nothing to probe: near RFC 9002's
        // ten packets.
        assert_eq!(initial_window(MIN_MTU, MIN_MTU), 13_200);
        for mtu in [MIN_MTU, 1452, 4096, DEFAULT_MAX_UDP_PAYLOAD] {
            assert!(
                initial_window(mtu, mtu) > u64::from(ACK_PACKET_THRESHOLD) * u64::from(mtu),
                "a connection that starts at {mtu}-byte packets could fill its window \
                 with fewer packets than the server waits for before it ACKs"
            );
        }
        // A 128-event batch (~26 KiB) leaves whole on jumbo packets, and
        // on the largest the server accepts by default.
        assert!(initial_window(8952, 8952) > 26 << 10);
        assert!(initial_window(DEFAULT_MAX_UDP_PAYLOAD, DEFAULT_MAX_UDP_PAYLOAD) > 26 << 10);
    }

    /// Walks quinn's binary search (`MtuDiscoveryConfig`'s defaults: a
    /// probe halfway between what passed and what failed, until they are
    /// 20 bytes apart), each probe passing or failing, and checks quinn's
    /// rule at every probe: beside the probe in flight, the window must
    /// take a packet of the size found so far and ten more of the first
    /// size, or the probe holds back the device's batches.
    #[test]
    fn a_probe_in_flight_leaves_a_batch_its_window() {
        for (start, bound) in [
            (MIN_MTU, DEFAULT_MAX_UDP_PAYLOAD),
            (MIN_MTU, 1472),
            (MIN_MTU, QUINN_PROBE_BOUND),
            (MIN_MTU, 8952),
            (1472, 8952),
        ] {
            let window = initial_window(start, bound);
            for passes in [true, false] {
                let (mut found, mut failed) = (start, bound);
                while failed - found >= 20 {
                    let probe = found + (failed - found) / 2;
                    // quinn holds a packet back where what is in flight
                    // and it reach the window: the room must be more.
                    let room = window - u64::from(probe);
                    let beside = u64::from(found) + 10 * u64::from(start);
                    assert!(
                        room > beside,
                        "start {start}, bound {bound}: a {probe}-byte probe leaves {room} \
                         bytes, not the {beside} of a packet of {found} and ten of {start}"
                    );
                    if passes {
                        found = probe;
                    } else {
                        failed = probe - 1;
                    }
                }
                // Where the search stops short of the bound, quinn probes
                // the bound itself last.
                assert!(window - u64::from(bound) > u64::from(found) + 10 * u64::from(start));
            }
        }
        // The room is the probes' bound's: on a 1500-byte route, 2,944 bytes.
        assert_eq!(initial_window(MIN_MTU, 1472), 13_200 + 2_944);
    }
}
