//! Recovery at start: the journal records after the tables' checkpoint are
//! applied again and their rows materialized, before any device is served.
//!
//! Replay runs the same decisions as the live path (`plan_batch`, then
//! `ShardCore::apply` per shard) in journal order, with the time the live
//! path stamped each batch with. The journal order is every shard's apply
//! order (see `sequencer`), so every entity sees its events in the order it
//! first did and the rows come out the same: the acks a device received
//! (which name refused events) stay true. The shard count may differ from
//! the run that wrote the journal: entities are independent, and each one's
//! events keep their order whichever shard it lands on.
//!
//! Invariant: when [`replay`] returns Ok, the tables hold every record the
//! journal holds, durably, and every device's watermark in the tables is
//! its highest journaled seq.

use std::time::Instant;

use tillstream_engine_core::route::{BatchPlan, plan_batch_scoped};
use tillstream_engine_core::shard::{Need, ShardConfig, ShardCore};
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::ValidatedBatch;
use tillstream_protocol::frame::PayloadBuf;
use tillstream_storage::{BatchRow, RowSet, Store, StoreError, WatermarkRow};

use crate::sequencer::BatchHeader;
use crate::shards;

/// Rows gathered before they are written during replay.
const REPLAY_CHUNK_ROWS: usize = 256 * 1024;

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Journal records applied again.
    pub records: u64,
    /// Events in them.
    pub events: u64,
    /// The checkpoint after replay: the journal's last LSN.
    pub checkpoint: u64,
}

/// Brings the tables of `store` up to its journal, as a server does when
/// it starts: every tool that reads a data directory (`verify`, `query`)
/// calls this first, or it would miss what was acknowledged but not yet
/// materialized when the server stopped. Any shard count gives the same
/// rows (module docs); the default validation rules are used.
pub fn recover(store: &dyn Store) -> Result<Replayed, StoreError> {
    let rules = Rules::default();
    let (done, _cores) = replay(store, 1, rules, |id| ShardConfig {
        id,
        shards: 1,
        rules,
        ..ShardConfig::default()
    })?;
    Ok(done)
}

/// Applies and materializes every journal record after the checkpoint
/// (module docs). Blocking: call it from `spawn_blocking`. Returns the
/// shards' cores as replay left them: the server's shard actors start from
/// them, so what replay activated is not read from the tables again.
pub(crate) fn replay(
    store: &dyn Store,
    shard_count: u16,
    rules: Rules,
    cfg_of: impl Fn(u16) -> ShardConfig,
) -> Result<(Replayed, Vec<ShardCore>), StoreError> {
    let started = Instant::now();
    let from = store.materialized_lsn()?;
    let mut cores: Vec<ShardCore> = (0..shard_count.max(1))
        .map(|id| ShardCore::new(cfg_of(id)))
        .collect();
    let mut plan = BatchPlan::new(shard_count);
    // Activation reads for all the shards at once: the late window of
    // every SKU of the store, whichever shard owns it.
    let whole = ShardConfig {
        id: 0,
        shards: 1,
        ..cfg_of(0)
    };
    let mut rows = RowSet::default();
    let mut needs: Vec<Need> = Vec::new();
    let mut done = Replayed {
        checkpoint: from,
        ..Replayed::default()
    };
    let mut last = from;
    let mut visit = |lsn: u64, payload: &[u8]| -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "journal record",
            reason: format!("lsn {lsn}: {reason}"),
        };
        let (h, bytes) = BatchHeader::decode(payload)
            .ok_or_else(|| corrupt("not a batch record this version knows".into()))?;
        // Stored bytes are checked again: a journal is a file like any other.
        let mut frame = PayloadBuf::with_capacity(bytes.len());
        frame.extend_from_slice(bytes);
        let batch = ValidatedBatch::try_new(frame, u32::MAX)
            .map_err(|(e, _)| corrupt(format!("the frame does not validate: {e}")))?;
        let archived = batch.get();
        plan_batch_scoped(
            archived,
            h.device,
            &h.scope,
            &h.rules(rules),
            h.now_us,
            &mut plan,
        );
        for (shard, items) in plan.touched() {
            needs.clear();
            cores[usize::from(shard)].needs(archived, items, &mut needs);
            // Read once for every shard: each keeps its own SKUs and
            // terminals, and one that holds the store already ignores it.
            for loaded in load_all(store, &whole, &needs)? {
                for core in cores.iter_mut() {
                    loaded.install(core);
                }
            }
            let core = &mut cores[usize::from(shard)];
            core.apply(lsn, h.device, archived, items, h.now_us, &mut rows);
        }
        push_ledger(
            &mut rows,
            h,
            u32::try_from(archived.events.len()).unwrap_or(u32::MAX),
        );
        done.records += 1;
        done.events += archived.events.len() as u64;
        last = lsn;
        if rows.len() >= REPLAY_CHUNK_ROWS {
            store.materialize(std::slice::from_ref(&rows), lsn)?;
            rows.clear();
        }
        Ok(())
    };
    store.journal_replay(from, &mut visit)?;
    if last > from {
        store.materialize(std::slice::from_ref(&rows), last)?;
        done.checkpoint = store.sync_materialized()?;
        tracing::info!(
            records = done.records,
            events = done.events,
            checkpoint = done.checkpoint,
            ms = started.elapsed().as_millis() as u64,
            "journal replayed into the tables"
        );
    }
    Ok((done, cores))
}

