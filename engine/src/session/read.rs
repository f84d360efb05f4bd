//! Stage one of a session: read frames, validate, dedupe, and sequence
//! fresh batches (which routes them to the shards and journals them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_engine_core::ledger::{Admission, DigestCheck};
use tillstream_engine_core::route::{BatchPlan, Scope, plan_batch_scoped};
use tillstream_protocol::frame::{self, FrameHeader};
use tillstream_protocol::{Batch, ErrorCode, FrameError, MsgType, ValidatedBatch};
use tillstream_storage::{DeadLetterRow, RowSet, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

use super::{MAX_BAD_FRAMES, Pending, SessionEnd};
use crate::clock::now_us;
use crate::ctx::EngineCtx;
use crate::devices::DeviceSlot;
use crate::flusher::CommitUnit;
use crate::metrics as m;
use crate::sequencer::{BatchHeader, Unsequenced};
use crate::shards::{ApplyWork, ShardMsg};
use crate::wire::{ReadError, read_frame, with_header};

/// Stage one: read, validate, dedupe, sequence.
pub(super) async fn read_batches(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    ctx: &Arc<EngineCtx>,
    slot: &Arc<DeviceSlot>,
    scope: Scope,
    pend_tx: &mpsc::Sender<Pending>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let device = slot.device;
    let mut plan = BatchPlan::new(ctx.shard_count);
    let mut throttled = false;
    let mut refusals = Refusals {
        ctx,
        conn,
        device,
        pend_tx,
        count: 0,
    };
    loop {
        // On drain, stop reading: what was read is still committed and
        // acknowledged; the device resends the rest to the next server.
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = read_frame(recv, ctx.limits.max_frame_bytes, Some(&ctx.frame_budget)) => r,
        };
        // The frame's share of the buffer budget covers it while it is on
        // the wire; once whole and validated, what bounds it is this
        // reader's one frame at a time and then its shards' budget. Held
        // longer, frames waiting for one slow shard would take the budget
        // from readers bound for the others.
        let (header, payload, frame_permit) = match read {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ReadError::Conn(e)) => return Err(SessionEnd::Conn(e)),
            Err(ReadError::TooSlow { got, of }) => {
                m::frame_too_slow();
                ctx.auth.audit.log(
                    crate::audit::Record::new("limit", "a frame took too long to arrive")
                        .peer(conn.remote_address())
                        .device(device)
                        .detail(serde_json::json!({ "got": got, "of": of })),
                );
                return Err(SessionEnd::TooSlow(ctx.frame_budget.deadline, got, of));
            }
            Err(ReadError::Frame { err, raw }) => {
                refusals.refuse(0, err, raw).await?;
                continue;
            }
        };
        if header.msg_type != MsgType::Batch {
            let err = FrameError::Violation("only Batch frames may follow Hello");
            let raw = frame_bytes(&header, &payload);
            refusals.refuse(0, err, raw).await?;
            continue;
        }
        let payload_len = payload.len();
        let validated = ValidatedBatch::try_new(payload, ctx.limits.max_events_per_batch);
        drop(frame_permit);
        let batch = match validated {
            Ok(b) => b,
            Err((err, payload)) => {
                // A payload that passed bytecheck but broke a limit has a
                // readable seq: name it, so the device knows which batch.
                let seq = frame::access::<Batch>(&payload).map_or(0, |b| b.seq.to_native());
                refusals
                    .refuse(seq, err, frame_bytes(&header, &payload))
                    .await?;
                continue;
            }
        };
        let received = Instant::now();
        let archived = batch.get();
        let seq = archived.seq.to_native();
        let events = u32::try_from(archived.events.len()).unwrap_or(u32::MAX);
        m::batch_received(events as usize, payload_len);

        // Cheap checks first: a device that sprays store ids is refused
        // before anything of its batch is activated or applied.
        let caps = ctx.live.get();
        if let Err(err) = slot.admit_keys(
            archived,
            caps.max_stores_per_device,
            caps.max_terminals_per_device,
            caps.max_skus_per_device,
        ) {
            m::too_many_keys(err.code());
            refusals
                .refuse(seq, err, frame_bytes(&header, batch.bytes()))
                .await?;
            continue;
        }
        // A device past its event rate waits here, before admission:
        // QUIC flow control then slows it, and nothing it sent is lost.
        if ctx
            .devices
            .pace(slot, events, caps.max_events_per_s_per_device)
            .await
        {
            m::rate_limited();
            // Once per session: a throttled device would otherwise write
            // a line per batch.
            if !throttled {
                throttled = true;
                ctx.auth.audit.log(
                    crate::audit::Record::new("limit", "device past its event rate: throttled")
                        .peer(conn.remote_address())
                        .device(device)
                        .detail(serde_json::json!({ "seq": seq })),
                );
            }
        }
        let digest = crate::recovery::batch_digest(batch.bytes());
        // Everything a fresh batch waits for is taken before it is
        // admitted: its shards' budgets, in shard order, held until its
        // rows are in the tables (a full shard stops this reader, and QUIC
        // flow control the device; taken before any part is applied, no
        // applied part ever waits on a budget), and its place in the
        // pipeline. From admission to hand-off nothing then awaits: a
        // reader that ended there (drain aborts readers) would leave the
        // device's ledger admitted and never applied, or an LSN that never
        // reaches the flusher, which stalls every later ack.
        let now = now_us();
        plan.clear();
        plan_batch_scoped(archived, device, &scope, &ctx.rules, now, &mut plan);
        let mut permits = Vec::with_capacity(2);
        for (shard, _) in plan.touched() {
            let h = &ctx.shards[usize::from(shard)];
            let permit = h
                .budget
                .clone()
                .acquire_many_owned(h.units_for(payload_len))
                .await
                .map_err(|_| SessionEnd::ShuttingDown)?;
            permits.push(permit);
        }
        let handoff = pend_tx
            .reserve()
            .await
            .map_err(|_| SessionEnd::PipelineStopped)?;
        let pending = match slot.admit(seq, digest, conn) {
            None => return Err(SessionEnd::Superseded),
            Some((Admission::TooFarAhead, _)) => {
                drop((handoff, permits));
                let err = FrameError::Violation(
                    "batch seq leaps too far ahead of the device's last batch",
                );
                refusals
                    .refuse(seq, err, frame_bytes(&header, batch.bytes()))
                    .await?;
                continue;
            }
            Some((Admission::Duplicate, check)) => {
                drop(permits);
                match resend_conflict(ctx, device, seq, digest, check).await? {
                    Resend::Stored => {}
                    Resend::Conflict(why) => {
                        drop(handoff);
                        m::batch_seq_conflict();
                        refusals
                            .refuse(
                                seq,
                                FrameError::SeqConflict(why),
                                frame_bytes(&header, batch.bytes()),
                            )
                            .await?;
                        continue;
                    }
                    Resend::Unknown(why) => {
                        // Neither acknowledged nor refused for good: the
                        // device keeps the batch and resends it later.
                        tracing::warn!(seq, reason = %why, "an old resend could not be checked; the device retries");
                        let reason =
                            format!("this resend could not be checked: {why}; retry later");
                        handoff.send(Pending::Error(tillstream_protocol::Error {
                            code: ErrorCode::StoreUnavailable.as_u16(),
                            batch_seq: seq,
                            reason: reason.clone(),
                        }));
                        return Err(SessionEnd::Refused(reason));
                    }
                }
                m::batch_duplicate();
                Pending::Duplicate { seq, received }
            }
            Some((Admission::Fresh, _)) => {
                audit_out_of_scope(ctx, conn, device, seq, &plan);
                let batch = Arc::new(batch);
                let header = BatchHeader {
                    device,
                    seq,
                    now_us: now,
                    max_future_s: u32::try_from(ctx.rules.max_future_us / 1_000_000)
                        .unwrap_or(u32::MAX),
                    scope,
                };
                let mut parts = Vec::with_capacity(2);
                let sequenced = ctx.sequencer.submit(header, batch.clone(), |lsn| {
                    for (shard, items) in plan.touched() {
                        let (tx, rx) = oneshot::channel();
                        let work = ApplyWork {
                            lsn,
                            batch: batch.clone(),
                            device,
                            items: items.to_vec(),
                            reply: tx,
                        };
                        let actor = &ctx.shards[usize::from(shard)].actor;
                        if actor.send_message(ShardMsg::Apply(work)).is_err() {
                            return Err(shard);
                        }
                        parts.push(rx);
                    }
                    Ok(())
                });
                let lsn = match sequenced {
                    Ok(lsn) => lsn,
                    Err(Unsequenced::Dispatch(shard)) => {
                        // Earlier parts of this batch may already be
                        // applied: the sequencer takes no batch after it.
                        ctx.fail("a shard actor stopped");
                        return Err(SessionEnd::ShardGone(shard));
                    }
                    Err(Unsequenced::Halted) => return Err(SessionEnd::EngineFailed),
                };
                Pending::Fresh {
                    lsn,
                    header,
                    events,
                    digest,
                    parts,
                    permits,
                    received,
                }
            }
        };
        handoff.send(pending);
    }
}

