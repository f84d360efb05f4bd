//! The memory soft limit: past it, the server is under memory pressure.
//! The allocator then returns freed pages to the OS soon (the binary
//! picks how soon: `tillstream serve`, 50 ms) instead of after its delay,
//! and each shard holds half its in-flight budget.
//!
//! Why: the live heap of a server with 1 M resident SKUs peaked near
//! 370 MB (heaptrack), but its RSS near 700-800 MB. Most of the rest were
//! pages the allocator had freed and kept for a second before returning
//! them (mimalloc 3's purge delay), while the write path freed and
//! allocated tens of MB a flush; and 70-100 MB of the live heap were row
//! sets on their way to the tables, which the in-flight budget bounds.
//! Returning pages soon costs CPU (madvise calls and the faults that
//! follow: the main fleet's server took 15-16 page faults per 1,000
//! events under pressure, 12-13 without, and 22-25 when pages went back
//! at once, as they did until 50 ms was the binary's delay), and half
//! the budget (with the row pool trimmed every second to what that half
//! uses) leaves less slack for a slow flush: prices worth paying only when
//! memory is short. So
//! the server pays them past a limit, as a garbage-collected runtime
//! collects harder near its memory limit, and stops once RSS falls an
//! eighth below it. The decisions are plain functions ([`pressure`],
//! [`squeeze_units`], [`limit_with`]); the task samples RSS every 100 ms.
//!
//! The limit grows by [`CONNECTION_BYTES`] for each connection served
//! (and keeps that allowance a minute after it closes, [`HeldConnections`]):
//! what a connection's QUIC, TLS and session state take is bounded by
//! `--max-connections`, not by the limit, and holding back the shards'
//! budget cannot shrink it. With a fixed limit, 10,000 idle devices
//! (440 MiB here before a batch was sent) put the server under pressure
//! for good: every batch paid the CPU of returning pages at once, and
//! half the shards' budget was held for nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ctx::EngineCtx;
use crate::metrics as m;
use crate::rowpool::RowSetPool;
use crate::shards::BUDGET_UNIT;

/// How often RSS is read: a flush interval or two, so a peak is caught
/// while it builds, for a read of one small procfs file.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Under pressure, the row pool drops the sets unused since the last
/// trim once every this many samples (a second).
const TRIM_EVERY_SAMPLES: u32 = 10;

/// What one connection being served may add to RSS before it counts
/// against the limit: 10,000 connections after `Welcome` took 440 MiB of
/// RSS here, 45 KB each (quinn's and rustls' state, the session's tasks
/// and buffers).
pub(crate) const CONNECTION_BYTES: u64 = 48 << 10;

/// Samples (a minute) for which the allowance of connections that closed
/// stays in the limit. A fleet that drops off the network comes back
/// within seconds (its devices' backoff), and much of what it took is
/// still resident when it does: its tills' and SKUs' entities stay until
/// passivated, and the allocator keeps the pages of what it freed. Taking
/// the allowance away at once, the 10,000 devices of a run took 470 MiB
/// off the limit as they disconnected and put the server under pressure
/// with RSS unchanged; and pressure ends only an eighth below the limit,
/// which a server whose fleet came back to the same RSS never reaches.
const ALLOWANCE_HOLD_SAMPLES: u32 = 600;

/// The connections the limit allows for: the most served at a sample,
/// held for [`ALLOWANCE_HOLD_SAMPLES`] after the count was last that high.
#[derive(Debug, Default)]
pub(crate) struct HeldConnections {
    peak: usize,
    samples_below: u32,
}

impl HeldConnections {
    /// Counts one sample with `served` connections; returns the count the
    /// limit allows for.
    pub(crate) fn sample(&mut self, served: usize) -> usize {
        if served >= self.peak || self.samples_below >= ALLOWANCE_HOLD_SAMPLES {
            self.peak = served;
            self.samples_below = 0;
        } else {
            self.samples_below += 1;
        }
        self.peak
    }
}

/// The limit in force with `connections` being served: `base` plus their
/// allowance (module docs).
pub(crate) fn limit_with(base: u64, connections: usize) -> u64 {
    base.saturating_add(CONNECTION_BYTES.saturating_mul(connections as u64))
}

