//! One device connection: a reader that validates and routes batches, an
//! assembler that turns each batch's shard replies into one commit unit,
//! and an acker that sends cumulative acks once units are durable.
//!
//! ```text
//! reader --Pending--> assembler --Acking--> acker --Ack frames--> device
//!   |  (bounded: max_inflight_batches)   |
//!   +--ApplyWork--> shard actors ---------+ (rows back through oneshots)
//!                    assembler --CommitUnit--> flusher
//! ```
//!
//! Invariants:
//! - batches pass every stage in seq order, so a device's commit units
//!   reach the flusher in seq order;
//! - once a batch is admitted its unit is always submitted, even if the
//!   connection dies, so the device's ledger becomes quiescent again;
//! - an ack is only written after the flusher resolved the unit Ok (or,
//!   for a replayed batch, once the device's durable seq covers it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tillstream_engine_core::flush::PartTicket;
use tillstream_engine_core::ledger::Admission;
use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_protocol::frame::{FrameHeader, decode};
use tillstream_protocol::{
    Ack, ErrorCode, FrameError, Hello, MsgType, Reject, RejectedRef, ValidatedBatch, Welcome,
};
use tillstream_storage::{BatchRow, DeadLetterRow, RowSet, WatermarkRow};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::clock::now_us;
use crate::devices::DeviceSlot;
use crate::flusher::{CommitResult, CommitUnit};
use crate::metrics as m;
use crate::server::EngineCtx;
use crate::shards::{ApplyWork, PartResult, ShardMsg};
use crate::wire::{ReadError, read_frame, with_header, write_msg};

/// Bad frames tolerated on one connection before it is closed.
const MAX_BAD_FRAMES: u32 = 16;
/// How long a device has to open its stream and say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Hello payload: before a device is known, it may not make the
/// server allocate a full batch frame.
const HELLO_MAX_BYTES: u32 = 16 * 1024;
/// How long a Hello waits for an older session's batches to become durable.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Acks are coalesced over at most this many durable batches.
const ACK_EVERY: u32 = 32;

enum Pending {
    Fresh {
        seq: u64,
        events: u32,
        parts: Vec<oneshot::Receiver<PartResult>>,
        rejected: Vec<RejectedRef>,
        received: Instant,
    },
    Duplicate {
        seq: u64,
        received: Instant,
    },
    Error(tillstream_protocol::Error),
}

enum Acking {
    Unit {
        seq: u64,
        done: oneshot::Receiver<CommitResult>,
        rejected: Vec<RejectedRef>,
        received: Instant,
    },
    Duplicate {
        seq: u64,
        received: Instant,
    },
    Error(tillstream_protocol::Error),
    Failed {
        seq: u64,
    },
}

/// Serves one connection until it ends.
pub(crate) async fn serve(
    conn: quinn::Connection,
    ctx: Arc<EngineCtx>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let peer = conn.remote_address();
    let span = tracing::info_span!("session", %peer, device = tracing::field::Empty);
    async move {
        m::connections(1.0);
        let result = session(&conn, &ctx, stop).await;
        m::connections(-1.0);
        match result {
            Ok(()) => tracing::debug!("session ended"),
            Err(reason) => tracing::info!(%reason, "session ended"),
        }
    }
    .instrument(span)
    .await;
}

async fn session(
    conn: &quinn::Connection,
    ctx: &Arc<EngineCtx>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no stream opened in time".to_string())?
        .map_err(|e| e.to_string())?;

    // Hello.
    let first = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv, HELLO_MAX_BYTES))
        .await
        .map_err(|_| "no Hello in time".to_string())?;
    let hello = match first {
        Ok(Some((h, payload))) if h.msg_type == MsgType::Hello => decode::<Hello>(&payload),
        Ok(Some(_)) => Err(FrameError::Violation("the first frame must be Hello")),
        Ok(None) => return Ok(()),
        Err(ReadError::Conn(e)) => return Err(e),
        Err(ReadError::Frame { err, .. }) => Err(err),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(err) => {
            refuse(&mut send, err.code(), &format!("bad Hello: {err}")).await;
            return Err(format!("bad Hello: {err}"));
        }
    };
    let device = hello.device;
    tracing::Span::current().record("device", device);

    if ctx.draining.load(Ordering::Relaxed) {
        refuse(
            &mut send,
            ErrorCode::Draining,
            "the server is draining; reconnect later",
        )
        .await;
        return Err("refused: draining".into());
    }
    if let Err(e) = ctx.store.check_writable() {
        refuse(&mut send, ErrorCode::StoreUnavailable, &e.to_string()).await;
        return Err(format!("refused: {e}"));
    }
    let slot = match ctx.devices.slot(device, &ctx.store).await {
        Ok(s) => s,
        Err(e) => {
            refuse(&mut send, ErrorCode::StoreUnavailable, &e.to_string()).await;
            return Err(format!("refused: {e}"));
        }
    };
    slot.take_ownership(conn);
    if !slot.wait_quiescent(QUIESCE_TIMEOUT).await {
        slot.release(conn);
        refuse(
            &mut send,
            ErrorCode::Busy,
            "earlier batches of this device are still being committed",
        )
        .await;
        return Err("refused: not quiescent".into());
    }
    let welcome = Welcome {
        durable_seq: slot.durable(),
        limits: ctx.limits,
    };
    write_msg(&mut send, &welcome).await?;
    tracing::debug!(durable_seq = welcome.durable_seq, "welcomed");

    let window = ctx.limits.max_inflight_batches.max(1) as usize;
    let (pend_tx, pend_rx) = mpsc::channel(window);
    let (ack_tx, ack_rx) = mpsc::channel(window);
    let assembler =
        tokio::spawn(assemble(pend_rx, ack_tx, slot.clone(), ctx.clone()).in_current_span());
    let acker = tokio::spawn(
        ack(
            ack_rx,
            send,
            slot.clone(),
            conn.clone(),
            ctx.failed.subscribe(),
        )
        .in_current_span(),
    );

    let outcome = read_batches(&mut recv, conn, ctx, &slot, &pend_tx, stop).await;
    drop(pend_tx);
    let _ = assembler.await;
    let _ = acker.await;
    slot.release(conn);
    outcome
}