/// What a batch whose seq was already admitted is.
enum Resend {
    /// The batch stored under its seq: acknowledged again.
    Stored,
    /// Not the batch stored under that seq: its bytes differ, or (for a
    /// seq older than the recent digests) no batch was ever stored under
    /// it. Acknowledging it would tell the device a batch is stored that
    /// is not: refused for good.
    Conflict(&'static str),
    /// The ledger could not say (unreadable, or the tables far behind the
    /// journal): a retryable refusal, never an unchecked ack.
    Unknown(String),
}

/// Checks a resend against the recent digests, then the batch ledger.
async fn resend_conflict(
    ctx: &EngineCtx,
    device: u64,
    seq: u64,
    digest: u64,
    check: DigestCheck,
) -> Result<Resend, SessionEnd> {
    const OTHER_BATCH: &str = "another batch with this seq was stored; the device's seq counter was reset or its id is used by another";
    match check {
        DigestCheck::Same => Ok(Resend::Stored),
        DigestCheck::Different => Ok(Resend::Conflict(OTHER_BATCH)),
        DigestCheck::Unknown => {
            let ledger_digest = || {
                let store = ctx.store.clone();
                async move {
                    tokio::task::spawn_blocking(move || store.ledger_digest(device, seq))
                        .await
                        .map_err(|e| SessionEnd::Conn(format!("batch ledger read: {e}")))
                }
            };
            let mut stored = ledger_digest().await?;
            if matches!(stored, Ok(None)) {
                // The batch may be journaled and acknowledged but not yet
                // in the tables (they trail the journal by a flush): once
                // they hold everything journaled now, the answer is final.
                if ctx.tables_caught_up(Duration::from_secs(10)).await {
                    stored = ledger_digest().await?;
                } else {
                    stored = Err(StoreError::Poisoned(
                        "the tables did not catch up with the journal".into(),
                    ));
                }
            }
            Ok(match stored {
                // 0: a ledger row from before digests were kept, which
                // says only that a batch was stored under this seq.
                Ok(Some(d)) if d == digest || d == 0 => Resend::Stored,
                Ok(Some(_)) => Resend::Conflict(OTHER_BATCH),
                Ok(None) => Resend::Conflict(
                    "no batch was stored under this seq, which is below the device's watermark",
                ),
                Err(e) => Resend::Unknown(e.to_string()),
            })
        }
    }
}

/// A refused frame's bytes, header rebuilt, capped for a dead letter. Only
/// on refusal paths: it checksums the payload again.
fn frame_bytes(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    FrameHeader::write_versioned(header.version, header.msg_type, payload, &mut head);
    with_header(&head, payload)
}

/// The bad frames of one session: each gets an `Error` with its code (after
/// the acks owed, through the pipeline), is counted and kept as a dead
/// letter. One that breaks framing ends the session, and so does one more
/// than [`MAX_BAD_FRAMES`].
struct Refusals<'a> {
    ctx: &'a EngineCtx,
    conn: &'a quinn::Connection,
    device: u64,
    pend_tx: &'a mpsc::Sender<Pending>,
    count: u32,
}

