//! The server's UDP socket: its buffers (sized by
//! `tillstream_socket::udp`, which explains why they matter), a warning
//! when the kernel grants less, and the kernel's count of the datagrams
//! it dropped there, for `/metrics`.
//!
//! Why count drops: a datagram dropped for a full receive buffer is seen
//! by no one but the kernel; QUIC resends it after a timeout, so what an
//! operator sees is a p99 of seconds and devices reconnecting, with no
//! error anywhere. `tillstream_udp_receive_drops_total` says when that is
//! the cause (Linux: the `drops` column of `/proc/net/udp`).

use std::net::SocketAddr;

use tillstream_socket::udp::{BUFFER_BYTES, SocketBuffers};

/// The listening socket's buffers and where the kernel counts its drops.
#[derive(Debug, Clone)]
pub(crate) struct ServerSocket {
    buffers: SocketBuffers,
    /// The socket's inode, which names it in `/proc/net/udp` (None where
    /// there is no such file).
    inode: Option<u64>,
    /// The table that lists it: `udp6` for an IPv6 socket, dual-stack too.
    table: &'static str,
}

/// Binds the listening socket with large buffers; dual-stack when binding
/// `[::]`. Logs a warning if the receive buffer is smaller than asked.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, ServerSocket)> {
    let (socket, buffers) = tillstream_socket::udp::bind(addr, BUFFER_BYTES)?;
    if buffers.recv_short() {
        tracing::warn!(
            granted_bytes = buffers.recv,
            asked_bytes = buffers.asked,
            "the UDP receive buffer is smaller than asked for: the kernel caps it at \
             net.core.rmem_max and this process may not go past that (no CAP_NET_ADMIN). \
             Under load a full buffer drops datagrams, which QUIC resends only after a \
             timeout (seconds of ack latency, devices reconnecting; see \
             tillstream_udp_receive_drops_total). Raise the cap on the host: \
             sysctl -w net.core.rmem_max={asked} net.core.wmem_max={asked}",
            asked = buffers.asked,
        );
    }
    let inode = socket_inode(&socket);
    let table = if addr.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    Ok((
        socket,
        ServerSocket {
            buffers,
            inode,
            table,
        },
    ))
}

impl ServerSocket {
    /// Sets the socket's gauges and its drop counter (on each scrape).
    pub(crate) fn refresh_metrics(&self) {
        let drops = self
            .inode
            .and_then(|inode| drops_of(&std::fs::read_to_string(self.table).ok()?, inode));
        crate::metrics::udp_socket(self.buffers.recv, self.buffers.send, drops);
    }
}

/// The inode of `socket` (Linux: the target of its `/proc/self/fd` link,
/// `socket:[N]`).
fn socket_inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    parse_socket_link(link.to_str()?)
}

fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The `drops` of the socket with `inode` in a `/proc/net/udp` or `udp6`
/// table: the 10th field is the inode, the 13th (the last) the drops.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.nth(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.nth(2)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two lines of a real `/proc/net/udp` (kernel 6.18).
    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n\
 6412: 0100007F:1CE8 00000000:0000 07 00000000:0000AD00 00:00000000 00000000     0        0 255799 2 00000000e91c0a49 17036    \n\
 6848: 00000000:DE9C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 257554 2 00000000db20b7f6 0        \n";

    #[test]
    fn drops_are_read_by_the_sockets_inode() {
        assert_eq!(drops_of(TABLE, 255799), Some(17036));
        assert_eq!(drops_of(TABLE, 257554), Some(0));
        assert_eq!(drops_of(TABLE, 1), None, "another socket's");
        assert_eq!(drops_of("header only\n", 255799), None);
        assert_eq!(drops_of("h\n 1: cut short\n", 255799), None);
    }

    #[test]
    fn a_socket_link_names_its_inode() {
        assert_eq!(parse_socket_link("socket:[255799]"), Some(255799));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_bound_socket_is_found_in_the_kernels_table() {
        let (socket, info) = bind((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
        let inode = info.inode.expect("the socket's inode");
        let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
        assert_eq!(
            drops_of(&table, inode),
            Some(0),
            "a new socket has dropped nothing"
        );
        drop(socket);
    }
}