async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, reason: &str) {
    m::sessions_refused(code);
    let _ = write_msg(
        send,
        &Reject {
            code: code.as_u16(),
            reason: reason.to_string(),
        },
    )
    .await;
    let _ = send.finish();
    // Give the Reject a moment to leave before the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

/// Stage one: read, validate, dedupe, route.
async fn read_batches(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    ctx: &Arc<EngineCtx>,
    slot: &Arc<DeviceSlot>,
    pend_tx: &mpsc::Sender<Pending>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let device = slot.device;
    let mut plan = BatchPlan::new(ctx.shard_count);
    let mut bad_frames = 0u32;
    loop {
        // On drain, stop reading: what was read is still committed and
        // acknowledged; the device resends the rest to the next server.
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = read_frame(recv, ctx.limits.max_frame_bytes) => r,
        };
        let (header, payload) = match read {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ReadError::Conn(e)) => return Err(e),
            Err(ReadError::Frame { err, raw }) => {
                bad_frames += 1;
                let fatal = !err.keeps_framing() || bad_frames > MAX_BAD_FRAMES;
                refuse_frame(ctx, conn, device, 0, &err, raw, pend_tx, fatal).await;
                if fatal {
                    return Err(format!("closed after a bad frame: {err}"));
                }
                continue;
            }
        };
        if header.msg_type != MsgType::Batch {
            bad_frames += 1;
            let err = FrameError::Violation("only Batch frames may follow Hello");
            let raw = with_header(&header_bytes(&header, &payload), &payload);
            let fatal = bad_frames > MAX_BAD_FRAMES;
            refuse_frame(ctx, conn, device, 0, &err, raw, pend_tx, fatal).await;
            if fatal {
                return Err("too many bad frames".into());
            }
            continue;
        }
        let payload_len = payload.len();
        let head = header_bytes(&header, &payload);
        let batch = match ValidatedBatch::try_new(payload, ctx.limits.max_events_per_batch) {
            Ok(b) => b,
            Err((err, payload)) => {
                bad_frames += 1;
                let fatal = bad_frames > MAX_BAD_FRAMES;
                let raw = with_header(&head, &payload);
                refuse_frame(ctx, conn, device, 0, &err, raw, pend_tx, fatal).await;
                if fatal {
                    return Err("too many bad frames".into());
                }
                continue;
            }
        };
        let received = Instant::now();
        let archived = batch.get();
        let seq = archived.seq.to_native();
        let events = u32::try_from(archived.events.len()).unwrap_or(u32::MAX);
        m::batch_received(events as usize, payload_len);

        let pending = match slot.admit(seq, conn) {
            None => return Err("superseded by a newer connection of this device".into()),
            Some(Admission::TooFarAhead) => {
                bad_frames += 1;
                let err = FrameError::Violation(
                    "batch seq leaps too far ahead of the device's last batch",
                );
                let raw = with_header(&head, &archived_bytes(&batch));
                refuse_frame(
                    ctx,
                    conn,
                    device,
                    seq,
                    &err,
                    raw,
                    pend_tx,
                    bad_frames > MAX_BAD_FRAMES,
                )
                .await;
                if bad_frames > MAX_BAD_FRAMES {
                    return Err("too many bad frames".into());
                }
                continue;
            }
            Some(Admission::Duplicate) => {
                m::batch_duplicate();
                Pending::Duplicate { seq, received }
            }
            Some(Admission::Fresh) => {
                plan.clear();
                plan_batch(archived, device, &ctx.rules, now_us(), &mut plan);
                if !plan.rejected.is_empty() {
                    m::events_rejected(plan.rejected.len());
                }
                let batch = Arc::new(batch);
                let mut parts = Vec::with_capacity(2);
                for (shard, items) in plan.touched() {
                    let h = &ctx.shards[usize::from(shard)];
                    // Back-pressure: a full shard stops this reader, and
                    // QUIC flow control then stops the device.
                    let permit = h
                        .budget
                        .clone()
                        .acquire_many_owned(h.units_for(payload_len))
                        .await
                        .map_err(|_| "server shutting down".to_string())?;
                    let (tx, rx) = oneshot::channel();
                    let work = ApplyWork {
                        batch: batch.clone(),
                        device,
                        items: items.to_vec(),
                        reply: tx,
                        permit,
                    };
                    if h.actor.send_message(ShardMsg::Apply(work)).is_err() {
                        // Earlier parts of this batch may already be applied.
                        ctx.fail("a shard actor stopped");
                        return Err(format!("shard {shard} is gone"));
                    }
                    parts.push(rx);
                }
                Pending::Fresh {
                    seq,
                    events,
                    parts,
                    rejected: plan.rejected.clone(),
                    received,
                }
            }
        };
        if pend_tx.send(pending).await.is_err() {
            return Err("session pipeline stopped".into());
        }
    }
}

