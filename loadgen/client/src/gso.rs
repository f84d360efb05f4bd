//! A QUIC UDP socket whose segmentation-offload batches stay under the
//! 64 KiB of one IP datagram: the devices' and the server's.
//!
//! Why: Linux refuses a GSO send whose UDP payload passes 65,507 bytes
//! (EMSGSIZE), and quinn-udp drops that error without a word, since MTU
//! probes cause it too. quinn fills a batch with up to the socket's 64
//! segments, so 8 or more packets of 8,952 bytes (a jumbo or loopback
//! path), or 55 or more of 1,200, were lost whole, and lost again when
//! retransmitted in batches as large: the sender's probe timeout backed
//! off for seconds. A device writing 5 MB at once stalled past the
//! server's 10 s frame deadline and was disconnected (one run in forty of
//! `bad_clients::acks_naming_many_refused_events_stay_within_the_frame_limit`).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The most UDP payload one IPv4 datagram carries (65,535 less the IP and
/// UDP headers), and so one GSO send.
pub const MAX_GSO_BYTES: usize = 65_507;

/// Segments of `max_udp_payload` bytes that fit one GSO send (at least 1).
pub fn gso_segments_for(max_udp_payload: u16) -> usize {
    (MAX_GSO_BYTES / usize::from(max_udp_payload.max(1))).max(1)
}

/// `socket` for quinn on `runtime`, its GSO batches held to what packets
/// of up to `max_udp_payload` bytes fit in one send (module docs).
pub fn quic_socket(
    socket: std::net::UdpSocket,
    max_udp_payload: u16,
    runtime: &dyn Runtime,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    Ok(Arc::new(GsoCapped {
        inner: runtime.wrap_udp_socket(socket)?,
        max_segments: gso_segments_for(max_udp_payload),
    }))
}

/// The runtime's socket, with a lower [`AsyncUdpSocket::max_transmit_segments`].
struct GsoCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl fmt::Debug for GsoCapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoCapped")
            .field("inner", &self.inner)
            .field("max_segments", &self.max_segments)
            .finish()
    }
}

impl AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_what_fits_one_datagram() {
        assert_eq!(gso_segments_for(8952), 7);
        assert_eq!(gso_segments_for(1200), 54);
        assert_eq!(gso_segments_for(1452), 45);
        assert_eq!(gso_segments_for(u16::MAX), 1);
    }

    /// On this kernel: the largest batch the socket allows goes out whole,
    /// and one segment more, which quinn would have built, is refused.
    #[tokio::test]
    async fn the_largest_batch_allowed_is_one_the_kernel_sends() -> anyhow::Result<()> {
        const PAYLOAD: u16 = 8952;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let socket = quic_socket(
            std::net::UdpSocket::bind("127.0.0.1:0")?,
            PAYLOAD,
            &quinn::TokioRuntime,
        )?;
        let segments = socket.max_transmit_segments();
        if segments == 1 {
            // No segmentation offload here: nothing to bound.
            return Ok(());
        }
        assert_eq!(segments, 7);
        let mut poller = socket.clone().create_io_poller();
        let to = receiver.local_addr()?;
        let mut send = async |n: usize| -> io::Result<()> {
            let contents = vec![7u8; n * usize::from(PAYLOAD)];
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: &contents,
                segment_size: Some(usize::from(PAYLOAD)),
                src_ip: None,
            };
            loop {
                std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                match socket.try_send(&transmit) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    sent => return sent,
                }
            }
        };
        // quinn-udp hides a refused send (module docs): what arrives tells.
        receiver.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        send(segments).await?;
        let mut buf = vec![0u8; 65_536];
        for _ in 0..segments {
            let (n, _) = receiver.recv_from(&mut buf)?;
            assert_eq!(n, usize::from(PAYLOAD));
        }
        // One segment more, what quinn built before, never arrives.
        send(segments + 1).await?;
        receiver.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        let lost = receiver.recv_from(&mut buf).map_err(|e| e.kind());
        assert!(
            matches!(
                lost,
                Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
            ),
            "a batch past 64 KiB went out: {lost:?}"
        );
        Ok(())
    }
}
