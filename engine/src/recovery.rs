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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
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
    // Everything the records will need is read first, on every core, and
    // installed as it arrives. Reading each store when the first record
    // that needs it came read them one at a time (a record is one
    // device's batch, mostly of one store), on one core while the other
    // idled: 1.5 s of a 2.2 s restart. Reading earlier changes nothing:
    // what a store or day holds in the tables changes only through an
    // apply, which comes after its read.
    let ahead = needs_of_journal(store, from, rules, &cores, &mut plan)?;
    load_each(store, &whole, &ahead, &mut |_, loaded| {
        cores.iter_mut().for_each(|core| loaded.install(core));
    })?;
    let read_ahead_ms = started.elapsed().as_millis() as u64;
    let mut rows = RowSet::default();
    let mut needs: Vec<Need> = Vec::new();
    let mut done = Replayed {
        checkpoint: from,
        ..Replayed::default()
    };
    let mut last = from;
    let mut visit = |lsn: u64, payload: &[u8]| -> Result<(), StoreError> {
        let (h, batch) = plan_record(lsn, payload, rules, &mut plan)?;
        let archived = batch.get();
        for (shard, items) in plan.touched() {
            // Everything was read ahead; this is for what a core no longer
            // holds by the time a record needs it (none, as cores passivate
            // nothing during replay), so that the apply never runs without.
            needs.clear();
            cores[usize::from(shard)].needs(archived, items, &mut needs);
            load_each(store, &whole, &needs, &mut |_, loaded| {
                cores.iter_mut().for_each(|core| loaded.install(core));
            })?;
            let core = &mut cores[usize::from(shard)];
            core.apply(lsn, h.device, archived, items, h.now_us, &mut rows);
        }
        push_ledger(
            &mut rows,
            h,
            u32::try_from(archived.events.len()).unwrap_or(u32::MAX),
            batch_digest(batch.bytes()),
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
        let applied_ms = started.elapsed().as_millis() as u64;
        store.materialize(std::slice::from_ref(&rows), last)?;
        done.checkpoint = store.sync_materialized()?;
        tracing::info!(
            records = done.records,
            events = done.events,
            read_ahead = ahead.len(),
            read_ahead_ms,
            applied_ms,
            checkpoint = done.checkpoint,
            ms = started.elapsed().as_millis() as u64,
            "journal replayed into the tables"
        );
    }
    Ok((done, cores))
}

/// A journal record's header and its frame, validated again (a journal is
/// a file like any other), with the frame planned into `plan` as the live
/// path planned it: both passes of replay start from this.
fn plan_record(
    lsn: u64,
    payload: &[u8],
    rules: Rules,
    plan: &mut BatchPlan,
) -> Result<(BatchHeader, ValidatedBatch), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "journal record",
        reason: format!("lsn {lsn}: {reason}"),
    };
    let (h, bytes) = BatchHeader::decode(payload)
        .ok_or_else(|| corrupt("not a batch record this version knows".into()))?;
    let mut frame = PayloadBuf::with_capacity(bytes.len());
    frame.extend_from_slice(bytes);
    let batch = ValidatedBatch::try_new(frame, u32::MAX)
        .map_err(|(e, _)| corrupt(format!("the frame does not validate: {e}")))?;
    plan_batch_scoped(
        batch.get(),
        h.device,
        &h.scope,
        &h.rules(rules),
        h.now_us,
        plan,
    );
    Ok((h, batch))
}

/// What the journal's records after `from` need from the tables, each
/// once, in the order the records first need them: what `cores` (as they
/// are, not changed) lack for any of them.
fn needs_of_journal(
    store: &dyn Store,
    from: u64,
    rules: Rules,
    cores: &[ShardCore],
    plan: &mut BatchPlan,
) -> Result<Vec<Need>, StoreError> {
    let (mut all, mut seen, mut one) = (Vec::new(), HashSet::new(), Vec::new());
    store.journal_replay(from, &mut |lsn, payload| {
        let (_, batch) = plan_record(lsn, payload, rules, plan)?;
        let archived = batch.get();
        for (shard, items) in plan.touched() {
            one.clear();
            cores[usize::from(shard)].needs(archived, items, &mut one);
            all.extend(one.iter().filter(|&&n| seen.insert(n)));
        }
        Ok(())
    })?;
    Ok(all)
}