/// Whether the server is under memory pressure, given whether it is
/// now: from `limit` on, and until RSS is an eighth below it (so a server
/// near the limit does not switch at every sample).
pub(crate) fn pressure(now: bool, rss: u64, limit: u64) -> bool {
    if now {
        rss >= limit - limit / 8
    } else {
        rss >= limit
    }
}

/// The units of a shard's budget held back under pressure: half, but never
/// so many that a batch of the largest frame could no longer pass (which
/// would stall its device until the pressure ends).
pub(crate) fn squeeze_units(budget_units: u32, max_frame_units: u32) -> u32 {
    (budget_units / 2).min(budget_units.saturating_sub(max_frame_units))
}

/// The process's resident set, in bytes (Linux: `VmRSS` of
/// `/proc/self/status`, a counter the kernel keeps, so reading it walks no
/// page tables; `None` elsewhere or if it cannot be read).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Samples RSS until shutdown; past `limit_bytes`, holds back half of each
/// shard's budget and tells the allocator, through `purge_soon` if the
/// binary gave one, to return freed pages soon. Nothing happens where
/// RSS cannot be read.
pub(crate) async fn run(
    ctx: Arc<EngineCtx>,
    row_sets: Arc<RowSetPool>,
    limit_bytes: u64,
    purge_soon: Option<fn(bool)>,
    mut shutdown: watch::Receiver<bool>,
) {
    if resident_bytes().is_none() {
        tracing::info!("RSS cannot be read here: the memory soft limit is off");
        return;
    }
    let max_frame_units = (ctx.limits.max_frame_bytes as usize).div_ceil(BUDGET_UNIT);
    let max_frame_units = u32::try_from(max_frame_units).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Vec<JoinHandle<()>>> = None;
    // Samples since pressure began.
    let mut under_pressure: u32 = 0;
    // Time under pressure not yet counted in whole seconds, and when the
    // last sample was taken (a late tick counts for the time it took).
    let mut pressure_time = Duration::ZERO;
    let mut sampled_at = tokio::time::Instant::now();
    let mut connections = HeldConnections::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if held.is_some() {
            // The time since the last sample was spent under pressure.
            pressure_time += sampled_at.elapsed();
            let whole = pressure_time.as_secs();
            if whole > 0 {
                m::memory_pressure_seconds(whole);
                pressure_time -= Duration::from_secs(whole);
            }
        }
        sampled_at = tokio::time::Instant::now();
        let Some(rss) = resident_bytes() else {
            continue;
        };
        let limit = limit_with(
            limit_bytes,
            connections.sample(ctx.connections.load(std::sync::atomic::Ordering::Relaxed)),
        );
        let on = pressure(held.is_some(), rss, limit);
        if on {
            // The pool's sets were sized for the whole budget, and the
            // passivation sweep trims it once a minute at most: under
            // pressure, what went unused for a second goes.
            if under_pressure.is_multiple_of(TRIM_EVERY_SAMPLES) {
                row_sets.trim();
            }
            under_pressure = under_pressure.wrapping_add(1);
        } else {
            under_pressure = 0;
        }
        if on == held.is_some() {
            continue;
        }
        held = if on {
            Some(
                ctx.shards
                    .iter()
                    .map(|h| {
                        hold(
                            h.budget.clone(),
                            squeeze_units(h.budget_units, max_frame_units),
                        )
                    })
                    .collect(),
            )
        } else {
            release(held.take());
            None
        };
        if let Some(set) = purge_soon {
            set(on);
        }
        tracing::info!(
            rss_mib = rss >> 20,
            limit_mib = limit >> 20,
            pressure = on,
            "memory soft limit: {}",
            if on {
                "the allocator returns freed pages soon, shards hold half their in-flight budget"
            } else {
                "back under; the allocator's delay and the whole budget again"
            }
        );
        m::memory_pressure(on);
    }
    release(held);
}

/// Takes `units` of a shard's `budget` as soon as they are free (after
/// what is in flight now) and holds them until aborted.
fn hold(budget: Arc<tokio::sync::Semaphore>, units: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        if units == 0 {
            return;
        }
        // Closed only at shutdown.
        if let Ok(_permits) = budget.acquire_many_owned(units).await {
            std::future::pending::<()>().await;
        }
    })
}

