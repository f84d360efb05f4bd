//! Materialization without transactions (docs/internals/design.md, "ScyllaDB").
//!
//! A batch's rows reach the cluster in this order:
//! 1. the event-keyed rows (idempotent: a replay writes the same keys and
//!    values again);
//! 2. the snapshot rows (stock levels, rollups), *staged* under the
//!    materialization's (node, LSN);
//! 3. the watermarks;
//! 4. the checkpoint: the commit point;
//! 5. the snapshot rows into their tables, then `snapshots_at`.
//!
//! So the snapshot tables only ever change after a checkpoint, to the
//! state as of that checkpoint. A crash before 4 leaves them at the
//! previous checkpoint, and the replay of the journal after it starts from
//! exactly that state: nothing is applied twice. A crash between 4 and 5
//! is finished at the next start by copying the staged rows again.

use std::sync::atomic::Ordering;

use super::mapping::writer_hash;
use super::snapshots::{STAGED_PER_CHUNK, Snapshots};
use super::{ScyllaStore, backend_err, now_us};
use tillstream_storage::rows::{RowSet, StockLevelRow, TerminalRollupRow};
use tillstream_storage::store::{CommitInfo, StoreError};

impl ScyllaStore {
    /// `Store::materialize`: steps 1 to 5 above.
    pub(super) fn materialize_rows(
        &self,
        rows: &RowSet,
        lsn: u64,
    ) -> Result<CommitInfo, StoreError> {
        let snap = Snapshots::newest_of(rows);
        let info = self.write_to_commit_point(rows, &snap, lsn)?;
        self.apply_snapshots(&snap, lsn)?;
        Ok(info)
    }

    /// Steps 1 to 4: everything up to and including the checkpoint.
    pub(super) fn write_to_commit_point(
        &self,
        rows: &RowSet,
        snap: &Snapshots,
        lsn: u64,
    ) -> Result<CommitInfo, StoreError> {
        let n = self.cfg.max_in_flight;
        let mut info = CommitInfo::default();
        self.until_written("a materialization", || {
        let events = self.st.event_writes(rows, lsn, writer_hash(&self.cfg.node_id));
        let staged = self.st.staged_writes(&self.cfg.node_id, lsn, snap);
        let marks = self.st.mark_writes(rows);
        info = CommitInfo {
            rows: rows.len(),
            records: events.len() + staged.len() * 2 + marks.len() + 1,
            bytes: 0,
        };
        self.block(async {
            self.st.run(&self.session, events, n).await?;
            self.st.run(&self.session, staged, n).await?;
            self.st.run(&self.session, marks, n).await?;
            // The commit point, under this start's generation: a fenced
            // holder's checkpoint does not land (`fence.rs`).
            let result = self
                .session
                .execute_unpaged(
                    &self.st.checkpoint_write,
                    (
                        lsn as i64,
                        now_us(),
                        &self.cfg.node_id,
                        self.generation.load(Ordering::Acquire) as i64,
                    ),
                )
                .await
                .map_err(backend_err("writing the checkpoint"))?;
            if super::fence::applied_result(result)? {
                Ok(())
            } else {
                Err(StoreError::Poisoned(format!(
                    "fenced: another tillstream took node id {:?} (at a checkpoint); this one stops writing. Give each server its own --scylla-node-id",
                    self.cfg.node_id
                )))
            }
        })
        })?;
        self.checkpoint.fetch_max(lsn, Ordering::AcqRel);
        Ok(info)
    }

    /// A crash between steps 4 and 5, for the conformance suite: the rows
    /// and the checkpoint of `lsn` written, its snapshot rows only staged.
    #[cfg(test)]
    pub(crate) fn materialize_then_crash(&self, rows: &RowSet, lsn: u64) -> Result<(), StoreError> {
        self.write_to_commit_point(rows, &Snapshots::newest_of(rows), lsn)
            .map(|_| ())
    }

    /// A crash before the commit point, for tests: the event-keyed rows
    /// of `lsn` written, nothing else.
    #[cfg(test)]
    pub(crate) fn write_rows_then_crash(&self, rows: &RowSet, lsn: u64) -> Result<(), StoreError> {
        let events = self
            .st
            .event_writes(rows, lsn, writer_hash(&self.cfg.node_id));
        self.block(self.st.run(&self.session, events, self.cfg.max_in_flight))
    }

    /// A frozen process, for tests: the lease is no longer renewed.
    #[cfg(test)]
    pub(crate) fn freeze_heartbeat(&self) {
        self.fence.frozen.store(true, Ordering::Release);
    }

