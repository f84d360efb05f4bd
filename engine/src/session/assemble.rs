//! Stage two of a session: one commit unit per batch, in seq order.

use super::*;

/// Stage two: collect each batch's rows from its shards, in seq order, and
/// submit them with the batch's watermark as one commit unit.
pub(super) async fn assemble(
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
                permits,
                received,
            } => match unit_of(seq, events, parts, &slot).await {
                Ok((unit_rows, tickets)) => {
                    let rejected = rejected_of(seq, &unit_rows);
                    let (tx, done) = oneshot::channel();
                    let unit = CommitUnit {
                        rows: unit_rows,
                        durable: Some((slot.clone(), seq)),
                        done: Some(tx),
                        tickets,
                        _budget: permits,
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

/// The events of batch `seq` that its shards refused, for the `Ack`: the
/// plan's refusals (bad fields, wrong store) and the shards' own (a count
/// older than its SKU's late window), in event order. Every refused event
/// is stored in `rejected_events`; this tells the device which.
fn rejected_of(seq: u64, rows: &RowSet) -> Vec<RejectedRef> {
    if rows.rejected.is_empty() {
        return Vec::new();
    }
    m::events_rejected(rows.rejected.len());
    let mut out: Vec<RejectedRef> = rows
        .rejected
        .iter()
        .map(|r| RejectedRef {
            seq,
            idx: r.key.idx,
            code: r.code,
        })
        .collect();
    out.sort_unstable_by_key(|r| r.idx);
    out
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