impl Refusals<'_> {
    async fn refuse(
        &mut self,
        batch_seq: u64,
        err: FrameError,
        raw: Vec<u8>,
    ) -> Result<(), SessionEnd> {
        self.count += 1;
        let too_many = self.count > MAX_BAD_FRAMES;
        let code = if too_many && err.keeps_framing() {
            ErrorCode::TooManyErrors
        } else {
            err.code()
        };
        m::frame_refused(err.code());
        tracing::info!(code = code.name(), error = %err, "frame refused");
        if is_limit(code) {
            let reason = err.to_string();
            self.ctx.auth.audit.log(
                crate::audit::Record::new("limit", &reason)
                    .peer(self.conn.remote_address())
                    .device(self.device)
                    .detail(serde_json::json!({ "code": code.name(), "seq": batch_seq })),
            );
        }
        let mut rows = RowSet::default();
        rows.dead_letters.push(DeadLetterRow {
            ts_us: now_us(),
            device: Some(self.device),
            peer: self.conn.remote_address().to_string(),
            code: err.code().as_u16(),
            reason: err.to_string(),
            raw,
        });
        m::dead_letter();
        let _ = self
            .ctx
            .flush
            .send(CommitUnit {
                lsn: None,
                rows: vec![rows],
                durable: None,
                done: None,
                budget: Vec::new(),
            })
            .await;
        let _ = self
            .pend_tx
            .send(Pending::Error(tillstream_protocol::Error {
                code: code.as_u16(),
                batch_seq,
                reason: err.to_string(),
            }))
            .await;
        if !err.keeps_framing() {
            return Err(SessionEnd::BadFrame(err));
        }
        if too_many {
            return Err(SessionEnd::TooManyBadFrames);
        }
        Ok(())
    }
}

