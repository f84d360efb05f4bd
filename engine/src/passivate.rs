//! The passivation sweep: every so often, each shard drops the stores and
//! rollup days unchanged for `after`, the rollup minutes unchanged for a
//! sweep from the days that stay, and the device slots of devices gone
//! for as long, as long as their rows are in the tables (see `shards` and
//! `devices`). They come back from the store when a batch needs them, so
//! memory follows what devices use, not what they ever used. The row
//! sets that waited in the pool since the last sweep go too (`rowpool`),
//! and then the allocator is asked to return what was freed to the OS
//! (`ServerConfig::release_memory`). The shards passivate after the sweep
//! has sent them its message, so what they free goes back at the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_engine_core::shard::IdleBefore;
use tokio::sync::watch;

use crate::clock::now_us;
use crate::ctx::EngineCtx;
use crate::metrics as m;
use crate::rowpool::RowSetPool;
use crate::shards::ShardMsg;

/// How often a sweep runs for a given idle time: often enough that nothing
/// stays much past it, and never more than once a second or less than once
/// a minute.
pub(crate) fn sweep_every(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// How long a rollup minute of a day still in use stays in memory after
/// its last sale: one sweep. Tills sell in time order, so a minute that
/// went a sweep without a sale is nearly always done with, and a till
/// that sells all day then holds its last minute or two, not the day; a
/// late sale for one brings the day back (`ShardCore::passivate_idle`).
pub(crate) fn minute_idle(after: Duration) -> Duration {
    sweep_every(after).min(after)
}

/// Runs sweeps until shutdown.
pub(crate) async fn run(
    ctx: Arc<EngineCtx>,
    after: Duration,
    materialized: watch::Receiver<u64>,
    row_sets: Arc<RowSetPool>,
    release_memory: Option<fn()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(sweep_every(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_us();
        let ago =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let idle = IdleBefore {
            entities_us: ago(after),
            minutes_us: ago(minute_idle(after)),
        };
        for shard in &ctx.shards {
            // A stopped shard fails the engine elsewhere; nothing to do here.
            let _ = shard.actor.send_message(ShardMsg::Passivate(idle));
        }
        if let Some(since_before) = Instant::now().checked_sub(after) {
            let gone = ctx
                .devices
                .passivate_idle(since_before, *materialized.borrow());
            if gone > 0 {
                tracing::debug!(devices = gone, "passivated idle device slots");
                m::passivated_devices(gone);
            }
        }
        let sets = row_sets.trim();
        if sets > 0 {
            tracing::debug!(sets, "dropped row sets unused since the last sweep");
        }
        if let Some(release) = release_memory {
            let started = Instant::now();
            release();
            m::allocator_collection(started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_run_between_once_a_second_and_once_a_minute() {
        assert_eq!(
            sweep_every(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(sweep_every(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(
            sweep_every(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_rollup_minute_stays_a_sweep_and_never_longer_than_its_day() {
        // The default: days after 15 min, minutes after a minute.
        let after = Duration::from_secs(15 * 60);
        assert_eq!(minute_idle(after), Duration::from_secs(60));
        assert_eq!(minute_idle(after), sweep_every(after));
        assert_eq!(minute_idle(Duration::from_secs(8)), Duration::from_secs(2));
        // Shorter than a second: the sweep runs each second, the minutes
        // go as early as their day would.
        assert_eq!(
            minute_idle(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}