/// Reads every need of `needs`, on as many threads as there are cores,
/// and hands each to `install(index in needs, what was read)` on this
/// thread as soon as it is read, in no set order.
///
/// Why: a restart's replay is mostly these reads (each store's levels and
/// the movements of its late window). Threads take the next need as they
/// finish one, as stores differ in size by 6 times; at most two reads per
/// thread wait to be installed, which bounds the memory of reads in
/// flight.
fn load_each(
    store: &dyn Store,
    cfg: &ShardConfig,
    needs: &[Need],
    install: &mut dyn FnMut(usize, shards::Loaded),
) -> Result<(), StoreError> {
    let threads = store.read_parallelism().max(1).min(needs.len());
    let one_by_one = |install: &mut dyn FnMut(usize, shards::Loaded)| {
        for (i, &need) in needs.iter().enumerate() {
            install(i, shards::load(store, cfg, need)?);
        }
        Ok(())
    };
    if threads <= 1 {
        return one_by_one(install);
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(threads);
        // A thread that cannot be had (resource limits) is no error: the
        // others read its share.
        let readers: Vec<_> = (0..threads)
            .filter_map(|_| {
                let (tx, next, stop) = (tx.clone(), &next, &stop);
                std::thread::Builder::new()
                    .name("tillstream-activate".into())
                    .spawn_scoped(scope, move || {
                        while !stop.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&need) = needs.get(i) else { break };
                            if tx.send((i, shards::load(store, cfg, need))).is_err() {
                                break;
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        drop(tx);
        if readers.is_empty() {
            return one_by_one(install);
        }
        let mut outcome = Ok(());
        // The channel closes once every reader is done.
        for (i, loaded) in rx {
            match loaded {
                Ok(loaded) if outcome.is_ok() => install(i, loaded),
                Ok(_) => {}
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    outcome = outcome.and(Err(e));
                }
            }
        }
        for reader in readers {
            if reader.join().is_err() {
                outcome = outcome.and(Err(StoreError::Backend {
                    op: "activation read",
                    source: "a reading thread panicked".into(),
                }));
            }
        }
        outcome
    })
}

/// The digest the ledger keeps of a batch (`BatchRow::digest`), of the
/// payload the device sent: what the journal holds too, so a replay
/// writes the same. Never 0, which stands for "not kept".
pub(crate) fn batch_digest(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload).max(1)
}

/// The batch ledger row and the watermark a batch's unit carries.
pub(crate) fn push_ledger(rows: &mut RowSet, h: BatchHeader, events: u32, digest: u64) {
    rows.batches.push(BatchRow {
        device: h.device,
        seq: h.seq,
        events,
        received_at_us: h.now_us,
        digest,
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
    use tillstream_embedded::EmbeddedStore;
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

    fn store_in(dir: &tempfile::TempDir) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open(&dir.path().join("store"))
    }

    fn tempdir() -> Result<tempfile::TempDir, StoreError> {
        tempfile::tempdir().map_err(|e| StoreError::Backend {
            op: "tempdir",
            source: Box::new(e),
        })
    }

    #[test]
    fn reads_in_parallel_what_one_by_one_reads() -> Result<(), StoreError> {
        let dir = tempdir()?;
        let store = store_in(&dir)?;
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
        let mut parallel = Vec::new();
        load_each(&store, &cfg, &needs, &mut |i, loaded| {
            parallel.push((i, loaded))
        })?;
        parallel.sort_by_key(|(i, _)| *i);
        let indexes: Vec<usize> = parallel.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (0..needs.len()).collect::<Vec<_>>(), "each once");
        let parallel: Vec<shards::Loaded> = parallel.into_iter().map(|(_, l)| l).collect();
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
            "every need read"
        );
        Ok(())
    }

    /// Fails the activation read of one store.
    #[derive(Debug)]
    struct Unreadable(u32);

    impl crate::faults::CommitFault for Unreadable {
        fn load_levels(&self, store: u32) -> Result<(), StoreError> {
            if store == self.0 {
                return Err(StoreError::Backend {
                    op: "reading levels",
                    source: format!("store {store} is unreadable").into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_failed_read_is_the_error_and_nothing_waits_for_ever() -> Result<(), StoreError> {
        let dir = tempdir()?;
        let inner: std::sync::Arc<dyn Store> = std::sync::Arc::new(store_in(&dir)?);
        inner.materialize(&[rows(1..=7, 1_800_000_000_000_000)], 1)?;
        let store = crate::faults::FaultyStore::new(inner, Unreadable(4));
        let needs: Vec<Need> = (1..=7).map(Need::Store).collect();
        let mut installed = Vec::new();
        let err = load_each(&store, &ShardConfig::default(), &needs, &mut |i, _| {
            installed.push(i)
        })
        .err()
        .ok_or("an unreadable store was read")
        .map_err(|e| StoreError::Backend {
            op: "test",
            source: e.into(),
        })?;
        assert!(err.to_string().contains("store 4 is unreadable"), "{err}");
        assert!(
            !installed.contains(&3),
            "the failed need was installed: {installed:?}"
        );
        Ok(())
    }

    #[test]
    fn replay_reads_what_the_journal_needs_first_and_applies_on_what_it_read()
    -> Result<(), Box<dyn std::error::Error>> {
        use tillstream_engine_core::route::Scope;
        use tillstream_engine_core::testkit::{batch, line, sale};
        use tillstream_journal::encode_record;

        let dir = tempdir()?;
        let now_us = 1_800_000_000_000_000;
        {
            let store = store_in(&dir)?;
            store.materialize(&[rows(1..=7, now_us - 10_000_000)], 1)?;
            store.sync_materialized()?;
        }
        // Reopened, its journal continues after the checkpoint.
        let store = store_in(&dir)?;
        // One device's batch per record, each in one store, as tills send:
        // stores 3, 1, 3 again, and 9, which the tables do not hold.
        let mut records = Vec::new();
        for (i, store_id) in [3u32, 1, 3, 9].into_iter().enumerate() {
            let seq = i as u64 + 1;
            let frame = batch(seq, vec![sale(now_us, store_id, 1, vec![line(5, 2, 100)])])?;
            let header = BatchHeader {
                device: u64::from(store_id),
                seq,
                now_us,
                max_future_s: 300,
                scope: Scope::default(),
            };
            encode_record(1 + seq, &[&header.encode(), frame.bytes()], &mut records);
        }
        store.journal_append(&records, 5)?;

        let rules = Rules::default();
        let cores = [ShardCore::new(ShardConfig::default())];
        let ahead = needs_of_journal(&store, 1, rules, &cores, &mut BatchPlan::new(1))?;
        let stores: Vec<u32> = ahead
            .iter()
            .filter_map(|n| match n {
                Need::Store(s) => Some(*s),
                Need::RollupDay { .. } => None,
            })
            .collect();
        let days: Vec<u32> = ahead
            .iter()
            .filter_map(|n| match n {
                Need::RollupDay { store, .. } => Some(*store),
                Need::Store(_) => None,
            })
            .collect();
        assert_eq!(stores, [3, 1, 9], "each store once, in first-need order");
        assert_eq!(days, [3, 1, 9], "each store's day once");

        let (done, cores) = replay(&store, 1, rules, |id| ShardConfig {
            id,
            shards: 1,
            rules,
            ..ShardConfig::default()
        })?;
        assert_eq!((done.records, done.events, done.checkpoint), (4, 4, 5));
        assert_eq!(cores.len(), 1);
        // SKU 5 stood at 95 in stores 1 and 3: the sales apply on what
        // activation read, not on an empty level.
        let level = |s: u32| -> Result<Option<i64>, StoreError> {
            Ok(store
                .load_levels(s)?
                .iter()
                .find(|l| l.sku == 5)
                .map(|l| l.level))
        };
        assert_eq!(level(3)?, Some(95 - 4));
        assert_eq!(level(1)?, Some(95 - 2));
        assert_eq!(level(9)?, Some(-2));
        Ok(())
    }
}
