//! The journal as a table (docs/internals/design.md, "ScyllaDB"): appends at the
//! configured consistency, generations, the walk that replays it, and
//! pruning what the checkpoint covers.
//!
//! Every method here is synchronous and blocks on the driver's runtime
//! once per request group. [`ScyllaStore::walk_journal`] in particular
//! calls its visitor *between* reads, never inside one: the engine's
//! visitor reads and writes the store itself.

use std::sync::atomic::Ordering;

use futures_util::{StreamExt, TryStreamExt};

use super::writes::journal_timestamp;
use super::{ScyllaStore, backend_err};
use tillstream_journal::split_records;
use tillstream_storage::buckets::journal_segment;
use tillstream_storage::store::StoreError;

/// One journal row: LSN, generation, payload.
type Record = (u64, u64, Vec<u8>);

/// Whether record (`lsn`, `generation`) continues a journal expected at
/// `expect`, whose last record was of generation `last_generation`.
pub(super) fn follows(lsn: u64, generation: u64, expect: u64, last_generation: u64) -> bool {
    lsn == expect && generation >= last_generation
}

impl ScyllaStore {
    /// The records of segment `seg` after `after`, in LSN order.
    async fn segment_records(&self, seg: u64, after: u64) -> Result<Vec<Record>, StoreError> {
        self.session
            .execute_iter(
                self.st.journal_read.clone(),
                (&self.cfg.node_id, seg as i64, after as i64),
            )
            .await
            .map_err(backend_err("reading the journal"))?
            .rows_stream::<(i64, i64, Vec<u8>)>()
            .map_err(backend_err("reading the journal"))?
            .map_ok(|(lsn, generation, record)| (lsn as u64, generation as u64, record))
            .try_collect()
            .await
            .map_err(backend_err("reading the journal"))
    }

    /// Calls `f(lsn, record)` for the journal records after `after`, in LSN
    /// order, while they follow each other (each LSN one above the last,
    /// each generation at least the last's) and `f` says go on. Reads one
    /// segment (at most 256 records) at a time, and calls `f` outside any
    /// read.
    pub(super) fn walk_journal(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let (mut expect, mut generation) = (after + 1, 0u64);
        let mut seg = journal_segment(expect);
        loop {
            let records = self.block(self.segment_records(seg, after))?;
            if records.is_empty() {
                return Ok(());
            }
            for (lsn, gen_of, record) in records {
                if !follows(lsn, gen_of, expect, generation) || !f(lsn, &record)? {
                    return Ok(());
                }
                (expect, generation) = (lsn + 1, gen_of);
            }
            seg += 1;
        }
    }

    /// Finds the journal's end after `checkpoint`. A writer refuses to
    /// start when the end is below `high`, the last LSN an ack may have
    /// covered (`fence.rs`): records are missing that the new
    /// generation would write over.
    ///
    /// The end is never past `high` (or the checkpoint): records beyond it
    /// were written by an append whose mark never landed, so nobody
    /// acknowledged them. They are left out of the replay and written over
    /// by this start's generation. With several nodes this matters: a
    /// fenced process's late appends land past the high-water mark after
    /// another node replayed its journal and its stores moved on, and
    /// replaying them here would write those stores' rows beside their
    /// new owner (ARCHITECTURE.md, "Several nodes").
    pub(super) fn open_journal(&self, checkpoint: u64, high: u64) -> Result<(), StoreError> {
        let acked_end = high.max(checkpoint);
        let mut last = checkpoint;
        self.walk_journal(checkpoint, |lsn, _| {
            if lsn > acked_end {
                return Ok(false);
            }
            last = lsn;
            Ok(true)
        })?;
        if last < high && !self.cfg.read_only {
            return Err(StoreError::Open {
                path: format!("node id {:?}", self.cfg.node_id),
                reason: format!(
                    "the journal ends at LSN {last}, but records up to {high} may have been acknowledged: LSN {} is missing (a replica lost, or a read below quorum). Refusing to start, since this start would write over them; bring the cluster's nodes back (and repair) first",
                    last + 1
                ),
            });
        }
        self.journal_last.store(last, Ordering::Release);
        Ok(())
    }

    /// Writes the records of `encoded` (LSNs after the journal's last, up
    /// to `last_lsn`) and returns once the cluster acknowledged every one
    /// at the configured consistency.
    pub(super) fn append_journal(&self, encoded: &[u8], last_lsn: u64) -> Result<(), StoreError> {
        self.writable()?;
        let prev = self.journal_last.load(Ordering::Acquire);
        let split =
            split_records(encoded, prev, last_lsn).map_err(backend_err("journal append"))?;
        let generation = self.generation.load(Ordering::Acquire);
        // The records, then the high-water mark under the lease: only
        // both make the batch durable here (`fence.rs`).
        self.until_written("a journal append", || {
            let writes = self
                .st
                .journal_writes(&self.cfg.node_id, generation, &split);
            self.block(async {
                self.st
                    .run(&self.session, writes, self.cfg.max_in_flight)
                    .await?;
                self.fence.mark(last_lsn).await
            })
        })?;
        self.journal_last.store(last_lsn, Ordering::Release);
        Ok(())
    }

    /// Deletes the journal segments the checkpoint covers. A failure is
    /// logged and retried at the next call: nothing durable depends on it.
    pub(super) fn prune_journal(&self, checkpoint: u64) {
        let below = journal_segment(checkpoint + 1);
        let from = self.pruned_below.load(Ordering::Acquire);
        if below <= from {
            return;
        }
        let node = &self.cfg.node_id;
        // Above every record's timestamp: the segments are below the
        // checkpoint, never written again.
        let stamp = journal_timestamp(self.generation.load(Ordering::Acquire) + 1, 0);
        let pruned = self.block(async {
            futures_util::stream::iter(from..below)
                .map(|seg| {
                    self.session
                        .execute_unpaged(&self.st.journal_delete_segment, (stamp, node, seg as i64))
                })
                .buffer_unordered(self.cfg.max_in_flight.max(1))
                .try_for_each(|_| async { Ok(()) })
                .await?;
            self.session
                .execute_unpaged(
                    &self.st.pruned_write,
                    (checkpoint as i64, below as i64, node),
                )
                .await
                .map(|_| ())
        });
        match pruned {
            Ok(()) => self.pruned_below.store(below, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "dropping journal segments failed; retrying at the next sync")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::follows;

    #[test]
    fn a_replay_stops_at_a_gap_and_at_an_older_generations_leftover() {
        assert!(follows(5, 1, 5, 1));
        assert!(follows(5, 2, 5, 1), "a newer start continues the journal");
        assert!(!follows(6, 2, 5, 1), "a gap");
        assert!(
            !follows(5, 1, 5, 2),
            "an earlier start's unacknowledged record"
        );
    }
}
