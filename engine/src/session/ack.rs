//! Stage three of a session: cumulative acks once units are durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_protocol::{Ack, ErrorCode, RejectedRef};
use tokio::sync::mpsc;

use super::{ACK_EVERY, Acking};
use crate::devices::DeviceSlot;
use crate::metrics as m;
use crate::wire::write_msg;

/// How long a closing session waits for its last frames to be delivered.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// Most refused-event references one Ack carries: 16 bytes each archived,
/// so an Ack stays near 512 KiB, well inside the 1 MiB frame limit a
/// device reads with. More refs go in the next Ack (same or higher
/// `durable_seq`). Uncapped, 16 fully refused batches of 4,096 events made
/// a frame the device could not read, and the session went silent.
pub(super) const MAX_REJECTED_PER_ACK: usize = 32 * 1024;

/// The session's side of the stream: what it may still write, and the acks
/// it has earned but not written yet (coalesced over a few durable batches).
struct Outbox {
    send: quinn::SendStream,
    conn: quinn::Connection,
    slot: Arc<DeviceSlot>,
    writable: bool,
    /// The protocol version of the device's Hello: every frame is written in it.
    version: u8,
    /// How long one ack may take to write before the device counts as
    /// not reading (`ServerConfig::ack_write_deadline`).
    deadline: Duration,
    owed_batches: u32,
    owed_rejected: Vec<RejectedRef>,
    oldest: Option<Instant>,
    /// The highest seq this acker has taken in (in seq order): an Ack never
    /// says more, even if later batches are durable already. Otherwise an
    /// Ack written before the Error of a refused batch could cover that
    /// batch's seq (its successor being durable), and the device would
    /// take the refused batch for acknowledged.
    acked_upto: u64,
}

impl Outbox {
    /// Records a durable batch and its refused events; writes an Ack
    /// early whenever the refs owed would pass [`MAX_REJECTED_PER_ACK`].
    async fn owe(&mut self, seq: u64, received: Instant, mut rejected: Vec<RejectedRef>) {
        self.acked_upto = self.acked_upto.max(seq);
        self.owed_batches += 1;
        self.oldest.get_or_insert(received);
        while self.owed_rejected.len() + rejected.len() > MAX_REJECTED_PER_ACK {
            let room = MAX_REJECTED_PER_ACK.saturating_sub(self.owed_rejected.len());
            let rest = rejected.split_off(room.min(rejected.len()));
            self.owed_rejected.append(&mut rejected);
            rejected = rest;
            self.pay().await;
        }
        self.owed_rejected.append(&mut rejected);
    }

    /// Whether an Ack is owed: batches, or refs left over from a split.
    fn owes(&self) -> bool {
        self.owed_batches > 0 || !self.owed_rejected.is_empty()
    }

    async fn write<M>(&mut self, msg: &M)
    where
        M: tillstream_protocol::frame::WireMessage,
        M::Archived: rkyv::Portable
            + for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            >,
    {
        if !self.writable {
            return;
        }
        // A device that does not read its acks must not hold its session
        // (and the budget its batches hold) for ever: past the deadline the
        // connection is closed; what it sent is still committed, and it
        // learns its watermark from the next Welcome.
        match tokio::time::timeout(self.deadline, write_msg(&mut self.send, msg, self.version))
            .await
        {
            Ok(r) => self.writable = r.is_ok(),
            Err(_) => {
                tracing::info!("the device did not read its acks in time; closing");
                m::ack_write_timed_out();
                self.writable = false;
                self.conn.close(
                    u32::from(ErrorCode::TooManyErrors.as_u16()).into(),
                    b"acks not read in time",
                );
            }
        }
    }

    /// Writes the cumulative ack owed, if any. Called before every Error
    /// frame too, so a device can attribute an Error without a seq to the
    /// oldest frame it wrote that is neither acked nor refused.
    async fn pay(&mut self) {
        if !self.owes() {
            return;
        }
        let msg = Ack {
            durable_seq: self.slot.durable().min(self.acked_upto),
            rejected: std::mem::take(&mut self.owed_rejected),
        };
        self.write(&msg).await;
        if let Some(t) = self.oldest.take()
            && self.owed_batches > 0
        {
            m::acked(t.elapsed(), u64::from(self.owed_batches));
        }
        self.owed_batches = 0;
    }

