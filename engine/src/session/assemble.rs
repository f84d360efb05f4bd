//! Stage two of a session: one commit unit per batch, in seq order.

use std::sync::Arc;

use tillstream_protocol::RejectedRef;
use tillstream_storage::RowSet;
use tokio::sync::{mpsc, oneshot};

use super::{Acking, Pending};
use crate::ctx::EngineCtx;
use crate::devices::DeviceSlot;
use crate::flusher::CommitUnit;
use crate::metrics as m;
use crate::recovery::push_ledger;
use crate::sequencer::BatchHeader;
use crate::shards::PartResult;

/// Stage two: collect each batch's rows from its shards, in seq order, and
/// submit them with the batch's watermark as one commit unit.
pub(super) async fn assemble(
    mut rx: mpsc::Receiver<Pending>,
    ack_tx: mpsc::UnboundedSender<Acking>,
    slot: Arc<DeviceSlot>,
    ctx: Arc<EngineCtx>,
) {
    while let Some(p) = rx.recv().await {
        let next = match p {
            Pending::Duplicate { seq, received } => Acking::Duplicate { seq, received },
            Pending::Error(e) => Acking::Error(e),
            Pending::Fresh {
                lsn,
                header,
                events,
                digest,
                parts,
                permits,
                received,
            } => match unit_of(header, events, digest, parts).await {
                Ok(unit_rows) => {
                    let seq = header.seq;
                    let rejected = rejected_of(seq, &unit_rows);
                    let (tx, done) = oneshot::channel();
                    let unit = CommitUnit {
                        lsn: Some(lsn),
                        rows: unit_rows,
                        durable: Some((slot.clone(), seq)),
                        done: Some(tx),
                        budget: permits,
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
                    let seq = header.seq;
                    tracing::error!(seq, error = %e, "batch could not be applied; the engine needs a restart");
                    ctx.fail(&e);
                    Acking::Failed { seq }
                }
            },
        };
        // Never waits on the acker: units reach the flusher in LSN order
        // for every device, so one whose acks are not read would hold
        // back everyone's. The queue is bounded by the reader's window
        // and the acker's write deadline. The acker may be gone with the
        // connection; units are still submitted so the ledger settles.
        let _ = ack_tx.send(next);
    }
}

/// The events of batch `seq` that its shards refused, for the `Ack`: the
/// plan's refusals (bad fields, wrong store) and the shards' own (a count
/// older than its SKU's late window), in event order. Every refused event
/// is stored in `rejected_events`; this tells the device which.
fn rejected_of(seq: u64, parts: &[RowSet]) -> Vec<RejectedRef> {
    let rejected = || parts.iter().flat_map(|p| p.rejected.iter());
    if rejected().next().is_none() {
        return Vec::new();
    }
    m::events_rejected(rejected().map(|r| r.code));
    let mut out: Vec<RejectedRef> = rejected()
        .map(|r| RejectedRef {
            seq,
            idx: r.key.idx,
            code: r.code,
        })
        .collect();
    out.sort_unstable_by_key(|r| r.idx);
    out
}

/// The rows of one batch: every shard part's, in shard order, then the
/// ledger row and the watermark (stamped with the time the batch was
/// planned and journaled with, so a replay writes the same rows).
async fn unit_of(
    header: BatchHeader,
    events: u32,
    digest: u64,
    parts: Vec<oneshot::Receiver<PartResult>>,
) -> Result<Vec<RowSet>, String> {
    let mut rows = Vec::with_capacity(parts.len() + 1);
    for part in parts {
        rows.push(
            part.await
                .map_err(|_| "a shard dropped its reply".to_string())?
                .map_err(|e| e.to_string())?,
        );
    }
    let mut ledger = RowSet::default();
    push_ledger(&mut ledger, header, events, digest);
    rows.push(ledger);
    Ok(rows)
}
