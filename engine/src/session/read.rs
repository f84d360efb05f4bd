//! Stage one of a session: read frames, validate, dedupe, route to shards.

use super::*;

/// Stage one: read, validate, dedupe, route.
pub(super) async fn read_batches(
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
            let raw = frame_bytes(&header, &payload);
            let fatal = bad_frames > MAX_BAD_FRAMES;
            refuse_frame(ctx, conn, device, 0, &err, raw, pend_tx, fatal).await;
            if fatal {
                return Err("too many bad frames".into());
            }
            continue;
        }
        let payload_len = payload.len();
        let batch = match ValidatedBatch::try_new(payload, ctx.limits.max_events_per_batch) {
            Ok(b) => b,
            Err((err, payload)) => {
                bad_frames += 1;
                let fatal = bad_frames > MAX_BAD_FRAMES;
                let raw = frame_bytes(&header, &payload);
                // A payload that passed bytecheck but broke a limit has a
                // readable seq: name it, so the device knows which batch.
                let seq =
                    tillstream_protocol::frame::access::<tillstream_protocol::Batch>(&payload)
                        .map_or(0, |b| b.seq.to_native());
                refuse_frame(ctx, conn, device, seq, &err, raw, pend_tx, fatal).await;
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
                let raw = frame_bytes(&header, batch.bytes());
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
                let now = now_us();
                plan.clear();
                plan_batch(archived, device, &ctx.rules, now, &mut plan);
                let batch = Arc::new(batch);
                // Back-pressure: every shard's permits first, in shard
                // order, and held until the batch's rows are in the tables.
                // A full shard stops this reader, and QUIC flow control
                // then stops the device. Taking them all before any part
                // is applied means no applied part ever waits on a budget,
                // so the units that hold the budget can always complete.
                let mut permits = Vec::with_capacity(2);
                for (shard, _) in plan.touched() {
                    let h = &ctx.shards[usize::from(shard)];
                    let permit = h
                        .budget
                        .clone()
                        .acquire_many_owned(h.units_for(payload_len))
                        .await
                        .map_err(|_| "server shutting down".to_string())?;
                    permits.push(permit);
                }
                let header = BatchHeader {
                    device,
                    seq,
                    now_us: now,
                };
                let mut parts = Vec::with_capacity(2);
                let sequenced = ctx.sequencer.submit(header, batch.bytes(), |_lsn| {
                    for (shard, items) in plan.touched() {
                        let (tx, rx) = oneshot::channel();
                        let work = ApplyWork {
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
                    Err(shard) => {
                        // Earlier parts of this batch may already be applied.
                        ctx.fail("a shard actor stopped");
                        return Err(format!("shard {shard} is gone"));
                    }
                };
                Pending::Fresh {
                    lsn,
                    header,
                    events,
                    parts,
                    permits,
                    received,
                }
            }
        };
        if pend_tx.send(pending).await.is_err() {
            return Err("session pipeline stopped".into());
        }
    }
}

/// A refused frame's bytes, header rebuilt, capped for a dead letter. Only
/// on refusal paths: it checksums the payload again.
fn frame_bytes(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    FrameHeader::write(header.msg_type, payload, &mut head);
    with_header(&head, payload)
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
            lsn: None,
            rows,
            durable: None,
            done: None,
            budget: Vec::new(),
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