/// The payload bytes of a validated batch (for a dead letter).
fn archived_bytes(batch: &ValidatedBatch) -> Vec<u8> {
    batch.bytes().to_vec()
}

/// Rebuilds the 16 header bytes of a parsed frame (for dead letters).
fn header_bytes(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    FrameHeader::write(header.msg_type, payload, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
async fn refuse_frame(
    ctx: &Arc<EngineCtx>,
    conn: &quinn::Connection,
    device: u64,
    batch_seq: u64,
    err: &FrameError,
    raw: Vec<u8>,
    pend_tx: &mpsc::Sender<Pending>,
    fatal: bool,
) {
    let code = if fatal && err.keeps_framing() {
        ErrorCode::TooManyErrors
    } else {
        err.code()
    };
    m::frame_refused(err.code());
    tracing::info!(code = code.name(), error = %err, "frame refused");
    let mut rows = RowSet::default();
    rows.dead_letters.push(DeadLetterRow {
        ts_us: now_us(),
        device: Some(device),
        peer: conn.remote_address().to_string(),
        code: err.code().as_u16(),
        reason: err.to_string(),
        raw,
    });
    m::dead_letter();
    let _ = ctx
        .flush
        .send(CommitUnit {
            rows,
            durable: None,
            done: None,
            tickets: Vec::new(),
        })
        .await;
    let _ = pend_tx
        .send(Pending::Error(tillstream_protocol::Error {
            code: code.as_u16(),
            batch_seq,
            reason: err.to_string(),
        }))
        .await;
}

/// Stage two: collect each batch's rows from its shards, in seq order, and
/// submit them with the batch's watermark as one commit unit.
async fn assemble(
    mut rx: mpsc::Receiver<Pending>,
    ack_tx: mpsc::Sender<Acking>,
    slot: Arc<DeviceSlot>,
    ctx: Arc<EngineCtx>,
) {
    while let Some(p) = rx.recv().await {
        let next = match p {
            Pending::Duplicate { seq, received } => Acking::Duplicate { seq, received },
            Pending::Error(e) => Acking::Error(e),
            Pending::Fresh {
                seq,
                events,
                parts,
                rejected,
                received,
            } => match unit_of(seq, events, parts, &slot).await {
                Ok((unit_rows, tickets)) => {
                    let (tx, done) = oneshot::channel();
                    let unit = CommitUnit {
                        rows: unit_rows,
                        durable: Some((slot.clone(), seq)),
                        done: Some(tx),
                        tickets,
                    };
                    if ctx.flush.send(unit).await.is_err() {
                        Acking::Failed { seq }
                    } else {
                        Acking::Unit {
                            seq,
                            done,
                            rejected,
                            received,
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "batch could not be applied; the engine needs a restart");
                    ctx.fail(&e);
                    Acking::Failed { seq }
                }
            },
        };
        // The acker may be gone with the connection; units are still
        // submitted so the device's ledger settles.
        let _ = ack_tx.send(next).await;
    }
}

async fn unit_of(
    seq: u64,
    events: u32,
    parts: Vec<oneshot::Receiver<PartResult>>,
    slot: &DeviceSlot,
) -> Result<(RowSet, Vec<PartTicket>), String> {
    let mut rows = RowSet::default();
    let mut tickets = Vec::with_capacity(parts.len());
    for part in parts {
        let (mut r, ticket) = part
            .await
            .map_err(|_| "a shard dropped its reply".to_string())?
            .map_err(|e| e.to_string())?;
        rows.append(&mut r);
        tickets.push(ticket);
    }
    let now = now_us();
    rows.batches.push(BatchRow {
        device: slot.device,
        seq,
        events,
        received_at_us: now,
    });
    rows.watermarks.push(WatermarkRow {
        device: slot.device,
        seq,
        updated_at_us: now,
    });
    Ok((rows, tickets))
}

/// Stage three: wait for durability in seq order and send cumulative acks.
async fn ack(
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
