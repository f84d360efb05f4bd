//! Stage three of a session: cumulative acks once units are durable.

use super::*;

/// Acks earned and not yet written: coalesced over a few durable batches.
#[derive(Default)]
struct Owed {
    batches: u32,
    rejected: Vec<RejectedRef>,
    oldest: Option<Instant>,
}

impl Owed {
    fn add(&mut self, received: Instant, rejected: Vec<RejectedRef>) {
        self.batches += 1;
        self.rejected.extend(rejected);
        self.oldest.get_or_insert(received);
    }

    /// Writes the cumulative ack owed, if any. Called before every Error
    /// frame too, so a device can attribute an Error without a seq to the
    /// oldest frame it wrote that is neither acked nor refused.
    async fn pay(&mut self, send: &mut quinn::SendStream, writable: &mut bool, slot: &DeviceSlot) {
        if self.batches == 0 {
            return;
        }
        if *writable {
            let msg = Ack {
                durable_seq: slot.durable(),
                rejected: std::mem::take(&mut self.rejected),
            };
            *writable = write_msg(send, &msg).await.is_ok();
        }
        if let Some(t) = self.oldest.take() {
            m::acked(t.elapsed(), u64::from(self.batches));
        }
        self.batches = 0;
        self.rejected.clear();
    }
}

/// Stage three: wait for durability in seq order and send cumulative acks.
pub(super) async fn ack(
    mut rx: mpsc::Receiver<Acking>,
    mut send: quinn::SendStream,
    slot: Arc<DeviceSlot>,
    conn: quinn::Connection,
    mut failed: tokio::sync::watch::Receiver<bool>,
) {
    let mut writable = true;
    let mut owed = Owed::default();
    while let Some(a) = rx.recv().await {
        match a {
            Acking::Unit {
                seq,
                done,
                rejected,
                received,
            } => match done.await {
                Ok(Ok(())) => owed.add(received, rejected),
                Ok(Err(e)) => {
                    let reason = e.to_string();
                    give_up(
                        &mut send,
                        &mut writable,
                        &conn,
                        &mut owed,
                        &slot,
                        seq,
                        &reason,
                    )
                    .await;
                }
                Err(_) => {
                    let reason = "the flusher stopped";
                    give_up(
                        &mut send,
                        &mut writable,
                        &conn,
                        &mut owed,
                        &slot,
                        seq,
                        reason,
                    )
                    .await;
                }
            },
            Acking::Duplicate { seq, received } => {
                // The original may never become durable if the engine failed.
                let durable = tokio::select! {
                    () = slot.wait_durable(seq) => true,
                    // (A closed channel disables this branch: keep waiting.)
                    Ok(_) = failed.wait_for(|f| *f) => false,
                };
                if durable {
                    owed.add(received, Vec::new());
                } else {
                    let reason = "the server failed; restart it";
                    give_up(
                        &mut send,
                        &mut writable,
                        &conn,
                        &mut owed,
                        &slot,
                        seq,
                        reason,
                    )
                    .await;
                }
            }
            Acking::Error(e) => {
                owed.pay(&mut send, &mut writable, &slot).await;
                let code = e.code;
                writable &= write_msg(&mut send, &e).await.is_ok();
                if code == ErrorCode::TooManyErrors.as_u16() {
                    close_after_flush(&mut send, writable, &conn, ErrorCode::TooManyErrors).await;
                    writable = false;
                }
            }
            Acking::Failed { seq } => {
                let reason = "the batch could not be made durable";
                give_up(
                    &mut send,
                    &mut writable,
                    &conn,
                    &mut owed,
                    &slot,
                    seq,
                    reason,
                )
                .await;
            }
        }
        if owed.batches > 0 && (rx.is_empty() || owed.batches >= ACK_EVERY) {
            owed.pay(&mut send, &mut writable, &slot).await;
        }
    }
    owed.pay(&mut send, &mut writable, &slot).await;
    if writable {
        // Let the device read the last acks (or a final Error) before the
        // connection goes: closing discards stream data not yet delivered.
        let _ = send.finish();
        let _ = tokio::time::timeout(FLUSH_GRACE, send.stopped()).await;
    }
}

/// Ends the session on a store failure: the acks already earned, then a
/// `store_unavailable` Error naming `seq`, then the close.
async fn give_up(
    send: &mut quinn::SendStream,
    writable: &mut bool,
    conn: &quinn::Connection,
    owed: &mut Owed,
    slot: &DeviceSlot,
    seq: u64,
    reason: &str,
) {
    owed.pay(send, writable, slot).await;
    send_error(send, *writable, ErrorCode::StoreUnavailable, seq, reason).await;
    close_after_flush(send, *writable, conn, ErrorCode::StoreUnavailable).await;
    *writable = false;
}

/// How long a closing session waits for its last frames to be delivered.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Finishes the stream, waits (a little) for the device to have read it,
/// then closes the connection with `code`.
async fn close_after_flush(
    send: &mut quinn::SendStream,
    writable: bool,
    conn: &quinn::Connection,
    code: ErrorCode,
) {
    if writable {
        let _ = send.finish();
        let _ = tokio::time::timeout(FLUSH_GRACE, send.stopped()).await;
    }
    conn.close(u32::from(code.as_u16()).into(), code.name().as_bytes());
}

async fn send_error(
    send: &mut quinn::SendStream,
    writable: bool,
    code: ErrorCode,
    batch_seq: u64,
    reason: &str,
) -> bool {
    if !writable {
        return false;
    }
    write_msg(
        send,
        &tillstream_protocol::Error {
            code: code.as_u16(),
            batch_seq,
            reason: reason.to_string(),
        },
    )
    .await
    .is_ok()
}
