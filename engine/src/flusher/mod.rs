//! The flusher: acknowledges batches once the journal holds them, and
//! writes their rows to the tables in the background.
//!
//! Each session hands it one [`CommitUnit`] per batch, carrying the
//! batch's LSN (see `sequencer`) and the rows its shards derived. The
//! flusher takes units in LSN order; once the journal is durable up to a
//! unit's LSN, the unit is acknowledged (its device's watermark rises, its
//! acker writes the `Ack`) and its rows join the next materialization.
//! One `interval` after the first rows gathered, or at once when they
//! hold `max_permits` of the shards' budgets or `max_rows` rows, one
//! blocking task writes what gathered
//! with [`Store::materialize`], atomically with the LSN of its last unit,
//! and now and then [`Store::sync_materialized`] makes that durable and
//! lets the journal drop what the tables hold.
//!
//! Invariants:
//! - a unit's `done` resolves Ok only once the journal is durable past its
//!   LSN, and in LSN order; rows are materialized in LSN order, so the
//!   tables always hold exactly the records up to their checkpoint;
//! - a unit's shard budget is held until its rows are in the tables: the
//!   journal's lead over the tables, and the memory the rows take, are
//!   bounded by the shards' in-flight budgets;
//! - after a failure (the journal, the tables, or a batch applied on only
//!   some shards) nothing more is acknowledged or materialized: every
//!   waiting unit fails, and the journal rebuilds the rest at restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_storage::{RowSet, Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use crate::devices::DeviceSlot;
use crate::metrics as m;
use crate::rowpool::RowSetPool;
use crate::sequencer::{AckProgress, JournalState, Sequencer};

/// What a commit of a unit ended with.
pub(crate) type CommitResult = Result<(), Arc<StoreError>>;

/// One device batch's rows (or a dead letter), acknowledged together.
#[derive(Debug)]
pub(crate) struct CommitUnit {
    /// The batch's LSN; `None` for a dead letter (not journaled: it joins
    /// the next materialization as it is).
    pub(crate) lsn: Option<u64>,
    /// Its rows: one set per shard part, then the ledger's, in that order.
    /// Kept apart, not merged: the flusher gathers them into the next
    /// write, and merging first copied every row one more time (4% of the
    /// server's CPU at peak).
    pub(crate) rows: Vec<RowSet>,
    /// The device and seq whose watermark the rows carry, if any.
    pub(crate) durable: Option<(Arc<DeviceSlot>, u64)>,
    pub(crate) done: Option<oneshot::Sender<CommitResult>>,
    /// The shards' in-flight budget the batch holds; freed once its rows
    /// are materialized (or it failed).
    pub(crate) budget: Vec<OwnedSemaphorePermit>,
}

/// Where sessions send units.
pub(crate) type FlushSender = mpsc::Sender<CommitUnit>;

/// Settings of the materialization.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlushSettings {
    /// Materialize at least this often while rows wait.
    pub(crate) interval: Duration,
    /// Materialize once this many rows wait.
    pub(crate) max_rows: usize,
    /// Materialize once the rows waiting hold this many permits of the
    /// shards' in-flight budgets (`ShardHandle::budget`), all shards
    /// together: the interval may then be long without readers stopping
    /// on a full budget under load.
    pub(crate) max_permits: usize,
    /// Sync the tables (and truncate the journal) at most this often.
    pub(crate) sync_every: Duration,
    /// Units the sessions may queue for the flusher.
    pub(crate) queue: usize,
}

/// Starts the flusher after `checkpoint` (the tables' LSN, which recovery
/// brought up to the journal's end); it ends when every sender is dropped
/// and what it holds is materialized. It publishes each new checkpoint on
/// `materialized`.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    checkpoint: u64,
    sequencer: &Sequencer,
    failed: watch::Receiver<bool>,
    materialized: watch::Sender<u64>,
    settings: FlushSettings,
    row_sets: Arc<RowSetPool>,
) -> (FlushSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let flusher = Flusher {
        store,
        settings,
        next_lsn: checkpoint + 1,
        waiting: BTreeMap::new(),
        acc: Gathered::default(),
        spare: Vec::new(),
        in_flight: None,
        in_flight_budget: Vec::new(),
        last_sync: Instant::now(),
        error: None,
        ticks: 0,
        materialized,
        progress: sequencer.progress(),
        row_sets,
    };
    let join = tokio::spawn(flusher.run(rx, sequencer.subscribe(), failed));
    (tx, join)
}

/// Rows acknowledged and not yet materialized, with the budget they hold.
#[derive(Debug, Default)]
struct Gathered {
    /// The units' row sets, in LSN order, as the shards filled them: the
    /// store reads them in place (copying them into one set was the
    /// server's biggest memmove).
    parts: Vec<RowSet>,
    /// Rows in `parts`.
    rows: usize,
    budget: Vec<OwnedSemaphorePermit>,
    /// Permits `budget` holds.
    permits: usize,
    /// LSN of the last unit gathered (0: none since the last write).
    lsn: u64,
    /// When the first of them came (the runtime's clock: the write is
    /// timed on it).
    since: Option<tokio::time::Instant>,
}

