//! One writer per node id (docs/internals/design.md, "ScyllaDB"): the lease row of
//! `node_leases`, written only with lightweight transactions (Paxos).
//!
//! - **Taking it.** A writing start reads the lease at SERIAL. If another
//!   process renewed it lately, it watches the row for one lease period
//!   and refuses the node id when it moves: two live servers never share
//!   a journal. Then it takes the next generation with `IF generation =
//!   <the one read>`: of two starts at the same moment, one wins and the
//!   other is refused. Only then does it walk the journal, so every
//!   record the fenced holder got acknowledged (below) is in the walk.
//! - **Holding it.** After each journal append, before the ack, the
//!   writer records the append's last LSN as `journal_high` with `IF
//!   generation = <mine>`. Not applied means another start took the node
//!   id: the store poisons itself, acks stop, and `/readyz` says why. A
//!   record acknowledged by the old holder was written before that check,
//!   the check was before the new holder's take, and the take before its
//!   walk: the walk sees it.
//! - **The high-water mark.** A start refuses to run when its journal walk
//!   ends below `journal_high`: records an ack covered are missing (a
//!   replica lost, a read below quorum), and a new generation would write
//!   over their LSNs.
//! - **Heartbeat.** An idle writer renews the lease every
//!   [`HEARTBEAT`], so a start beside it can tell it is alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::{backend_err, now_us};
use tillstream_storage::store::StoreError;

/// How long a lease stays live without renewal.
pub(crate) const LEASE: Duration = Duration::from_secs(6);
/// How often an idle writer renews its lease.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// The statements of the lease row.
#[derive(Debug, Clone)]
pub(crate) struct LeaseStatements {
    read: PreparedStatement,
    insert: PreparedStatement,
    take: PreparedStatement,
    mark: PreparedStatement,
    renew: PreparedStatement,
    release: PreparedStatement,
}

impl LeaseStatements {
    pub(crate) fn texts(ks: &str) -> [String; 6] {
        [
            format!(
                "SELECT generation, holder, renewed_at_us, journal_high FROM {ks}.node_leases WHERE node = ?"
            ),
            format!(
                "INSERT INTO {ks}.node_leases (node, generation, holder, renewed_at_us, journal_high) VALUES (?, ?, ?, ?, 0) IF NOT EXISTS"
            ),
            format!(
                "UPDATE {ks}.node_leases SET generation = ?, holder = ?, renewed_at_us = ? WHERE node = ? IF generation = ?"
            ),
            format!(
                "UPDATE {ks}.node_leases SET journal_high = ?, renewed_at_us = ? WHERE node = ? IF generation = ?"
            ),
            format!(
                "UPDATE {ks}.node_leases SET renewed_at_us = ? WHERE node = ? IF generation = ?"
            ),
            format!("UPDATE {ks}.node_leases SET holder = '' WHERE node = ? IF generation = ?"),
        ]
    }

    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let mut out = Vec::with_capacity(6);
        for text in Self::texts(ks) {
            // A conditional write run twice gives the same row: the
            // retry policy may repeat one that timed out.
            out.push(super::writes::prep_conditional(session, &text).await?);
        }
        let mut it = out.into_iter();
        let mut next = || {
            it.next().ok_or(StoreError::Backend {
                op: "preparing a statement",
                source: "a lease statement is missing".into(),
            })
        };
        let mut read = next()?;
        // A read at SERIAL sees every committed and in-flight Paxos write.
        read.set_consistency(Consistency::Serial);
        Ok(LeaseStatements {
            read,
            insert: next()?,
            take: next()?,
            mark: next()?,
            renew: next()?,
            release: next()?,
        })
    }
}

/// Attempts of a lease read, and the wait after the first that failed
/// (doubling): about 3 s in all, within a start's patience.
const LEASE_READ_TRIES: u32 = 5;
const LEASE_READ_FIRST_WAIT: Duration = Duration::from_millis(200);

