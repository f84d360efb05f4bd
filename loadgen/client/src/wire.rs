//! Frames in and out of the device's stream.

use tillstream_protocol::frame::{
    DEFAULT_MAX_PAYLOAD, FrameHeader, HEADER_LEN, PayloadBuf, decode, encode_to_vec,
};
use tillstream_protocol::{
    Ack, Error as ErrorMsg, FrameError, Hello, MsgType, PROTOCOL_VERSION, Redirect, Reject, Welcome,
};

/// A frame from the server, validated and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    Welcome(Welcome),
    Reject(Reject),
    Ack(Ack),
    Error(ErrorMsg),
    Redirect(Redirect),
    /// A message type a server never sends (Hello, Batch).
    Unexpected(MsgType),
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The server finished its side of the stream between frames.
    #[error("server closed the stream")]
    Finished,
    /// The stream or the connection failed.
    #[error("read failed: {}", read_cause(.0))]
    Read(#[from] quinn::ReadExactError),
    /// The bytes were not a valid frame.
    #[error("bad frame from server: {0}")]
    Frame(#[from] FrameError),
}

impl WireError {
    /// The connection's error, if the read failed because the connection
    /// was lost (as opposed to the stream or the frame).
    pub(crate) fn connection_lost(&self) -> Option<&quinn::ConnectionError> {
        match self {
            WireError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::ConnectionLost(c),
            )) => Some(c),
            _ => None,
        }
    }
}

/// A read error with its cause: quinn's "connection lost" alone does not
/// say whether the server closed, reset or stopped answering.
fn read_cause(e: &quinn::ReadExactError) -> String {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            format!("connection lost: {c}")
        }
        e => e.to_string(),
    }
}

/// The `Hello` frame of a device.
pub(crate) fn hello_frame(device: u64, token: &[u8]) -> Result<Vec<u8>, FrameError> {
    encode_to_vec(&Hello {
        version: PROTOCOL_VERSION,
        device,
        token: token.to_vec(),
    })
}

/// Validates and decodes a checked payload (16-byte aligned) of type `ty`.
pub(crate) fn decode_incoming(ty: MsgType, payload: &[u8]) -> Result<Incoming, FrameError> {
    Ok(match ty {
        MsgType::Welcome => Incoming::Welcome(decode::<Welcome>(payload)?),
        MsgType::Reject => Incoming::Reject(decode::<Reject>(payload)?),
        MsgType::Ack => Incoming::Ack(decode::<Ack>(payload)?),
        MsgType::Error => Incoming::Error(decode::<ErrorMsg>(payload)?),
        MsgType::Redirect => Incoming::Redirect(decode::<Redirect>(payload)?),
        other @ (MsgType::Hello | MsgType::Batch) => Incoming::Unexpected(other),
    })
}

/// Reads one frame: the header is checked before the payload is read, the
/// payload goes into an aligned buffer, its CRC is checked and it is
/// validated before any field is read.
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Incoming, WireError> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(WireError::Finished),
        Err(e) => return Err(e.into()),
    }
    let h = FrameHeader::parse(&head, DEFAULT_MAX_PAYLOAD)?;
    let len = h.len as usize;
    let mut buf = PayloadBuf::with_capacity(len);
    buf.resize(len, 0);
    recv.read_exact(&mut buf).await?;
    h.check_payload(&buf)?;
    Ok(decode_incoming(h.msg_type, &buf)?)
}

#[cfg(test)]
mod tests {
    use tillstream_protocol::frame::aligned;
    use tillstream_protocol::{Limits, RejectedRef};

    use super::*;

    fn roundtrip(frame: &[u8]) -> Result<Incoming, FrameError> {
        let h = FrameHeader::parse(frame, DEFAULT_MAX_PAYLOAD)?;
        let payload = aligned(&frame[HEADER_LEN..]);
        h.check_payload(&payload)?;
        decode_incoming(h.msg_type, &payload)
    }

    #[test]
    fn decodes_every_server_message() -> Result<(), FrameError> {
        let ack = Ack {
            durable_seq: 42,
            rejected: vec![RejectedRef {
                seq: 41,
                idx: 3,
                code: 100,
            }],
        };
        assert_eq!(roundtrip(&encode_to_vec(&ack)?)?, Incoming::Ack(ack));
        let w = Welcome {
            durable_seq: 7,
            limits: Limits::default(),
        };
        assert_eq!(roundtrip(&encode_to_vec(&w)?)?, Incoming::Welcome(w));
        let e = ErrorMsg {
            code: 10,
            batch_seq: 9,
            reason: "busy".into(),
        };
        assert_eq!(roundtrip(&encode_to_vec(&e)?)?, Incoming::Error(e));
        let r = Reject {
            code: 11,
            reason: "no".into(),
        };
        assert_eq!(roundtrip(&encode_to_vec(&r)?)?, Incoming::Reject(r));
        let d = Redirect {
            store: 3,
            epoch: 7,
            owner: "10.0.0.2:7400".into(),
        };
        assert_eq!(roundtrip(&encode_to_vec(&d)?)?, Incoming::Redirect(d));
        // A server answers a device of version 1 in version 1.
        let r1 = Reject {
            code: 21,
            reason: "store 3 is served by 10.0.0.2:7400".into(),
        };
        let frame = tillstream_protocol::frame::encode_to_vec_versioned(&r1, 1)?;
        assert_eq!(roundtrip(&frame)?, Incoming::Reject(r1));
        let hello = hello_frame(5, b"t")?;
        assert_eq!(hello[4], PROTOCOL_VERSION, "the header states the version");
        assert_eq!(roundtrip(&hello)?, Incoming::Unexpected(MsgType::Hello));
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() -> Result<(), FrameError> {
        // A valid Ack header over a payload of another type's bytes, and
        // payloads of every length of noise.
        let r = Reject {
            code: 1,
            reason: "x".repeat(40),
        };
        let payload =
            rkyv::to_bytes::<rkyv::rancor::Error>(&r).map_err(|e| FrameError::Invalid {
                what: "test",
                reason: e.to_string(),
            })?;
        let _ = decode_incoming(MsgType::Ack, &aligned(&payload));
        for n in 0..64usize {
            let noise: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            for ty in [
                MsgType::Ack,
                MsgType::Welcome,
                MsgType::Error,
                MsgType::Reject,
                MsgType::Redirect,
            ] {
                let _ = decode_incoming(ty, &aligned(&noise));
            }
        }
        assert!(decode_incoming(MsgType::Ack, &aligned(&[1, 2, 3])).is_err());
        Ok(())
    }
}
