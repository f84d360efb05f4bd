//! Flush planning for the group-commit flusher.
//!
//! Two pure pieces the flusher drives:
//! - [`FlushPlanner`]: *when* to commit: once enough rows are pending or
//!   the oldest pending unit has waited long enough (an fsync costs about
//!   150 µs, so commits are grouped over a few milliseconds);
//! - [`CommitOrder`]: *which* units a commit may hold, so that the store
//!   only ever holds a consistent cut (see the crate docs).
//!
//! Invariants: [`FlushPlanner::should_commit`] is true as soon as a unit
//! is pending for `max_wait_us` or `max_rows` rows are pending, and false
//! when nothing is pending; a unit of zero rows still counts (it carries a
//! watermark).

mod order;

pub use order::{CommitOrder, PartTicket};

/// When the flusher commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Commit once this many rows are pending.
    pub max_rows: usize,
    /// Commit once the oldest pending unit has waited this long (µs).
    pub max_wait_us: i64,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_rows: 64 * 1024,
            max_wait_us: 2_000,
        }
    }
}

/// Tracks what is pending and says when to commit. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct FlushPlanner {
    policy: FlushPolicy,
    rows: usize,
    units: usize,
    oldest_us: Option<i64>,
}

impl FlushPlanner {
    /// A planner with nothing pending.
    pub fn new(policy: FlushPolicy) -> Self {
        Self {
            policy,
            rows: 0,
            units: 0,
            oldest_us: None,
        }
    }

    /// The policy it plans with.
    pub fn policy(&self) -> FlushPolicy {
        self.policy
    }

    /// A commit unit of `unit_rows` rows arrived at `now_us`.
    pub fn push(&mut self, unit_rows: usize, now_us: i64) {
        self.rows = self.rows.saturating_add(unit_rows);
        self.units = self.units.saturating_add(1);
        if self.oldest_us.is_none() {
            self.oldest_us = Some(now_us);
        }
    }

    /// Whether to commit now.
    pub fn should_commit(&self, now_us: i64) -> bool {
        if self.units == 0 {
            return false;
        }
        self.rows >= self.policy.max_rows
            || self
                .deadline_us()
                .is_some_and(|deadline| now_us >= deadline)
    }

    /// When the oldest pending unit is due, if any is pending: the time to
    /// sleep until when no more units arrive.
    pub fn deadline_us(&self) -> Option<i64> {
        self.oldest_us
            .map(|t| t.saturating_add(self.policy.max_wait_us))
    }

    /// The pending units were handed to a commit: start over.
    pub fn committed(&mut self) {
        self.rows = 0;
        self.units = 0;
        self.oldest_us = None;
    }

    /// Rows pending.
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// Units pending.
    pub fn pending_units(&self) -> usize {
        self.units
    }
}

impl Default for FlushPlanner {
    fn default() -> Self {
        Self::new(FlushPolicy::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner() -> FlushPlanner {
        FlushPlanner::new(FlushPolicy {
            max_rows: 100,
            max_wait_us: 2_000,
        })
    }

    #[test]
    fn nothing_pending_never_commits() {
        let p = planner();
        assert!(!p.should_commit(0));
        assert!(!p.should_commit(i64::MAX));
        assert_eq!(p.deadline_us(), None);
    }

    #[test]
    fn commits_after_the_wait() {
        let mut p = planner();
        p.push(3, 1_000);
        p.push(4, 2_500);
        assert_eq!(
            p.deadline_us(),
            Some(3_000),
            "the oldest unit sets the deadline"
        );
        assert!(!p.should_commit(2_999));
        assert!(p.should_commit(3_000));
        assert_eq!((p.pending_rows(), p.pending_units()), (7, 2));
        p.committed();
        assert!(!p.should_commit(10_000));
        p.push(0, 10_000);
        assert!(!p.should_commit(11_999));
        assert!(
            p.should_commit(12_000),
            "an empty unit still carries a watermark"
        );
    }

    #[test]
    fn commits_when_full() {
        let mut p = planner();
        p.push(60, 0);
        assert!(!p.should_commit(1));
        p.push(40, 1);
        assert!(p.should_commit(1));
        p.push(usize::MAX, 1);
        assert_eq!(p.pending_rows(), usize::MAX, "saturates");
    }

    #[test]
    fn no_overflow_at_the_end_of_time() {
        let mut p = planner();
        p.push(1, i64::MAX - 1);
        assert_eq!(p.deadline_us(), Some(i64::MAX));
        assert!(p.should_commit(i64::MAX));
    }
}