/// A write's outcome, its row sets (to hand back to the shards) and its
/// checkpoint.
type Materialized = (Result<(), StoreError>, Vec<RowSet>, u64);

struct Flusher {
    store: Arc<dyn Store>,
    settings: FlushSettings,
    /// The next LSN to acknowledge.
    next_lsn: u64,
    /// Units that arrived ahead of `next_lsn`, or before the journal holds them.
    waiting: BTreeMap<u64, CommitUnit>,
    acc: Gathered,
    /// The parts vector of the last write, emptied, for the next one.
    spare: Vec<RowSet>,
    in_flight: Option<tokio::task::JoinHandle<Materialized>>,
    /// The budget of the rows being materialized.
    in_flight_budget: Vec<OwnedSemaphorePermit>,
    last_sync: Instant,
    error: Option<Arc<StoreError>>,
    ticks: u64,
    /// The LSN the tables hold, for passivation.
    materialized: watch::Sender<u64>,
    /// Where acknowledgements stand, for stall checks.
    progress: Arc<AckProgress>,
    /// Where a unit's emptied row sets go back to, for the shards.
    row_sets: Arc<RowSetPool>,
}

impl Flusher {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<CommitUnit>,
        mut journal: watch::Receiver<JournalState>,
        mut failed: watch::Receiver<bool>,
    ) {
        let mut open = true;
        // Whether the journal's and the engine's watch channels are still
        // open: a closed one's `changed()` is ready at once, for ever, so
        // its branch is turned off (the engine's sender goes when the
        // server drains, before this loop ends).
        let (mut journal_open, mut failed_open) = (true, true);
        let mut durable = journal.borrow().durable;
        // What gathered is written `interval` after its first rows came.
        // A periodic tick that checked their age let them wait up to two
        // intervals, and the shards' budgets with them: under load the
        // next write then met a full budget and stopped every reader.
        let due = tokio::time::sleep(self.settings.interval);
        tokio::pin!(due);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            if !open && self.waiting.is_empty() && self.in_flight.is_none() {
                if self.acc.lsn == 0 && self.acc.rows == 0 {
                    break;
                }
                if self.error.is_some() {
                    break;
                }
                // Draining: write what is left, then sync once below.
                self.start_materialize();
                continue;
            }
            let want = self.acc.since.map(|t| t + self.settings.interval);
            if want != armed {
                if let Some(at) = want {
                    due.as_mut().reset(at);
                }
                armed = want;
            }
            let may_write = armed.is_some() && self.in_flight.is_none() && self.error.is_none();
            tokio::select! {
                unit = rx.recv(), if open => match unit {
                    Some(u) => self.take(u),
                    None => open = false,
                },
                r = journal.changed(), if journal_open => {
                    if r.is_err() {
                        // The writer is gone: nothing more becomes durable.
                        if self.error.is_none() && !self.waiting.is_empty() {
                            self.fail(Arc::new(StoreError::Poisoned("the journal writer stopped".into())));
                        }
                        journal_open = false;
                        continue;
                    }
                    let s = journal.borrow_and_update().clone();
                    durable = s.durable;
                    if let Some(e) = s.error {
                        self.fail(e);
                    }
                },
                r = failed.changed(), if failed_open => {
                    if r.is_ok() && *failed.borrow() {
                        self.fail(Arc::new(StoreError::Poisoned(
                            "a batch could not be applied on all its shards; restart the server".into(),
                        )));
                    } else if r.is_err() {
                        failed_open = false;
                    }
                },
                done = wait_for(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.materialized(done);
                },
                () = &mut due, if may_write => self.start_materialize(),
            }
            self.release(durable);
            if self.acc.rows >= self.settings.max_rows
                || self.acc.permits >= self.settings.max_permits
            {
                self.start_materialize();
            }
        }
        if !self.waiting.is_empty() {
            tracing::warn!(
                units = self.waiting.len(),
                "flusher stopped with units the journal never made durable; they were not acknowledged"
            );
        }
        if self.error.is_none() {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.sync_materialized()).await {
                Ok(Ok(lsn)) => tracing::debug!(checkpoint = lsn, "tables synced"),
                Ok(Err(e)) => tracing::warn!(error = %e, "syncing the tables at shutdown failed"),
                Err(e) => tracing::warn!(error = %e, "syncing the tables at shutdown failed"),
            }
        }
        tracing::debug!(ticks = self.ticks, "flusher stopped");
    }

    fn take(&mut self, unit: CommitUnit) {
        if let Some(e) = &self.error {
            if let Some(done) = unit.done {
                let _ = done.send(Err(e.clone()));
            }
            return;
        }
        match unit.lsn {
            Some(lsn) => {
                self.waiting.insert(lsn, unit);
            }
            None => {
                // A dead letter: no LSN, no ack; it rides with the next write.
                let mut unit = unit;
                self.gather(&mut unit.rows);
                if let Some(done) = unit.done {
                    let _ = done.send(Ok(()));
                }
            }
        }
    }

    /// Acknowledges, in LSN order, every unit the journal holds.
    fn release(&mut self, durable: u64) {
        if self.error.is_some() {
            return;
        }
        let from = self.next_lsn;
        while self.next_lsn <= durable {
            let Some(mut unit) = self.waiting.remove(&self.next_lsn) else {
                break;
            };
            if let Some((slot, seq)) = unit.durable.take() {
                slot.mark_durable(seq, self.next_lsn);
            }
            if let Some(done) = unit.done.take() {
                let _ = done.send(Ok(()));
            }
            self.gather(&mut unit.rows);
            self.acc.permits += unit.budget.iter().map(|p| p.num_permits()).sum::<usize>();
            self.acc.budget.append(&mut unit.budget);
            self.acc.lsn = self.next_lsn;
            self.next_lsn += 1;
        }
        if self.next_lsn > from {
            self.progress.acked(self.next_lsn - 1);
        }
    }

    /// Moves a unit's row sets into the next write; empty ones go
    /// straight back to the shards.
    fn gather(&mut self, parts: &mut Vec<RowSet>) {
        for part in parts.drain(..) {
            if part.is_empty() {
                self.row_sets.give(part);
            } else {
                self.acc.rows += part.len();
                self.acc.parts.push(part);
            }
        }
        self.acc.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Starts writing what gathered, unless a write is under way.
    fn start_materialize(&mut self) {
        if self.in_flight.is_some() || self.error.is_some() {
            return;
        }
        if self.acc.lsn == 0 && self.acc.rows == 0 {
            // Only empty dead letters gathered: nothing to write.
            self.acc.since = None;
            return;
        }
        self.ticks += 1;
        let parts = std::mem::replace(&mut self.acc.parts, std::mem::take(&mut self.spare));
        let rows = std::mem::take(&mut self.acc.rows);
        let budget = std::mem::take(&mut self.acc.budget);
        self.acc.permits = 0;
        // Dead letters alone carry no LSN: the checkpoint stays where it is.
        let lsn = self.next_lsn - 1;
        self.acc.lsn = 0;
        self.acc.since = None;
        let sync = self.last_sync.elapsed() >= self.settings.sync_every;
        if sync {
            self.last_sync = Instant::now();
        }
        let store = self.store.clone();
        let span = tracing::debug_span!(
            "materialize",
            tick = self.ticks,
            rows,
            parts = parts.len(),
            lsn
        );
        let task = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = Instant::now();
            let r = store.materialize(&parts, lsn).and_then(|info| {
                m::commit_done(started.elapsed(), info.rows, info.bytes);
                if sync {
                    store.sync_materialized().map(|_| ())
                } else {
                    Ok(())
                }
            });
            (r, parts, lsn)
        });
        self.in_flight = Some(task);
        self.in_flight_budget = budget;
    }

    fn materialized(&mut self, done: Result<Materialized, tokio::task::JoinError>) {
        // Dropping the budget lets readers admit more.
        self.in_flight = None;
        self.in_flight_budget.clear();
        match done {
            Ok((Ok(()), mut parts, lsn)) => {
                self.materialized.send_if_modified(|m| {
                    let newer = lsn > *m;
                    *m = (*m).max(lsn);
                    newer
                });
                // The sets go back to the shards, empty with their capacity.
                for part in parts.drain(..) {
                    self.row_sets.give(part);
                }
                self.spare = parts;
                // The next write is not started here: under load it
                // starts once `max_permits` gathered (the run loop checks
                // after this). Every write costs per store and SKU it
                // touches, so writing at once what gathered meanwhile
                // made smaller writes, more of them (docs/internals/design.md,
                // "The flusher").
            }
            Ok((Err(e), _, _)) => {
                tracing::error!(error = %e, "writing the tables failed: no more acknowledgements until restart");
                m::commit_failed();
                self.fail(Arc::new(e));
            }
            Err(e) => {
                self.fail(Arc::new(StoreError::Backend {
                    op: "materialize task",
                    source: Box::new(e),
                }));
            }
        }
    }

    /// Fails every waiting unit and refuses later ones.
    fn fail(&mut self, e: Arc<StoreError>) {
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        for (_, unit) in std::mem::take(&mut self.waiting) {
            if let Some(done) = unit.done {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("next_lsn", &self.next_lsn)
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

/// The materialization under way, if any (pending for ever if none: the
/// branch that awaits it is disabled then).
async fn wait_for(
    task: &mut Option<tokio::task::JoinHandle<Materialized>>,
) -> Result<Materialized, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
