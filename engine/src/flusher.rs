//! The group-commit flusher: one task that takes the commit units of every
//! session, writes them in one atomic, durable store commit per tick, then
//! raises the devices' durable watermarks and wakes the sessions to ack.
//!
//! Invariants:
//! - one commit is in flight at a time, and a unit is only committed with
//!   (or after) every unit holding an earlier part of any shard it touched,
//!   and every earlier seq of its device (`CommitOrder`). A shard's rows
//!   build on what it applied before (a SKU's level, a terminal's minute),
//!   so committing out of that order could persist a level counting rows
//!   that are not yet durable;
//! - a unit's `done` resolves Ok only after `Store::commit` returned Ok for
//!   a commit that held all of its rows;
//! - after a failed commit the store is poisoned: every later unit fails,
//!   nothing more is acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_storage::{RowSet, Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tracing::Instrument;

use tillstream_engine_core::flush::{CommitOrder, PartTicket};

use crate::devices::DeviceSlot;
use crate::metrics as m;

/// What a commit of a unit ended with.
pub(crate) type CommitResult = Result<(), Arc<StoreError>>;

/// One device batch's rows (or a dead letter), to be committed together.
#[derive(Debug)]
pub(crate) struct CommitUnit {
    pub(crate) rows: RowSet,
    /// The device and seq whose watermark the rows carry, if any.
    pub(crate) durable: Option<(Arc<DeviceSlot>, u64)>,
    pub(crate) done: Option<oneshot::Sender<CommitResult>>,
    /// Where each of the batch's parts stands in its shard's apply order.
    pub(crate) tickets: Vec<PartTicket>,
    /// The shards' in-flight budget the batch holds; freed when the unit
    /// is dropped, after its commit (or its failure).
    pub(crate) _budget: Vec<OwnedSemaphorePermit>,
}

/// Where sessions send units.
pub(crate) type FlushSender = mpsc::Sender<CommitUnit>;

/// Settings of the group commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlushSettings {
    pub(crate) interval: Duration,
    pub(crate) max_rows: usize,
}

/// Starts the flusher; it ends when every sender is dropped and the queue
/// is drained.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    failed: watch::Receiver<bool>,
    settings: FlushSettings,
    queue: usize,
) -> (FlushSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue);
    let join = tokio::spawn(run(store, failed, settings, rx));
    (tx, join)
}

/// Units received and not yet committed, in an order that keeps every
/// shard's parts in its apply order (see `CommitOrder`).
struct Intake {
    order: CommitOrder<CommitUnit>,
    ready: Vec<CommitUnit>,
    ready_rows: usize,
    released: usize,
}

impl Intake {
    fn take(&mut self, mut unit: CommitUnit) {
        let device = unit.durable.as_ref().map(|(slot, _)| slot.device);
        let tickets = std::mem::take(&mut unit.tickets);
        self.order.push(unit, device, &tickets);
        self.released = self.ready.len();
        self.order.release(&mut self.ready);
        for u in &self.ready[self.released..] {
            self.ready_rows += u.rows.len();
        }
    }
}

/// True when the engine failed and units wait that must be failed.
fn must_fail(failed: &watch::Receiver<bool>, intake: &Intake) -> bool {
    *failed.borrow() && !intake.order.is_empty()
}

async fn run(
    store: Arc<dyn Store>,
    mut failed: watch::Receiver<bool>,
    settings: FlushSettings,
    mut rx: mpsc::Receiver<CommitUnit>,
) {
    let mut intake = Intake {
        order: CommitOrder::new(),
        ready: Vec::new(),
        ready_rows: 0,
        released: 0,
    };
    let mut acc = RowSet::default();
    let mut open = true;
    let mut poisoned: Option<Arc<StoreError>> = None;
    let mut tick: u64 = 0;
    let mut failed_gone = false;
    while open {
        // Gather: block until at least one unit may be committed, then give
        // others up to `interval` to share its fsync. A failure wakes it
        // too, so units blocked behind a part that will never come are
        // failed rather than left waiting.
        while intake.ready.is_empty() {
            if must_fail(&failed, &intake) {
                break;
            }
            let failing = *failed.borrow();
            let unit = if failing || failed_gone {
                rx.recv().await
            } else {
                tokio::select! {
                    u = rx.recv() => u,
                    r = failed.changed() => {
                        failed_gone = r.is_err();
                        continue;
                    }
                }
            };
            match unit {
                Some(u) => intake.take(u),
                None => {
                    open = false;
                    break;
                }
            }
        }
        if intake.ready.is_empty() && !must_fail(&failed, &intake) {
            break;
        }
        let deadline = tokio::time::Instant::now() + settings.interval;
        while open && intake.ready_rows < settings.max_rows {
            match rx.try_recv() {
                Ok(u) => intake.take(u),
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(u)) => intake.take(u),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
            }
        }

        tick += 1;
        if poisoned.is_none() && *failed.borrow() {
            // A batch was applied on only some of its shards: units waiting
            // for its missing parts would wait forever, and a device's later
            // batches must not become durable past it. Fail them all.
            poisoned = Some(Arc::new(StoreError::Poisoned(
                "a batch could not be applied on all its shards; restart the server".into(),
            )));
        }
        if poisoned.is_some() {
            intake.order.drain_all(&mut intake.ready);
        }
        let mut units = std::mem::take(&mut intake.ready);
        intake.ready_rows = 0;
        for u in &mut units {
            acc.append(&mut u.rows);
        }
        let rows = std::mem::take(&mut acc);
        let result: CommitResult = if let Some(p) = &poisoned {
            Err(p.clone())
        } else {
            let span = tracing::debug_span!("flush", tick, rows = rows.len(), units = units.len());
            let st = store.clone();
            let started = Instant::now();
            let (res, rows) = async move {
                match tokio::task::spawn_blocking(move || {
                    let r = st.commit(&rows);
                    (r, rows)
                })
                .await
                {
                    Ok((r, rows)) => (r, Some(rows)),
                    Err(e) => (
                        Err(StoreError::Backend {
                            op: "commit task",
                            source: Box::new(e),
                        }),
                        None,
                    ),
                }
            }
            .instrument(span)
            .await;
            if let Some(mut rows) = rows {
                rows.clear();
                acc = rows; // keep the capacity for the next tick
            }
            match res {
                Ok(info) => {
                    m::commit_done(started.elapsed(), info.rows, info.bytes, units.len());
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed: no more acknowledgements until restart");
                    m::commit_failed();
                    let e = Arc::new(e);
                    poisoned = Some(e.clone());
                    Err(e)
                }
            }
        };
        for u in units.drain(..) {
            if result.is_ok()
                && let Some((slot, seq)) = u.durable
            {
                slot.mark_durable(seq);
            }
            if let Some(done) = u.done {
                let _ = done.send(result.clone());
            }
        }
        intake.ready = units; // reuse the allocation
    }
    if !intake.order.is_empty() {
        tracing::warn!(
            units = intake.order.pending(),
            "flusher stopped with units whose earlier shard parts never arrived; they were not acknowledged"
        );
    }
    tracing::debug!(ticks = tick, "flusher stopped");
}
