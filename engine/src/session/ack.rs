//! Stage three of a session: cumulative acks once units are durable.

use super::*;

/// Stage three: wait for durability in seq order and send cumulative acks.
pub(super) async fn ack(
    mut rx: mpsc::Receiver<Acking>,
    mut send: quinn::SendStream,
    slot: Arc<DeviceSlot>,
    conn: quinn::Connection,
    mut failed: tokio::sync::watch::Receiver<bool>,
) {
    let mut writable = true;
    let mut unsent = 0u32;
    let mut rejected: Vec<RejectedRef> = Vec::new();
    let mut oldest: Option<Instant> = None;
    while let Some(a) = rx.recv().await {
        match a {
            Acking::Unit {
                seq,
                done,
                rejected: r,
                received,
            } => match done.await {
                Ok(Ok(())) => {
                    rejected.extend(r);
                    unsent += 1;
                    oldest.get_or_insert(received);
                }
                Ok(Err(e)) => {
                    send_error(
                        &mut send,
                        writable,
                        ErrorCode::StoreUnavailable,
                        seq,
                        &e.to_string(),
                    )
                    .await;
                    close_after_flush(&mut send, writable, &conn, ErrorCode::StoreUnavailable)
                        .await;
                    writable = false;
                }
                Err(_) => {
                    close_after_flush(&mut send, writable, &conn, ErrorCode::StoreUnavailable)
                        .await;
                    writable = false;
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
                    unsent += 1;
                    oldest.get_or_insert(received);
                } else {
                    send_error(
                        &mut send,
                        writable,
                        ErrorCode::StoreUnavailable,
                        seq,
                        "the server failed; restart it",
                    )
                    .await;
                    close_after_flush(&mut send, writable, &conn, ErrorCode::StoreUnavailable)
                        .await;
                    writable = false;
                }
            }
            Acking::Error(e) => {
                let code = e.code;
                writable &= write_msg(&mut send, &e).await.is_ok();
                if code == ErrorCode::TooManyErrors.as_u16() {
                    close_after_flush(&mut send, writable, &conn, ErrorCode::TooManyErrors).await;
                    writable = false;
                }
            }
            Acking::Failed { seq } => {
                send_error(
                    &mut send,
                    writable,
                    ErrorCode::StoreUnavailable,
                    seq,
                    "the batch could not be made durable",
                )
                .await;
                close_after_flush(&mut send, writable, &conn, ErrorCode::StoreUnavailable).await;
                writable = false;
            }
        }
        if unsent > 0 && (rx.is_empty() || unsent >= ACK_EVERY) {
            if writable {
                let msg = Ack {
                    durable_seq: slot.durable(),
                    rejected: std::mem::take(&mut rejected),
                };
                writable = write_msg(&mut send, &msg).await.is_ok();
            }
            if let Some(t) = oldest.take() {
                m::acked(t.elapsed(), u64::from(unsent));
            }
            unsent = 0;
            rejected.clear();
        }
    }
    if writable {
        // Let the device read the last acks (or a final Error) before the
        // connection goes: closing discards stream data not yet delivered.
        let _ = send.finish();
        let _ = tokio::time::timeout(FLUSH_GRACE, send.stopped()).await;
    }
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