/// The lease row as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) generation: u64,
    pub(crate) holder: String,
    pub(crate) renewed_at_us: i64,
    pub(crate) journal_high: u64,
}

/// A writer's hold on its node id: shared with the heartbeat task.
#[derive(Debug)]
pub(crate) struct Fence {
    pub(crate) session: Arc<Session>,
    pub(crate) st: LeaseStatements,
    pub(crate) node_id: String,
    /// This process, as the lease names it.
    pub(crate) holder: String,
    /// The generation held; 0 until taken (and for readers).
    pub(crate) generation: AtomicU64,
    /// When the lease was last written by this process (µs).
    pub(crate) renewed_at_us: AtomicI64,
    /// Why the store stopped accepting writes, when it did.
    pub(crate) poisoned: Arc<Mutex<Option<String>>>,
    /// Set by tests to stand for a frozen process: no more heartbeats.
    pub(crate) frozen: AtomicBool,
}

/// Whether a conditional write applied: the first column of its answer.
fn applied(rows: &[Row]) -> bool {
    matches!(
        rows.first().and_then(|r| r.columns.first()),
        Some(Some(CqlValue::Boolean(true)))
    )
}

/// Whether the conditional write answered by `result` applied.
pub(crate) fn applied_result(
    result: scylla::response::query_result::QueryResult,
) -> Result<bool, StoreError> {
    if !result.is_rows() {
        return Ok(false);
    }
    let rows: Vec<Row> = result
        .into_rows_result()
        .map_err(backend_err("reading a conditional write's answer"))?
        .rows::<Row>()
        .map_err(backend_err("reading a conditional write's answer"))?
        .collect::<Result<_, _>>()
        .map_err(backend_err("reading a conditional write's answer"))?;
    Ok(applied(&rows))
}

/// The generation a conditional write `IF generation = ?` that was not
/// applied found: its answer's second column (after `[applied]`).
fn answered_generation(rows: &[Row]) -> Option<u64> {
    match rows.first()?.columns.get(1)? {
        Some(CqlValue::BigInt(g)) => u64::try_from(*g).ok(),
        _ => None,
    }
}

fn col_u64(row: &Row, i: usize) -> u64 {
    match row.columns.get(i) {
        Some(Some(CqlValue::BigInt(v))) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    }
}

impl Fence {
    pub(crate) fn new(
        session: Arc<Session>,
        st: LeaseStatements,
        node_id: String,
        poisoned: Arc<Mutex<Option<String>>>,
    ) -> Fence {
        let holder = format!(
            "{}:{}:{:x}",
            hostname(),
            std::process::id(),
            now_us() as u64 ^ (u64::from(std::process::id()) << 40)
        );
        Fence {
            session,
            st,
            node_id,
            holder,
            generation: AtomicU64::new(0),
            renewed_at_us: AtomicI64::new(0),
            poisoned,
            frozen: AtomicBool::new(false),
        }
    }

    async fn rows(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        op: &'static str,
    ) -> Result<Vec<Row>, StoreError> {
        let result = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(backend_err(op))?;
        if !result.is_rows() {
            return Ok(Vec::new());
        }
        result
            .into_rows_result()
            .map_err(backend_err(op))?
            .rows::<Row>()
            .map_err(backend_err(op))?
            .collect::<Result<Vec<Row>, _>>()
            .map_err(backend_err(op))
    }

