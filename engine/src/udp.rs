//! UDP sockets for QUIC with large kernel buffers: with the default
//! 208 KiB, batched runs dropped packets on this class of machine.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Requested size of each of the receive and send buffers. The kernel caps
/// it at net.core.rmem_max / wmem_max (raise those for production).
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Binds a UDP socket with large buffers; dual-stack when binding `[::]`.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems refuse dual-stack sockets.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: an unprivileged process gets what the kernel allows.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