/// Gives back what [`hold`] took, or stops its wait.
fn release(held: Option<Vec<JoinHandle<()>>>) {
    for task in held.into_iter().flatten() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_starts_at_the_limit_and_ends_an_eighth_below() {
        let limit = 800;
        assert!(!pressure(false, 799, limit));
        assert!(pressure(false, 800, limit));
        // Once on, it stays on down to 700 (an eighth below 800)...
        assert!(pressure(true, 750, limit));
        assert!(pressure(true, 700, limit));
        // ...and goes off under it.
        assert!(!pressure(true, 699, limit));
        assert!(!pressure(false, 750, limit));
    }

    #[test]
    fn each_connection_served_raises_the_limit() {
        let base = 320 << 20;
        assert_eq!(limit_with(base, 0), base);
        assert_eq!(limit_with(base, 100), base + 100 * CONNECTION_BYTES);
        // 10,000 devices' connections fit beside the default limit.
        assert!(limit_with(base, 10_000) > (320 + 440) << 20);
        assert_eq!(limit_with(u64::MAX, 1), u64::MAX);
    }

    /// Pressure as `run` decides it, sample by sample, for a server at a
    /// steady `rss` while the connections served follow `served`.
    fn pressure_over(rss: u64, served: impl IntoIterator<Item = usize>) -> Vec<bool> {
        let base = 320 << 20;
        let mut held = HeldConnections::default();
        let mut on = false;
        served
            .into_iter()
            .map(|n| {
                on = pressure(on, rss, limit_with(base, held.sample(n)));
                on
            })
            .collect()
    }

    #[test]
    fn a_fleet_that_reconnects_keeps_its_allowance() {
        let rss = 730 << 20;
        let fleet = 10_000;
        // Streaming, the 10,000 devices' server sits under its limit
        // (320 MiB + 10,000 x 48 KiB = 789 MiB).
        let streaming = std::iter::repeat_n(fleet, 100);
        // A network blip: every connection closes, and the devices are
        // back 5 s later, in steps, as their backoff ends.
        let blip = std::iter::repeat_n(0, 50);
        let back = (1..=10).flat_map(|k| std::iter::repeat_n(k * fleet / 10, 10));
        let seen = pressure_over(rss, streaming.chain(blip).chain(back).chain([fleet; 100]));
        assert!(
            seen.iter().all(|on| !on),
            "the server went under pressure at sample {:?} with its RSS unchanged",
            seen.iter().position(|on| *on)
        );
    }

    #[test]
    fn a_fleet_that_left_takes_its_allowance_after_the_hold() {
        let rss = 730 << 20;
        let left = std::iter::repeat_n(10_000, 10).chain(std::iter::repeat_n(0, 700));
        let seen = pressure_over(rss, left);
        let first = seen.iter().position(|on| *on);
        // 730 MiB is past the 320 MiB of a server with nothing connected,
        // once the minute's hold is over.
        assert_eq!(first, Some(10 + ALLOWANCE_HOLD_SAMPLES as usize));
    }

    #[test]
    fn a_squeeze_leaves_room_for_the_largest_frame() {
        // 32 MiB budget, 1 MiB frames: half is held.
        assert_eq!(squeeze_units(32 * 1024, 1024), 16 * 1024);
        // A budget under two frames: only what a frame does not need.
        assert_eq!(squeeze_units(1536, 1024), 512);
        // A budget of one frame or less: nothing.
        assert_eq!(squeeze_units(1024, 1024), 0);
        assert_eq!(squeeze_units(512, 1024), 0);
    }

    #[tokio::test]
    async fn a_squeeze_holds_half_the_budget_until_released() {
        let budget = Arc::new(tokio::sync::Semaphore::new(1000));
        let task = hold(budget.clone(), squeeze_units(1000, 100));
        for _ in 0..100 {
            if budget.available_permits() == 500 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.available_permits(), 500);
        release(Some(vec![task]));
        for _ in 0..100 {
            if budget.available_permits() == 1000 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.available_permits(), 1000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        let rss = resident_bytes().unwrap_or(0);
        assert!(rss > 1 << 20, "rss {rss}");
    }
}
