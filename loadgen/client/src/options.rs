//! The transport settings of a client endpoint and their defaults. They
//! are a module of their own because both the TLS settings of a device
//! (`tls`, which build each connection's transport from them) and the
//! endpoint that dials (`path`, which waits for its scout by them) read
//! them.

use std::time::Duration;

use tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD;

/// Transport settings of a client endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointOptions {
    /// A connection that hears nothing from the server for this long is
    /// lost, and the device reconnects. A server killed without a word is
    /// noticed only this way. The shorter of the client's and the server's
    /// value applies.
    pub idle_timeout: Duration,
    /// Keep-alive interval: keeps a quiet but healthy connection from
    /// timing out. At most half of `idle_timeout` (a longer one is
    /// lowered to that), so that a lost PING is sent again in time. A
    /// PING goes out only after this long without a packet from the
    /// server, and each costs the server a packet in and an ACK out: with
    /// a 1 s interval, 10,000 devices that batch every 1–1.2 s sent 4.7
    /// datagrams a batch where 3 carry it (batch, ack, ACK), and the
    /// server spent about a fifth more CPU a batch (one noisy A/B).
    pub keep_alive: Duration,
    /// UDP receive and send buffer sizes asked for (the kernel may grant
    /// less; see [`crate::udp`]): with the default ~208 KiB, batched runs
    /// dropped packets.
    pub socket_buffer_bytes: usize,
    /// The stream receive window advertised to the server, if not quinn's
    /// default. Tests use a tiny one to play a device that reads nothing.
    pub stream_receive_window: Option<u32>,
    /// The largest UDP payload this endpoint sends (the bound of its path
    /// MTU discovery) and accepts. The server's own limit caps what a
    /// device sends. Default
    /// [`DEFAULT_MAX_UDP_PAYLOAD`]
    /// (65,507): discovery keeps what the path carries, 1472 on a
    /// 1500-byte Ethernet path, 8952 with jumbo frames, and probes no
    /// higher than the device's route to the server carries.
    pub max_udp_payload: u16,
    /// How long a connection to a server this endpoint has found no path
    /// MTU to yet waits for the one finding it (see
    /// [`ClientEndpoint`](crate::ClientEndpoint)). Default 250 ms: on
    /// loopback or a LAN the first connection's handshake and first
    /// sample take ~25 ms. Longer suits a far server; zero makes every
    /// connection search for itself.
    pub scout_wait: Duration,
}

impl Default for EndpointOptions {
    /// 5 s idle timeout, a keep-alive after 2 s of silence, 16 MiB buffers,
    /// UDP payloads as large as the path carries.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(2),
            socket_buffer_bytes: crate::udp::BUFFER_BYTES,
            stream_receive_window: None,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            scout_wait: SCOUT_WAIT,
        }
    }
}

/// How long, by default, a connection to a server no connection has
/// found the path MTU of waits for the one finding it (the scout;
/// [`EndpointOptions::scout_wait`]). On loopback or a LAN
/// the scout's handshake and first sample take ~25 ms; where they take
/// longer (a far server, one that is down), the waiting ones search for
/// themselves, as they would without a scout, at most this much later.
const SCOUT_WAIT: Duration = Duration::from_millis(250);