    /// The lease row, read at SERIAL; `None` before any writer started.
    ///
    /// A SERIAL read is a Paxos round, which a busy cluster may time out
    /// ("received only 0 responses", write type CAS) where a plain read
    /// would not; and the driver's retry policy does not repeat a CAS
    /// timeout. A read changes nothing, so it is tried again, a few times
    /// with backoff, before a server refuses to start for it.
    pub(crate) async fn read(&self) -> Result<Option<Lease>, StoreError> {
        let mut wait = LEASE_READ_FIRST_WAIT;
        let mut tries = 1;
        let rows = loop {
            match self
                .rows(&self.st.read, (&self.node_id,), "reading the node lease")
                .await
            {
                Ok(rows) => break rows,
                Err(e) if tries < LEASE_READ_TRIES => {
                    tracing::warn!(error = %e, tries, "reading the node lease failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(rows.first().map(|r| Lease {
            generation: col_u64(r, 0),
            holder: match r.columns.get(1) {
                Some(Some(CqlValue::Text(h))) => h.clone(),
                _ => String::new(),
            },
            renewed_at_us: i64::try_from(col_u64(r, 2)).unwrap_or(0),
            journal_high: col_u64(r, 3),
        }))
    }

    /// Takes the node id (module docs): waits out a holder that may be
    /// alive, refuses one that is, and takes the generation after both
    /// the lease's and `floor` (an older layout's). Returns the lease as
    /// it was before the take, with the new generation.
    pub(crate) async fn take(&self, floor: u64, adopting: bool) -> Result<Lease, StoreError> {
        let refuse = |reason: String| StoreError::Open {
            path: format!("node id {:?}", self.node_id),
            reason,
        };
        let mut current = self.read().await?;
        // Adopting a node the members table found gone: no watch (see
        // `ScyllaConfig::adopting`).
        let watch = current
            .clone()
            .filter(|l| !l.holder.is_empty() && !adopting);
        if let Some(seen) = watch {
            let age_us = now_us().saturating_sub(seen.renewed_at_us);
            // Twice the lease: a margin for clocks that differ.
            if age_us < 2 * LEASE.as_micros() as i64 {
                tracing::info!(
                    node_id = %self.node_id,
                    holder = %seen.holder,
                    age_ms = age_us / 1000,
                    "the node id's lease was renewed lately: watching it for one lease period before taking it"
                );
                let until = Instant::now() + LEASE;
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let again = self.read().await?;
                    let moved = again.as_ref().is_none_or(|a| {
                        a.generation != seen.generation || a.renewed_at_us != seen.renewed_at_us
                    });
                    if moved {
                        return Err(refuse(format!(
                            "another live tillstream ({}) holds this node id: it renewed its lease while this one waited. Two servers must never share a node id; give this one its own --scylla-node-id, or stop the other first",
                            seen.holder
                        )));
                    }
                }
                current = self.read().await?;
            }
        }
        let prev = current.clone().unwrap_or_default();
        let next = prev.generation.max(floor) + 1;
        let now = now_us();
        let rows = match &current {
            None => {
                self.rows(
                    &self.st.insert,
                    (&self.node_id, next as i64, &self.holder, now),
                    "taking the node lease",
                )
                .await?
            }
            Some(l) => {
                self.rows(
                    &self.st.take,
                    (
                        next as i64,
                        &self.holder,
                        now,
                        &self.node_id,
                        l.generation as i64,
                    ),
                    "taking the node lease",
                )
                .await?
            }
        };
        if !applied(&rows) {
            return Err(refuse(
                "another tillstream took this node id at the same moment; two servers must never share one".into(),
            ));
        }
        self.generation.store(next, Ordering::Release);
        self.renewed_at_us.store(now, Ordering::Release);
        Ok(Lease {
            generation: next,
            holder: self.holder.clone(),
            renewed_at_us: now,
            journal_high: prev.journal_high,
        })
    }