/// Events refused because the credential does not allow them are counted
/// and audited, one line per batch (they are also in the ack and in
/// `rejected_events`, like any refused event).
fn audit_out_of_scope(
    ctx: &EngineCtx,
    conn: &quinn::Connection,
    device: u64,
    seq: u64,
    plan: &BatchPlan,
) {
    use tillstream_protocol::RejectCode;
    let count = |code: RejectCode| {
        plan.rejected
            .iter()
            .filter(|r| r.code == code.as_u16())
            .count() as u64
    };
    let (store, kind) = (
        count(RejectCode::WrongStore),
        count(RejectCode::NotPermitted),
    );
    if store + kind == 0 {
        return;
    }
    for (code, n) in [
        (RejectCode::WrongStore, store),
        (RejectCode::NotPermitted, kind),
    ] {
        if n > 0 {
            m::authz_refused(code, n);
        }
    }
    ctx.auth.audit.log(
        crate::audit::Record::new(
            "authz_refused",
            "events outside the credential's store or role",
        )
        .peer(conn.remote_address())
        .device(device)
        .detail(serde_json::json!({ "seq": seq, "wrong_store": store, "not_permitted": kind })),
    );
}

/// Refusals that are limit decisions (the audit log keeps them), as
/// opposed to malformed frames.
fn is_limit(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::FrameTooLarge
            | ErrorCode::BatchTooLarge
            | ErrorCode::TooManyStores
            | ErrorCode::TooManyTerminals
            | ErrorCode::TooManySkus
            | ErrorCode::TooManyErrors
            | ErrorCode::SeqConflict
    )
}
