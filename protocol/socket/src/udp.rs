//! UDP sockets for QUIC with kernel buffers large enough for a fleet:
//! the devices' shared socket and the server's listening one.
//!
//! Why: a UDP datagram that arrives while its socket's receive buffer is
//! full is dropped by the kernel, silently for the application. QUIC
//! takes it for congestion: the sender resends after a probe timeout that
//! doubles each time, so a few hundred milliseconds in which the reading
//! task was not scheduled become seconds of ack latency, and reconnects.
//! With 10,000 devices at 5 events/s on 2 cores, where the kernel capped
//! the buffers at `net.core.rmem_max` (4 MiB on these machines), runs
//! dropped 5,000 to 32,000 datagrams at the server and the devices alike,
//! and their ack p99 went from tens of milliseconds to 0.3–1.9 s.
//!
//! So a socket asks for [`BUFFER_BYTES`], and where the kernel caps it
//! below that, asks again past the cap (`SO_RCVBUFFORCE`,
//! `SO_SNDBUFFORCE`), which a process with `CAP_NET_ADMIN` (root outside
//! a container) is granted. [`SocketBuffers`] says what it got, for the
//! server to warn about and export.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// The receive and send buffer each socket asks for. The kernel charges a
/// datagram's whole allocation against it (about 2 KiB for a small one on
/// loopback), so this holds some 8,000 datagrams: over half a second of
/// what 10,000 devices at 5 events/s send the server (13,000 a second).
pub const BUFFER_BYTES: usize = 16 << 20;

/// What a socket's buffers came to, in the terms they are asked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Bytes asked for, each of receive and send.
    pub asked: usize,
    /// The receive buffer granted.
    pub recv: usize,
    /// The send buffer granted.
    pub send: usize,
}

impl SocketBuffers {
    /// Whether the receive buffer is smaller than asked for.
    pub fn recv_short(&self) -> bool {
        self.recv < self.asked
    }
}

/// Linux reports twice the size set (it keeps the other half for its
/// bookkeeping): what was set, from what `getsockopt` says.
const REPORTED_PER_SET: usize = if cfg!(any(target_os = "linux", target_os = "android")) {
    2
} else {
    1
};

/// Binds a UDP socket to `addr` with receive and send buffers of `bytes`
/// where the kernel allows (module docs), dual-stack when `addr` is the
/// IPv6 unspecified address and the system allows that.
pub fn bind(
    addr: SocketAddr,
    bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, SocketBuffers)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems refuse dual-stack sockets.
        let _ = socket.set_only_v6(false);
    }
    let buffers = grow_buffers(&socket, bytes);
    socket.bind(&addr.into())?;
    Ok((socket.into(), buffers))
}

/// An ephemeral port on every address of `server`'s family: where a
/// socket that talks to `server` binds.
pub fn any_port_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// The largest UDP payload the kernel's route to `server` carries: the
/// MTU it keeps for that destination (the outgoing interface's, or less
/// where a route says so or ICMP said a hop carries less) less the IP
/// and UDP headers; `None` where the kernel does not say.
///
/// Why: a probe larger than the interface's MTU is refused by the
/// device's own kernel (`EMSGSIZE`; quinn sends with the kernel's path
/// MTU otherwise ignored) and one larger than a hop the kernel knows of
/// is lost on the way, yet quinn counts either as in flight until it is
/// declared lost, holding the congestion window it takes (`tillstream_client`'s `tls`).
/// Bounding discovery here costs a socket and five system calls a
/// connection, and on a 1500-byte network keeps the search between 1200
/// and 1472 bytes instead of climbing to 64 KiB.
pub fn route_payload(server: SocketAddr) -> Option<u16> {
    // An IPv4 server written as an IPv4-mapped IPv6 address has an IPv4
    // route and headers.
    let server = SocketAddr::new(server.ip().to_canonical(), server.port());
    let socket = std::net::UdpSocket::bind(any_port_for(server)).ok()?;
    // Connecting a UDP socket sends nothing: it picks the route.
    socket.connect(server).ok()?;
    let (mtu, headers) = route::mtu(&socket, server.is_ipv6())?;
    Some(u16::try_from(mtu.saturating_sub(headers)).unwrap_or(u16::MAX))
}

