//! Reading and writing frames on a QUIC stream.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tillstream_protocol::FrameError;
use tillstream_protocol::frame::{self, FrameHeader, HEADER_LEN, PayloadBuf, WireMessage};

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection or stream failed; nothing more can be read.
    Conn(String),
    /// The bytes were not a valid frame. `raw` is what was read of it.
    Frame { err: FrameError, raw: Vec<u8> },
    /// The peer took longer than the frame deadline to send a frame it
    /// had started (time spent waiting for the buffer budget not counted).
    TooSlow { got: usize, of: usize },
}

/// How the payloads of frames being read are bounded, across connections.
#[derive(Debug, Clone)]
pub(crate) struct FrameBudget {
    /// Bytes of frame payload all connections may hold while they read
    /// them; a reader waits for room before it reads more (QUIC flow
    /// control then holds its device).
    pub(crate) bytes: Arc<Semaphore>,
    /// Longest a peer may take to send the rest of a frame it started,
    /// beyond what the frame's size needs at `MIN_FRAME_BYTES_PER_S`.
    pub(crate) deadline: Duration,
}

/// The slowest a device may send a frame it started, past the deadline's
/// base: 64 KiB/s (half a Mbit/s), so a 1 MiB frame gets 16 s more.
const MIN_FRAME_BYTES_PER_S: f64 = 64.0 * 1024.0;

/// Frames up to this size are not counted in the budget (see `read_frame`):
/// what they cost is at most this per connection.
pub(crate) const UNBUDGETED_FRAME_BYTES: usize = 64 * 1024;

/// A frame's share of the budget, released when dropped.
#[derive(Debug)]
pub(crate) struct FramePermit {
    _held: Option<OwnedSemaphorePermit>,
}

/// What a payload buffer starts with: the buffer grows as bytes arrive,
/// so a header declaring 1 MiB and a stall costs this, not 1 MiB.
const FIRST_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// Polls `f` once, with a waker that does nothing: whether it is ready
/// now. (A function of its own, so that the context it polls with, which
/// is not `Send`, is not held across the caller's next await.)
fn poll_now<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Reads one frame: `Ok(None)` when the peer finished the stream cleanly
/// between frames. The header is checked before the payload is read, so a
/// declared length over `max_payload` never allocates; and the payload
/// buffer grows with the bytes that arrive, never ahead of them (a frame
/// buffer allocated and zeroed for its declared length let every stalled
/// connection pin a megabyte).
///
/// With a `budget`, the declared length of a frame larger than
/// `UNBUDGETED_FRAME_BYTES` is counted against it before it is read and
/// stays counted until the returned permit drops,
/// and the payload must arrive within the budget's deadline (counted from
/// when the share was granted): a peer dripping a frame holds a bounded
/// share for a bounded time, however many connections it opens.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_payload: u32,
    budget: Option<&FrameBudget>,
) -> Result<Option<(FrameHeader, PayloadBuf, FramePermit)>, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadError::Frame {
                err: FrameError::Truncated {
                    expected: HEADER_LEN,
                    got: n,
                },
                raw: head[..n].to_vec(),
            });
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadError::Conn(e.to_string())),
    }
    let header = FrameHeader::parse(&head, max_payload).map_err(|err| ReadError::Frame {
        err,
        raw: head.to_vec(),
    })?;
    let len = header.len as usize;
    let mut payload = PayloadBuf::with_capacity(len.min(FIRST_PAYLOAD_CAPACITY));
    // The whole declared length is taken from the budget at once, before
    // a byte is read: a reader holds all of its frame's share or none, so
    // readers waiting for room never hold part of it (partial shares
    // could leave every reader waiting on the others). Declaring a large
    // frame and dripping it costs the share until the deadline.
    let held = match budget {
        // A small frame is bounded by the connection (one at a time, as the
        // QUIC window is): it does not queue for the budget behind large
        // frames that may be dripping, so a till's batch is never held up
        // by them.
        Some(_) if len <= UNBUDGETED_FRAME_BYTES => None,
        Some(b) => Some(
            b.bytes
                .clone()
                .acquire_many_owned(u32::try_from(len).unwrap_or(u32::MAX))
                .await
                .map_err(|_| ReadError::Conn("server shutting down".into()))?,
        ),
        None => None,
    };
    // The deadline grows with the frame at a floor rate, so a large frame
    // on a slow link still arrives; a drip below that rate does not.
    let deadline = budget.map(|b| {
        let at_floor = Duration::from_secs_f64(len as f64 / MIN_FRAME_BYTES_PER_S);
        tokio::time::Instant::now() + b.deadline + at_floor
    });
    while payload.len() < len {
        let mut chunk = std::pin::pin!(recv.read_chunk(len - payload.len(), true));
        let read = match deadline {
            // A chunk already received is taken without a timer: most
            // are (a batch's packets arrive before its reader runs), and
            // a timer per chunk looked up the runtime's handle each time.
            // A chunk not there yet is waited for under the deadline, the
            // same future polled again, now with this task's waker.
            Some(at) => match poll_now(chunk.as_mut()) {
                Poll::Ready(r) => r,
                Poll::Pending => match tokio::time::timeout_at(at, chunk).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ReadError::TooSlow {
                            got: payload.len(),
                            of: len,
                        });
                    }
                },
            },
            None => chunk.await,
        };
        match read {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(ReadError::Frame {
                    err: FrameError::Truncated {
                        expected: len,
                        got: payload.len(),
                    },
                    raw: with_header(&head, &payload),
                });
            }
            Err(e) => return Err(ReadError::Conn(e.to_string())),
        }
    }
    header
        .check_payload(&payload)
        .map_err(|err| ReadError::Frame {
            err,
            raw: with_header(&head, &payload),
        })?;
    Ok(Some((header, payload, FramePermit { _held: held })))
}

/// The header and payload of a frame as one byte string, capped for a dead letter.
pub(crate) fn with_header(head: &[u8], payload: &[u8]) -> Vec<u8> {
    let cap = tillstream_storage::DEAD_LETTER_MAX_BYTES;
    let mut raw = Vec::with_capacity((head.len() + payload.len()).min(cap));
    raw.extend_from_slice(head);
    let room = cap.saturating_sub(raw.len());
    raw.extend_from_slice(&payload[..payload.len().min(room)]);
    raw
}

/// Encodes and writes one message.
pub(crate) async fn write_msg<M>(
    send: &mut quinn::SendStream,
    msg: &M,
    version: u8,
) -> Result<(), String>
where
    M: WireMessage,
    M::Archived: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>,
{
    // In the version the device spoke in its Hello: a version-1 device
    // reads no other.
    let bytes = frame::encode_to_vec_versioned(msg, version).map_err(|e| e.to_string())?;
    // As a chunk, quinn keeps the buffer itself: write_all copied it.
    send.write_chunk(bytes::Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())
}
