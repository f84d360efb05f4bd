//! What the store does when the cluster cannot take a request now (nodes
//! down, timeouts): it retries with backoff instead of failing the server
//! (docs/internals/design.md, "ScyllaDB"), and poisons itself only when fenced.

use std::time::Duration;

use super::ScyllaStore;
use tillstream_storage::store::StoreError;

/// The first wait before a request is retried, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs `attempt` until it succeeds or fails with
/// [`StoreError::Poisoned`] (returned as is); `failed` sees each other
/// failure and its count before the wait.
fn with_backoff<T>(
    mut attempt: impl FnMut() -> Result<T, StoreError>,
    mut failed: impl FnMut(&StoreError, u64),
) -> Result<(T, u64), StoreError> {
    let mut backoff = RETRY_FIRST;
    let mut failures = 0u64;
    loop {
        match attempt() {
            Ok(v) => return Ok((v, failures)),
            Err(e @ StoreError::Poisoned(_)) => return Err(e),
            Err(e) => {
                failures += 1;
                failed(&e, failures);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Whether a failure is worth a log line: the first, then every 20th.
fn worth_logging(failures: u64) -> bool {
    failures == 1 || failures.is_multiple_of(20)
}

impl ScyllaStore {
    /// Runs a write until it succeeds: acks wait, and
    /// [`Store::check_writable`](tillstream_storage::Store::check_writable) says why,
    /// so ingest resumes by itself when enough replicas are back. Every
    /// write retried here is idempotent (same keys, values and
    /// conditions). A fence, or any other [`StoreError::Poisoned`], ends
    /// it and poisons the store.
    pub(super) fn until_written<T>(
        &self,
        what: &'static str,
        mut attempt: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tried = with_backoff(
            || {
                self.writable()?;
                attempt()
            },
            |e, failures| {
                self.write_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if worth_logging(failures) {
                    tracing::warn!(what, failures, error = %e, "the cluster does not take a write; retrying (acks wait)");
                }
                *self.unavailable.lock() =
                    Some(format!("the cluster does not take writes ({what}): {e}"));
            },
        );
        match tried {
            Ok((v, failures)) => {
                if failures > 0 {
                    *self.unavailable.lock() = None;
                    tracing::info!(what, failures, "the cluster takes writes again");
                }
                Ok(v)
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Runs an activation's read until it succeeds, as
    /// [`until_written`](Self::until_written) does a write: a shard whose
    /// store cannot be read waits for the cluster instead of failing the
    /// engine. A read-only tool fails at once instead.
    pub(super) fn until_read<T>(
        &self,
        what: &'static str,
        attempt: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.cfg.read_only {
            let mut attempt = attempt;
            return attempt();
        }
        with_backoff(attempt, |e, failures| {
            if worth_logging(failures) {
                tracing::warn!(what, failures, error = %e, "the cluster does not answer a read; retrying");
            }
        })
        .map(|(v, _)| v)
    }

    pub(super) fn poison(&self, e: StoreError) -> StoreError {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
        }
        e
    }

    pub(super) fn writable(&self) -> Result<(), StoreError> {
        if self.cfg.read_only {
            return Err(StoreError::Backend {
                op: "writing",
                source: "this connection is read-only (a tool beside a live node)".into(),
            });
        }
        match &*self.poisoned.lock() {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }
}