/// Asks for `bytes` of each buffer, past `rmem_max`/`wmem_max` if the
/// capped size is smaller and the process may; never fails: a smaller
/// buffer costs latency under load, not correctness.
fn grow_buffers(socket: &Socket, bytes: usize) -> SocketBuffers {
    let recv = |s: &Socket| s.recv_buffer_size().unwrap_or(0) / REPORTED_PER_SET;
    let send = |s: &Socket| s.send_buffer_size().unwrap_or(0) / REPORTED_PER_SET;
    let _ = socket.set_recv_buffer_size(bytes);
    if recv(socket) < bytes {
        force::recv(socket, bytes);
    }
    let _ = socket.set_send_buffer_size(bytes);
    if send(socket) < bytes {
        force::send(socket, bytes);
    }
    SocketBuffers {
        asked: bytes,
        recv: recv(socket),
        send: send(socket),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod force {
    use rustix::net::sockopt;
    use socket2::Socket;

    /// `SO_RCVBUFFORCE`: refused (EPERM) without `CAP_NET_ADMIN`, which
    /// leaves the capped size.
    pub(super) fn recv(socket: &Socket, bytes: usize) {
        let _ = sockopt::set_socket_recv_buffer_size_force(socket, bytes);
    }

    /// `SO_SNDBUFFORCE`, likewise.
    pub(super) fn send(socket: &Socket, bytes: usize) {
        let _ = sockopt::set_socket_send_buffer_size_force(socket, bytes);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod route {
    use rustix::net::sockopt;

    /// `IP_MTU` / `IPV6_MTU` of a connected socket, and the IP and UDP
    /// header bytes a datagram of that family adds.
    pub(super) fn mtu(socket: &std::net::UdpSocket, v6: bool) -> Option<(u32, u32)> {
        if v6 {
            sockopt::ipv6_mtu(socket).ok().map(|m| (m, 40 + 8))
        } else {
            sockopt::ip_mtu(socket).ok().map(|m| (m, 20 + 8))
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod route {
    pub(super) fn mtu(_: &std::net::UdpSocket, _: bool) -> Option<(u32, u32)> {
        None
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod force {
    use socket2::Socket;

    pub(super) fn recv(_: &Socket, _: usize) {}
    pub(super) fn send(_: &Socket, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_gets_at_least_the_default_buffers_and_says_what_it_got() {
        let (socket, buffers) =
            bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), BUFFER_BYTES).expect("bind");
        assert_eq!(buffers.asked, BUFFER_BYTES);
        let granted = Socket::from(socket);
        let reported = granted.recv_buffer_size().expect("SO_RCVBUF");
        assert_eq!(reported / REPORTED_PER_SET, buffers.recv);
        let reported = granted.send_buffer_size().expect("SO_SNDBUF");
        assert_eq!(reported / REPORTED_PER_SET, buffers.send);
        // Whatever the caps, asking never leaves a buffer below what an
        // unconfigured socket has (Linux's default is 208 KiB).
        let plain = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
        let plain = plain.recv_buffer_size().expect("SO_RCVBUF") / REPORTED_PER_SET;
        assert!(buffers.recv >= plain, "{buffers:?} against {plain}");
        assert_eq!(buffers.recv_short(), buffers.recv < BUFFER_BYTES);
    }

    #[test]
    fn a_small_request_is_granted_whole() {
        // 64 KiB is under every default cap: nothing needs forcing.
        let (_, buffers) = bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), 64 << 10).expect("bind");
        assert!(!buffers.recv_short(), "{buffers:?}");
        assert!(buffers.send >= 64 << 10, "{buffers:?}");
    }

    /// Loopback's MTU is 65,536 (Linux's default); an IPv4 route caps it at
    /// 65,535, the most an IPv4 datagram holds.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_loopback_route_carries_the_largest_payload() {
        let server: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 9).into();
        assert_eq!(route_payload(server), Some(65_507));
        // Where IPv6 is off, the kernel has no route to say anything of.
        let server: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 9).into();
        let v6 = route_payload(server);
        assert!(matches!(v6, None | Some(65_488)), "{v6:?}");
        // An IPv4 address in IPv6 clothing is routed, and counted, as IPv4.
        let mapped = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        assert_eq!(route_payload((mapped, 9).into()), Some(65_507));
    }
}