    /// `Store::commit` (tools and tests, no checkpoint): every row at once,
    /// snapshot rows straight into their tables.
    pub(super) fn commit_rows(&self, rows: &RowSet) -> Result<CommitInfo, StoreError> {
        self.writable()?;
        let snap = Snapshots::newest_of(rows);
        let mut writes = self
            .st
            .event_writes(rows, 0, writer_hash(&self.cfg.node_id));
        writes.extend(self.st.snapshot_writes(&snap));
        let marks = self.st.mark_writes(rows);
        let info = CommitInfo {
            rows: rows.len(),
            records: writes.len() + marks.len(),
            bytes: 0,
        };
        let n = self.cfg.max_in_flight;
        self.block(async {
            self.st.run(&self.session, writes, n).await?;
            self.st.run(&self.session, marks, n).await
        })
        .map_err(|e| self.poison(e))?;
        Ok(info)
    }

    /// Step 5: the snapshot rows of checkpoint `lsn` into their tables,
    /// then `snapshots_at = lsn`; their staged copies are dropped at the
    /// next sync.
    fn apply_snapshots(&self, snap: &Snapshots, lsn: u64) -> Result<(), StoreError> {
        let n = self.cfg.max_in_flight;
        self.until_written("the snapshot rows", || {
            let writes = self.st.snapshot_writes(snap);
            self.block(async {
                self.st.run(&self.session, writes, n).await?;
                self.session
                    .execute_unpaged(
                        &self.st.snapshots_at_write,
                        (lsn as i64, lsn as i64, &self.cfg.node_id),
                    )
                    .await
                    .map_err(backend_err("recording the applied snapshots"))
                    .map(|_| ())
            })
        })?;
        let chunks = snap
            .levels
            .len()
            .max(snap.rollups.len())
            .div_ceil(STAGED_PER_CHUNK);
        if chunks > 0 {
            self.staged.lock().push((lsn, chunks));
        }
        Ok(())
    }

    /// At open: when the snapshot rows of the checkpoint may not all be in
    /// their tables (a crash between steps 4 and 5), copies the staged
    /// ones in. A read-only connection only says so.
    pub(super) fn finish_snapshots(
        &self,
        checkpoint: u64,
        snapshots_at: u64,
    ) -> Result<(), StoreError> {
        if checkpoint == 0 || snapshots_at >= checkpoint {
            return Ok(());
        }
        let snap = self.read_staged(checkpoint)?;
        if self.cfg.read_only {
            if !snap.is_empty() {
                tracing::warn!(
                    checkpoint,
                    "the snapshot rows of the last checkpoint are staged, not yet in stock_levels and terminal_rollups: the node copies them when it starts"
                );
            }
            return Ok(());
        }
        tracing::info!(
            checkpoint,
            levels = snap.levels.len(),
            rollups = snap.rollups.len(),
            "copying the staged snapshot rows of the last checkpoint"
        );
        self.apply_snapshots(&snap, checkpoint)
    }

    /// The staged snapshot rows of materialization `lsn`.
    fn read_staged(&self, lsn: u64) -> Result<Snapshots, StoreError> {
        let mut snap = Snapshots::default();
        let node = &self.cfg.node_id;
        for chunk in 0i32.. {
            let (levels, rollups) = self.block(async {
                let key = (node, lsn as i64, chunk);
                let levels = self
                    .read::<StockLevelRow>(&self.st.staged_levels_read, key)
                    .await?;
                let rollups = self
                    .read::<TerminalRollupRow>(&self.st.staged_rollups_read, key)
                    .await?;
                Ok::<_, StoreError>((levels, rollups))
            })?;
            if levels.is_empty() && rollups.is_empty() {
                break;
            }
            snap.levels.extend(levels);
            snap.rollups.extend(rollups);
        }
        Ok(snap)
    }

    /// Deletes the staged copies of snapshot rows already in their tables.
    /// A failure is logged and retried at the next call.
    pub(super) fn drop_staged(&self) {
        let pending: Vec<(u64, usize)> = std::mem::take(&mut *self.staged.lock());
        let node = &self.cfg.node_id;
        for (lsn, chunks) in pending {
            let dropped = self.block(async {
                for chunk in 0..chunks {
                    let key = (node, lsn as i64, i32::try_from(chunk).unwrap_or(i32::MAX));
                    self.session
                        .execute_unpaged(&self.st.staged_levels_delete, key)
                        .await?;
                    self.session
                        .execute_unpaged(&self.st.staged_rollups_delete, key)
                        .await?;
                }
                Ok::<_, scylla::errors::ExecutionError>(())
            });
            if let Err(e) = dropped {
                tracing::warn!(error = %e, lsn, "dropping staged snapshot rows failed; retrying at the next sync");
                self.staged.lock().push((lsn, chunks));
            }
        }
    }
}