    /// Writes an Error after the acks owed.
    async fn error(&mut self, e: &tillstream_protocol::Error) {
        self.pay().await;
        self.write(e).await;
    }

    /// Finishes the stream, waits (a little) for the device to have read
    /// it (closing discards stream data not yet delivered), then closes
    /// the connection with `code`. Nothing is written after.
    async fn close(&mut self, code: ErrorCode) {
        if self.writable {
            let _ = self.send.finish();
            let _ = tokio::time::timeout(FLUSH_GRACE, self.send.stopped()).await;
        }
        self.conn
            .close(u32::from(code.as_u16()).into(), code.name().as_bytes());
        self.writable = false;
    }

    /// Ends the session on a store failure: the acks already earned, then a
    /// `store_unavailable` Error naming `seq`, then the close.
    async fn give_up(&mut self, seq: u64, reason: &str) {
        let e = tillstream_protocol::Error {
            code: ErrorCode::StoreUnavailable.as_u16(),
            batch_seq: seq,
            reason: reason.to_string(),
        };
        self.error(&e).await;
        self.close(ErrorCode::StoreUnavailable).await;
    }
}

/// Where the acks go: the stream, in the protocol version of the device's
/// Hello, each write within `deadline` (`ServerConfig::ack_write_deadline`).
pub(super) struct AckStream {
    pub(super) send: quinn::SendStream,
    pub(super) version: u8,
    pub(super) deadline: Duration,
}

/// Stage three: wait for durability in seq order and send cumulative acks.
pub(super) async fn ack(
    mut rx: mpsc::UnboundedReceiver<Acking>,
    to: AckStream,
    slot: Arc<DeviceSlot>,
    conn: quinn::Connection,
    mut failed: tokio::sync::watch::Receiver<bool>,
    welcomed: u64,
) {
    let AckStream {
        send,
        version,
        deadline,
    } = to;
    let mut out = Outbox {
        send,
        conn,
        slot,
        writable: true,
        version,
        deadline,
        owed_batches: 0,
        owed_rejected: Vec::new(),
        oldest: None,
        // What the Welcome announced is acknowledged already.
        acked_upto: welcomed,
    };
    while let Some(a) = rx.recv().await {
        match a {
            Acking::Unit {
                seq,
                done,
                rejected,
                received,
            } => match done.await {
                Ok(Ok(())) => out.owe(seq, received, rejected).await,
                Ok(Err(e)) => out.give_up(seq, &e.to_string()).await,
                Err(_) => out.give_up(seq, "the flusher stopped").await,
            },
            Acking::Duplicate { seq, received } => {
                // The original may never become durable if the engine failed.
                let durable = tokio::select! {
                    () = out.slot.wait_durable(seq) => true,
                    // (A closed channel disables this branch: keep waiting.)
                    Ok(_) = failed.wait_for(|f| *f) => false,
                };
                if durable {
                    out.owe(seq, received, Vec::new()).await;
                } else {
                    out.give_up(seq, "the server failed; restart it").await;
                }
            }
            Acking::Error(e) => {
                out.error(&e).await;
                if e.code == ErrorCode::TooManyErrors.as_u16() {
                    out.close(ErrorCode::TooManyErrors).await;
                }
            }
            Acking::Failed { seq } => {
                out.give_up(seq, "the batch could not be made durable")
                    .await;
            }
        }
        if out.owes() && (rx.is_empty() || out.owed_batches >= ACK_EVERY) {
            out.pay().await;
        }
    }
    out.pay().await;
    if out.writable {
        // Let the device read the last acks (or a final Error) before the
        // connection goes: closing discards stream data not yet delivered.
        let _ = out.send.finish();
        let _ = tokio::time::timeout(FLUSH_GRACE, out.send.stopped()).await;
    }
}
