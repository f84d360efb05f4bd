//! A QUIC UDP socket whose segmentation-offload batches stay under the
//! 64 KiB of one IP datagram: the devices' and the server's.
//!
//! Why: Linux refuses a GSO send whose UDP payload passes 65,507 bytes
//! (EMSGSIZE), and quinn-udp drops that error without a word, since MTU
//! probes cause it too. quinn fills a batch with up to 10 segments (its
//! own bound, lower if the socket says so), so 8 or more packets of
//! 8,952 bytes (a jumbo or loopback path) were lost whole, and lost again when
//! retransmitted in batches as large: the sender's probe timeout backed
//! off for seconds. A device writing 5 MB at once stalled past the
//! server's 10 s frame deadline and was disconnected (one run in forty of
//! `bad_clients::acks_naming_many_refused_events_stay_within_the_frame_limit`).
//!
//! So the socket tells quinn how many segments of the largest packet it
//! sends fit one datagram ([`GsoCapped::fit_packets_of`]: a device's
//! endpoint calls it with the path MTU its connections found), and a
//! batch larger than that, which a connection whose packets grew before
//! the endpoint heard of it can still build, goes out in several sends.
//! Sizing the batches from the largest packet the endpoint may ever send
//! instead (65,507 bytes since devices' packets grow to what the path
//! carries) would send every packet on its own on a 1500-byte path: a
//! 128-event batch in 18 system calls, not 2.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The most UDP payload one IPv4 datagram carries (65,535 less the IP and
/// UDP headers), and so one GSO send.
pub const MAX_GSO_BYTES: usize = 65_507;

/// QUIC's smallest UDP payload: every connection starts there (quinn's
/// default initial MTU), and the server's own packets stay there, since
/// it runs no path MTU discovery of its own.
pub const MIN_MTU: u16 = 1200;

/// Segments of `max_udp_payload` bytes that fit one GSO send (at least 1).
pub fn gso_segments_for(max_udp_payload: u16) -> usize {
    (MAX_GSO_BYTES / usize::from(max_udp_payload.max(1))).max(1)
}

/// `socket` for quinn on `runtime`, its GSO batches held to what packets
/// of up to `largest_packet` bytes fit in one send until
/// [`GsoCapped::fit_packets_of`] says otherwise (module docs).
pub fn quic_socket(
    socket: std::net::UdpSocket,
    largest_packet: u16,
    runtime: &dyn Runtime,
) -> io::Result<Arc<GsoCapped>> {
    Ok(Arc::new(GsoCapped {
        inner: runtime.wrap_udp_socket(socket)?,
        max_segments: AtomicUsize::new(gso_segments_for(largest_packet)),
    }))
}

/// The runtime's socket, with a lower [`AsyncUdpSocket::max_transmit_segments`]
/// and batches past one datagram split (module docs).
pub struct GsoCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: AtomicUsize,
}

impl GsoCapped {
    /// From now on, sizes GSO batches for packets of up to `mtu` bytes.
    pub fn fit_packets_of(&self, mtu: u16) {
        self.max_segments
            .store(gso_segments_for(mtu), Ordering::Relaxed);
    }
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

    /// A batch past one datagram goes in sends of as many whole segments
    /// as fit one. If the first send cannot go now, nothing went and the
    /// error is quinn's to retry; if a later one cannot, the segments not
    /// sent are lost packets to QUIC, which sends their data again, as
    /// retrying the whole batch would send the first ones twice.
    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = match transmit.segment_size {
            Some(segment) if segment > 0 && transmit.contents.len() > MAX_GSO_BYTES => segment,
            _ => return self.inner.try_send(transmit),
        };
        let per_send = (MAX_GSO_BYTES / segment).max(1) * segment;
        for (i, contents) in transmit.contents.chunks(per_send).enumerate() {
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
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
        self.inner
            .max_transmit_segments()
            .min(self.max_segments.load(Ordering::Relaxed))
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

    /// Sends `segments` packets of `PAYLOAD` bytes to `to` as one GSO
    /// batch through `socket`.
    async fn send_batch(
        socket: &Arc<dyn AsyncUdpSocket>,
        to: SocketAddr,
        segments: usize,
    ) -> io::Result<()> {
        let contents = vec![7u8; segments * usize::from(PAYLOAD)];
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size: Some(usize::from(PAYLOAD)),
            src_ip: None,
        };
        let mut poller = socket.clone().create_io_poller();
        loop {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return sent,
            }
        }
    }

    /// The packets that reach `receiver` within `wait` of one another.
    fn arrived(receiver: &std::net::UdpSocket, wait: std::time::Duration) -> io::Result<usize> {
        receiver.set_read_timeout(Some(wait))?;
        let mut buf = vec![0u8; 65_536];
        let mut n = 0;
        while let Ok((len, _)) = receiver.recv_from(&mut buf) {
            assert_eq!(len, usize::from(PAYLOAD), "a packet arrived cut or merged");
            n += 1;
        }
        Ok(n)
    }

    const PAYLOAD: u16 = 8952;

    /// On this kernel: a batch past one datagram is refused (quinn-udp
    /// hides the refusal, so what arrives tells); through the capped
    /// socket the same batch arrives whole, in several sends, and the cap
    /// follows the packet size it is told of.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn batches_past_one_datagram_arrive_whole() -> anyhow::Result<()> {
        // Room for the 20 segments sent at once below: the default buffer
        // holds about 21.
        let (receiver, _) = crate::udp::bind(([127, 0, 0, 1], 0).into(), 4 << 20)?;
        let to = receiver.local_addr()?;
        let capped = quic_socket(
            std::net::UdpSocket::bind("127.0.0.1:0")?,
            PAYLOAD,
            &quinn::TokioRuntime,
        )?;
        assert_eq!(
            capped.max_transmit_segments(),
            7,
            "no UDP segmentation offload here?"
        );
        capped.fit_packets_of(1472);
        assert_eq!(capped.max_transmit_segments(), 44);
        capped.fit_packets_of(65_507);
        assert_eq!(capped.max_transmit_segments(), 1);

        let raw = quinn::TokioRuntime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0")?)?;
        send_batch(&raw, to, 8).await?;
        assert_eq!(
            arrived(&receiver, std::time::Duration::from_millis(200))?,
            0,
            "the kernel sent a batch past 64 KiB"
        );
        let capped: Arc<dyn AsyncUdpSocket> = capped;
        for segments in [7, 8, 20] {
            send_batch(&capped, to, segments).await?;
            assert_eq!(
                arrived(&receiver, std::time::Duration::from_millis(300))?,
                segments,
                "a batch of {segments} segments"
            );
        }
        Ok(())
    }
}