    fn fenced(&self, what: &str) -> StoreError {
        let why = format!(
            "fenced: another tillstream took node id {:?} ({what}); this one stops acknowledging. Give each server its own --scylla-node-id",
            self.node_id
        );
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!("{why}");
            *p = Some(why.clone());
        }
        StoreError::Poisoned(why)
    }

    /// Records `last_lsn` as acknowledged-to-be while still holding the
    /// lease; an error (fenced or unreachable) means: do not acknowledge.
    pub(crate) async fn mark(&self, last_lsn: u64) -> Result<(), StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let now = now_us();
        let rows = self
            .rows(
                &self.st.mark,
                (last_lsn as i64, now, &self.node_id, generation as i64),
                "recording the journal's high-water mark",
            )
            .await?;
        if !applied(&rows) {
            return Err(self.not_applied(&rows, generation, "at a journal append"));
        }
        self.renewed_at_us.fetch_max(now, Ordering::AcqRel);
        Ok(())
    }

    /// The error of a lease write `IF generation = <mine>` not applied: a
    /// fence only when the answer names a later generation. CI once saw
    /// one not applied while two of three Cassandra nodes came back, with
    /// no other process on the node id: its Paxos round did not win, and
    /// poisoning on that stopped a live server for good. Any such answer
    /// is a failed write, retried, and nothing is acknowledged on it.
    fn not_applied(&self, rows: &[Row], mine: u64, what: &str) -> StoreError {
        match answered_generation(rows) {
            Some(g) if g > mine => self.fenced(what),
            seen => StoreError::Backend {
                op: "writing the node lease",
                source: format!(
                    "a conditional write {what} was not applied, but the lease names generation {seen:?}, not one after this process's {mine}; retrying"
                )
                .into(),
            },
        }
    }

    /// One heartbeat, when nothing renewed the lease for a while.
    pub(crate) async fn renew_if_idle(&self) -> Result<(), StoreError> {
        let now = now_us();
        let last = self.renewed_at_us.load(Ordering::Acquire);
        if now.saturating_sub(last) < HEARTBEAT.as_micros() as i64 / 2 {
            return Ok(());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let rows = self
            .rows(
                &self.st.renew,
                (now, &self.node_id, generation as i64),
                "renewing the node lease",
            )
            .await?;
        if !applied(&rows) {
            return Err(self.not_applied(&rows, generation, "while idle"));
        }
        self.renewed_at_us.fetch_max(now, Ordering::AcqRel);
        Ok(())
    }

    /// Renews the lease until the runtime stops; a fence poisons the
    /// store, a failed request is retried at the next beat.
    pub(crate) async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::time::sleep(HEARTBEAT / 2).await;
            if self.poisoned.lock().is_some() {
                return;
            }
            if self.frozen.load(Ordering::Acquire) {
                continue;
            }
            match self.renew_if_idle().await {
                Ok(()) => {}
                Err(StoreError::Poisoned(_)) => return,
                Err(e) => tracing::warn!(error = %e, "renewing the node lease failed; retrying"),
            }
        }
    }

    /// Gives the node id back at a clean close, so the next start need
    /// not wait out the lease.
    pub(crate) async fn release(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == 0 || self.poisoned.lock().is_some() {
            return;
        }
        if let Err(e) = self
            .rows(
                &self.st.release,
                (&self.node_id, generation as i64),
                "releasing the node lease",
            )
            .await
        {
            tracing::warn!(error = %e, "releasing the node lease failed: the next start waits out the lease");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conditional_write_applied_only_when_its_answer_says_so() {
        let row = |v: Option<CqlValue>| Row { columns: vec![v] };
        assert!(applied(&[row(Some(CqlValue::Boolean(true)))]));
        assert!(!applied(&[row(Some(CqlValue::Boolean(false)))]));
        assert!(!applied(&[]));
        assert!(!applied(&[row(None)]));
    }

    #[test]
    fn a_write_not_applied_names_the_generation_it_found() {
        let answer = |g: Option<CqlValue>| {
            vec![Row {
                columns: vec![Some(CqlValue::Boolean(false)), g],
            }]
        };
        assert_eq!(
            answered_generation(&answer(Some(CqlValue::BigInt(7)))),
            Some(7)
        );
        assert_eq!(answered_generation(&answer(None)), None);
        assert_eq!(
            answered_generation(&answer(Some(CqlValue::BigInt(-1)))),
            None
        );
        assert_eq!(answered_generation(&[]), None);
    }

    #[test]
    fn the_heartbeat_beats_well_inside_the_lease() {
        assert!(HEARTBEAT * 2 <= LEASE);
    }
}
