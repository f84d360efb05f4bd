//! Devices gone silent: a till that stopped sending is a lost sale count
//! or a broken shelf sensor, and nothing else on the server notices it.
//!
//! Read from the store's watermarks table (each device's last committed
//! batch and when), not from the sessions: the table outlives restarts,
//! and on ScyllaDB every node sees the whole fleet, so a device that moved
//! to another node is not silent. Once a minute, off the async threads.

use std::sync::Arc;
use std::time::Duration;

use tillstream_storage::{Backend, Query, RowRef, StoreError, Table};
use tokio::sync::watch;

/// The silences counted: a label value and its length in seconds.
pub(crate) const THRESHOLDS: [(&str, i64); 4] = [
    ("5m", 300),
    ("1h", 3_600),
    ("1d", 86_400),
    ("7d", 7 * 86_400),
];

/// Each threshold's label and how many devices are silent past it.
pub(crate) type SilentCounts = [(&'static str, u64); 4];

/// How often the table is read.
const EVERY: Duration = Duration::from_secs(60);

/// The devices in the watermarks table, and how many of them had no batch
/// committed for longer than each of [`THRESHOLDS`], as of `now_us`.
pub(crate) fn count_silent(q: &dyn Query, now_us: i64) -> Result<(u64, SilentCounts), StoreError> {
    let mut known = 0u64;
    let mut silent = THRESHOLDS.map(|(label, _)| (label, 0u64));
    q.scan(Table::DeviceWatermarks, &mut |row| {
        let RowRef::Watermark(w) = row else { return };
        known += 1;
        let quiet_s = now_us.saturating_sub(w.updated_at_us) / 1_000_000;
        for (i, &(_, limit_s)) in THRESHOLDS.iter().enumerate() {
            if quiet_s > limit_s {
                silent[i].1 += 1;
            }
        }
    })?;
    Ok((known, silent))
}

/// Counts the silent devices now and then every minute until shutdown,
/// into `tillstream_devices_known` and `tillstream_devices_silent{over}`.
pub(crate) async fn run(store: Arc<dyn Backend>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let q = store.clone();
        let counted =
            tokio::task::spawn_blocking(move || count_silent(&*q, crate::clock::now_us())).await;
        match counted {
            Ok(Ok((known, silent))) => crate::metrics::devices_silent(known, &silent),
            Ok(Err(e)) => tracing::warn!(error = %e, "counting silent devices failed"),
            Err(e) => tracing::warn!(error = %e, "counting silent devices panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_embedded::EmbeddedStore;
    use tillstream_storage::{RowSet, Store, WatermarkRow};

    #[test]
    fn devices_count_as_silent_past_each_threshold() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(&dir.path().join("store"))?;
        let now_us = 1_800_000_000_000_000;
        let ago = |s: i64| now_us - s * 1_000_000;
        let watermarks: Vec<WatermarkRow> = [
            (1, ago(10)),
            (2, ago(301)),
            (3, ago(4_000)),
            (4, ago(700_000)),
        ]
        .into_iter()
        .map(|(device, updated_at_us)| WatermarkRow {
            device,
            seq: 1,
            updated_at_us,
        })
        .collect();
        store.commit(&RowSet {
            watermarks,
            ..RowSet::default()
        })?;
        let (known, silent) = count_silent(&store, now_us)?;
        assert_eq!(known, 4);
        assert_eq!(silent, [("5m", 3), ("1h", 2), ("1d", 1), ("7d", 1)]);
        Ok(())
    }
}
