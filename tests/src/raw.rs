//! A device written by hand: frames go on the stream as the test builds
//! them, so a test can send what no well-behaved client would.

use std::net::SocketAddr;
use std::time::Duration;

use tillstream_protocol::frame::{self, FrameHeader, decode};
use tillstream_protocol::{Hello, MsgType, PROTOCOL_VERSION, Welcome};

/// One connection with its stream, past Hello and Welcome.
#[derive(Debug)]
pub struct RawSession {
    /// The connection.
    pub conn: quinn::Connection,
    /// The device's side of the stream.
    pub send: quinn::SendStream,
    /// The server's side.
    pub recv: quinn::RecvStream,
    /// What the server said.
    pub welcome: Welcome,
}

impl RawSession {
    /// Connects through `endpoint`, says Hello as `device` with `token`
    /// (see `Tokens`; empty for a server without authentication) and reads the
    /// Welcome (an error if anything else comes back).
    pub async fn open(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        device: u64,
        token: &[u8],
    ) -> anyhow::Result<Self> {
        let (conn, send, recv, t, payload) = hello(endpoint, addr, device, token).await?;
        anyhow::ensure!(t == MsgType::Welcome, "expected Welcome, got {t:?}");
        let welcome = decode::<Welcome>(&payload)?;
        Ok(Self {
            conn,
            send,
            recv,
            welcome,
        })
    }
}

/// Reads one frame from the server (20 s for its header), checked.
pub async fn read_msg(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<(MsgType, frame::PayloadBuf)> {
    let (h, payload) = read_frame(recv).await?;
    Ok((h.msg_type, payload))
}

/// [`read_msg`], with the whole header (its protocol version, say).
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<(FrameHeader, frame::PayloadBuf)> {
    let mut head = [0u8; frame::HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(20), recv.read_exact(&mut head)).await??;
    let h = FrameHeader::parse(&head, frame::DEFAULT_MAX_PAYLOAD)?;
    let mut payload = vec![0u8; h.len as usize];
    recv.read_exact(&mut payload).await?;
    h.check_payload(&payload)?;
    Ok((h, frame::aligned(&payload)))
}

/// A `Batch` frame of `events` with seq `seq`, stamped now.
pub fn batch_frame(seq: u64, events: Vec<tillstream_protocol::Event>) -> anyhow::Result<Vec<u8>> {
    Ok(frame::encode_to_vec(&tillstream_protocol::Batch {
        seq,
        sent_at_us: crate::now_us(),
        events,
    })?)
}

/// Opens a connection, says Hello as `device` with `token`, and returns
/// the connection, its stream and the server's answer (Welcome, Reject).
pub async fn hello(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    device: u64,
    token: &[u8],
) -> anyhow::Result<(
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    MsgType,
    frame::PayloadBuf,
)> {
    let conn = endpoint.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        device,
        token: token.to_vec(),
    };
    send.write_all(&frame::encode_to_vec(&hello)?).await?;
    let (t, payload) = read_msg(&mut recv).await?;
    Ok((conn, send, recv, t, payload))
}