/// Reads every need of `needs`, on as many threads as there are cores.
///
/// Why: a restart's replay is mostly these reads. The first records name
/// every store the fleet sells in, and each store's activation reads its
/// levels and decodes the movements of its late window; one after the
/// other on one core that was 1.4 s of a 2.1 s restart after 10 M events.
fn load_all(
    store: &dyn Store,
    cfg: &ShardConfig,
    needs: &[Need],
) -> Result<Vec<shards::Loaded>, StoreError> {
    let read = |chunk: &[Need]| -> Result<Vec<shards::Loaded>, StoreError> {
        chunk.iter().map(|&n| shards::load(store, cfg, n)).collect()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(needs.len());
    if threads <= 1 {
        return read(needs);
    }
    let per_thread = needs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        // A thread that cannot be had (resource limits) is no error: its
        // share is then read here.
        let reading: Vec<_> = needs
            .chunks(per_thread)
            .map(|chunk| {
                std::thread::Builder::new()
                    .name("tillstream-activate".into())
                    .spawn_scoped(scope, move || read(chunk))
                    .map_err(|_| chunk)
            })
            .collect();
        let mut all = Vec::with_capacity(needs.len());
        for reader in reading {
            let part = match reader {
                Ok(handle) => handle.join().map_err(|_| StoreError::Backend {
                    op: "activation read",
                    source: "a reading thread panicked".into(),
                })?,
                Err(chunk) => read(chunk),
            };
            all.extend(part?);
        }
        Ok(all)
    })
}

/// The batch ledger row and the watermark a batch's unit carries.
pub(crate) fn push_ledger(rows: &mut RowSet, h: BatchHeader, events: u32) {
    rows.batches.push(BatchRow {
        device: h.device,
        seq: h.seq,
        events,
        received_at_us: h.now_us,
    });
    rows.watermarks.push(WatermarkRow {
        device: h.device,
        seq: h.seq,
        updated_at_us: h.now_us,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_storage::embedded::EmbeddedStore;
    use tillstream_storage::{EventKey, MovementReason, StockLevelRow, StockMovementRow};

    /// Levels and in-window movements of SKUs 1..=20 of `stores`.
    fn rows(stores: std::ops::RangeInclusive<u32>, now_us: i64) -> RowSet {
        let mut rows = RowSet::default();
        for store in stores {
            for sku in 1..=20u64 {
                let ts_us = now_us - i64::from(store) * 1_000 - sku as i64;
                rows.stock_levels.push(StockLevelRow {
                    store,
                    sku,
                    level: 100 - sku as i64,
                    count_ts_us: None,
                    count_key: None,
                    updated_ts_us: ts_us,
                    version: 1,
                });
                rows.stock_movements.push(StockMovementRow {
                    store,
                    sku,
                    ts_us,
                    key: EventKey {
                        device: u64::from(store),
                        seq: sku,
                        idx: 0,
                    },
                    line: 0,
                    reason: MovementReason::Receipt,
                    delta: sku as i64,
                    counted: 0,
                    level_after: 100 - sku as i64,
                    applied: true,
                });
            }
        }
        rows
    }

    #[test]
    fn reads_in_parallel_what_one_by_one_reads_in_the_order_asked() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Backend {
            op: "tempdir",
            source: Box::new(e),
        })?;
        let store = EmbeddedStore::open(&dir.path().join("store"))?;
        let now_us = 1_800_000_000_000_000;
        store.materialize(&[rows(1..=7, now_us)], 1)?;
        let cfg = ShardConfig::default();
        // More needs than cores, one missing store, a rollup day among them.
        let needs: Vec<Need> = [3, 1, 9, 7, 2, 5, 4, 6]
            .into_iter()
            .map(Need::Store)
            .chain([Need::RollupDay {
                store: 2,
                day: 20_000,
            }])
            .collect();
        let parallel = load_all(&store, &cfg, &needs)?;
        let one_by_one = needs
            .iter()
            .map(|&n| shards::load(&store, &cfg, n))
            .collect::<Result<Vec<_>, _>>()?;
        assert_eq!(format!("{parallel:?}"), format!("{one_by_one:?}"));
        let stores: Vec<Option<(u32, usize, usize)>> = parallel
            .iter()
            .map(|l| match l {
                shards::Loaded::Store(id, s) => {
                    Some((*id, s.levels.len(), s.recent_movements.len()))
                }
                shards::Loaded::RollupDay(..) => None,
            })
            .collect();
        assert_eq!(
            stores,
            vec![
                Some((3, 20, 20)),
                Some((1, 20, 20)),
                Some((9, 0, 0)),
                Some((7, 20, 20)),
                Some((2, 20, 20)),
                Some((5, 20, 20)),
                Some((4, 20, 20)),
                Some((6, 20, 20)),
                None,
            ],
            "every need read, in the order asked"
        );
        Ok(())
    }
}
