//! The memory soft limit: past it, the allocator returns freed pages to
//! the OS at once instead of after its delay.
//!
//! Why: the live heap of a server with 1 M resident SKUs peaked near
//! 370 MB (heaptrack), but its RSS near 700-800 MB. The rest were pages
//! the allocator had freed and kept for a second before returning them
//! (mimalloc 3's purge delay), while the write path freed and allocated
//! tens of MB a flush. Returning them at once (purge delay 0) brought
//! the peak to about 500 MB, for some 8% more CPU an event (madvise calls
//! and the faults that follow), a price worth paying only when memory is
//! short. So the server pays it past a limit, as a garbage-collected
//! runtime collects harder near its memory limit: below the limit the
//! allocator keeps its own delay, past it purges at once, and it goes
//! back once RSS falls an eighth below. The decision is a plain function
//! ([`purge_at_once`]); the task samples RSS every 100 ms.

use std::time::Duration;

use tokio::sync::watch;

use crate::metrics as m;

/// How often RSS is read: a flush interval or two, so a peak is caught
/// while it builds, for a read of one small procfs file.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Whether freed pages should go back to the OS at once, given whether
/// they do now: from `limit` on, and until RSS is an eighth below it (so
/// a server near the limit does not switch at every sample).
pub(crate) fn purge_at_once(now: bool, rss: u64, limit: u64) -> bool {
    if now {
        rss >= limit - limit / 8
    } else {
        rss >= limit
    }
}

/// The process's resident set, in bytes (Linux: `VmRSS` of
/// `/proc/self/status`, a counter the kernel keeps, so reading it walks no
/// page tables; `None` elsewhere or if it cannot be read).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Samples RSS until shutdown and tells the allocator, through `set`,
/// when to purge at once. Nothing happens where RSS cannot be read.
pub(crate) async fn run(limit_bytes: u64, set: fn(bool), mut shutdown: watch::Receiver<bool>) {
    if resident_bytes().is_none() {
        tracing::info!("RSS cannot be read here: the memory soft limit is off");
        return;
    }
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut at_once = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(rss) = resident_bytes() else {
            continue;
        };
        let next = purge_at_once(at_once, rss, limit_bytes);
        if next != at_once {
            at_once = next;
            set(at_once);
            tracing::info!(
                rss_mib = rss >> 20,
                limit_mib = limit_bytes >> 20,
                purge_at_once = at_once,
                "memory soft limit: the allocator now returns freed pages {}",
                if at_once {
                    "at once"
                } else {
                    "after its delay"
                }
            );
            m::allocator_purge_at_once(at_once);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purging_starts_at_the_limit_and_stops_an_eighth_below() {
        let limit = 800;
        assert!(!purge_at_once(false, 799, limit));
        assert!(purge_at_once(false, 800, limit));
        // Once on, it stays on down to 700 (an eighth below 800)...
        assert!(purge_at_once(true, 750, limit));
        assert!(purge_at_once(true, 700, limit));
        // ...and goes off under it.
        assert!(!purge_at_once(true, 699, limit));
        assert!(!purge_at_once(false, 750, limit));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        let rss = resident_bytes().unwrap_or(0);
        assert!(rss > 1 << 20, "rss {rss}");
    }
}
