//! The passivation sweep: every so often, each shard drops the stores and
//! rollup days unchanged for `after`, and the device slots of devices gone
//! for as long, as long as their rows are in the tables (see `shards` and
//! `devices`). They come back from the store when a batch needs them, so
//! memory follows what devices use, not what they ever used. The row
//! sets that waited in the pool since the last sweep go too (`rowpool`),
//! and then the allocator is asked to return what was freed to the OS
//! (`ServerConfig::release_memory`). The shards passivate after the sweep
//! has sent them its message, so what they free goes back at the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let idle_before_us =
            now_us().saturating_sub(i64::try_from(after.as_micros()).unwrap_or(i64::MAX));
        for shard in &ctx.shards {
            // A stopped shard fails the engine elsewhere; nothing to do here.
            let _ = shard
                .actor
                .send_message(ShardMsg::Passivate { idle_before_us });
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
}
