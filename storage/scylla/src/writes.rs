//! Prepared statements, and how a set of rows becomes requests: grouped
//! by partition into unlogged batches (never across partitions: a batch
//! of one partition is one mutation on one replica set, a batch across
//! partitions is coordinator work with no atomicity to show for it), run
//! at most `max_in_flight` at a time.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, MaybeUnset};

use super::backend_err;
use super::mapping::{ByStoreHour, CqlRow, DEAD_LETTER_COLUMNS, Placed, Values};
use super::snapshots::{Snapshots, rollup_version, staged_chunk};
use super::statements::{Texts, insert, insert_into, select};
use tillstream_storage::buckets::journal_segment;
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;

/// Statements per unlogged batch, at most.
const BATCH_ROWS: usize = 32;
/// Bytes per batch, at most (ScyllaDB warns past 128 KiB and refuses past
/// 1 MiB by default); a larger single row goes alone.
const BATCH_BYTES: usize = 96 << 10;
/// Rows per page of a read.
const PAGE_ROWS: i32 = 5_000;

/// Every prepared statement of the backend.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) journal_insert: PreparedStatement,
    pub(crate) journal_read: PreparedStatement,
    pub(crate) journal_delete_segment: PreparedStatement,
    pub(crate) generation_write: PreparedStatement,
    pub(crate) checkpoint_read: PreparedStatement,
    pub(crate) checkpoint_write: PreparedStatement,
    pub(crate) pruned_write: PreparedStatement,
    pub(crate) watermark_read: PreparedStatement,
    pub(crate) batch_read: PreparedStatement,
    pub(crate) levels_read: PreparedStatement,
    pub(crate) store_movements_read: PreparedStatement,
    pub(crate) rollups_read: PreparedStatement,
    pub(crate) history_read: PreparedStatement,
    pub(crate) sales_read: PreparedStatement,
    ins_sales: PreparedStatement,
    ins_lines: PreparedStatement,
    ins_movements: PreparedStatement,
    ins_store_movements: PreparedStatement,
    ins_levels: PreparedStatement,
    ins_rollups: PreparedStatement,
    ins_health: PreparedStatement,
    ins_marks: PreparedStatement,
    ins_batches: PreparedStatement,
    ins_rejected: PreparedStatement,
    ins_dead: PreparedStatement,
    ins_staged_levels: PreparedStatement,
    ins_staged_rollups: PreparedStatement,
    pub(crate) staged_levels_read: PreparedStatement,
    pub(crate) staged_rollups_read: PreparedStatement,
    pub(crate) staged_levels_delete: PreparedStatement,
    pub(crate) staged_rollups_delete: PreparedStatement,
    pub(crate) snapshots_at_write: PreparedStatement,
    pub(crate) product_insert: PreparedStatement,
    pub(crate) store_insert: PreparedStatement,
    pub(crate) products_read: PreparedStatement,
    pub(crate) stores_read: PreparedStatement,
    /// `SELECT cols FROM ks.T` per table, for scans.
    scans: Vec<(Table, PreparedStatement)>,
}

/// Prepares `text` as idempotent (every statement here is: inserts under
/// identifying keys, deletes, reads), so the driver may retry it.
async fn prep(session: &Session, text: &str) -> Result<PreparedStatement, StoreError> {
    let mut p = session
        .prepare(text)
        .await
        .map_err(|e| StoreError::Backend {
            op: "preparing a statement",
            source: format!("{e}\n  in: {text}").into(),
        })?;
    p.set_is_idempotent(true);
    p.set_page_size(PAGE_ROWS);
    Ok(p)
}

/// Prepares a conditional write (Paxos, at SERIAL across data centres):
/// idempotent too, as running it twice gives the same row.
pub(crate) async fn prep_conditional(
    session: &Session,
    text: &str,
) -> Result<PreparedStatement, StoreError> {
    let mut p = prep(session, text).await?;
    p.set_serial_consistency(Some(SerialConsistency::Serial));
    Ok(p)
}

impl Prepared {
    /// Prepares every statement at once: one round trip to the cluster
    /// instead of one per statement, which on a loaded cluster made a
    /// start (and the replay of a gone node's journal, which opens its
    /// node id) take seconds longer.
    pub(crate) async fn new(
        session: &Session,
        t: &Texts,
        ks: &str,
    ) -> Result<Prepared, StoreError> {
        let mut scans = Vec::new();
        for table in Table::ALL {
            let text = match table {
                Table::Sales => select::<SaleRow>(ks, ""),
                Table::SaleLines => select::<SaleLineRow>(ks, ""),
                Table::StockMovements => select::<StockMovementRow>(ks, ""),
                Table::StockLevels => select::<StockLevelRow>(ks, ""),
                Table::TerminalRollups => select::<TerminalRollupRow>(ks, ""),
                Table::DeviceHealth => select::<DeviceHealthRow>(ks, ""),
                Table::DeviceWatermarks => select::<WatermarkRow>(ks, ""),
                Table::DeviceBatches => select::<BatchRow>(ks, ""),
                Table::RejectedEvents => select::<RejectedEventRow>(ks, ""),
                Table::DeadLetters => select::<DeadLetterRow>(ks, ""),
            };
            scans.push((table, text));
        }
        // (conditional, text) in the order the fields below take them.
        let texts: Vec<(bool, String)> = vec![
            (false, t.journal_insert.clone()),
            (false, t.journal_read.clone()),
            (false, t.journal_delete_segment.clone()),
            (true, t.generation_write.clone()),
            (false, t.checkpoint_read.clone()),
            (true, t.checkpoint_write.clone()),
            (false, t.pruned_write.clone()),
            (false, t.watermark_read.clone()),
            (false, t.batch_read.clone()),
            (false, t.levels_read.clone()),
            (false, t.store_movements_read.clone()),
            (false, t.rollups_read.clone()),
            (false, t.history_read.clone()),
            (false, t.sales_read.clone()),
            (false, insert::<SaleRow>(ks, false)),
            (false, insert::<SaleLineRow>(ks, false)),
            (false, insert::<StockMovementRow>(ks, false)),
            (false, insert::<ByStoreHour>(ks, false)),
            (false, insert::<StockLevelRow>(ks, true)),
            (false, insert::<TerminalRollupRow>(ks, true)),
            (false, insert::<DeviceHealthRow>(ks, false)),
            (false, insert::<WatermarkRow>(ks, true)),
            (false, insert::<BatchRow>(ks, false)),
            (false, insert::<RejectedEventRow>(ks, false)),
            (
                false,
                insert_into(ks, "dead_letters", DEAD_LETTER_COLUMNS, false),
            ),
            (false, t.staged_levels_insert.clone()),
            (false, t.staged_rollups_insert.clone()),
            (false, t.staged_levels_read.clone()),
            (false, t.staged_rollups_read.clone()),
            (false, t.staged_levels_delete.clone()),
            (false, t.staged_rollups_delete.clone()),
            (false, t.snapshots_at_write.clone()),
            (false, t.product_insert.clone()),
            (false, t.store_insert.clone()),
            (false, t.products_read.clone()),
            (false, t.stores_read.clone()),
        ];
        let scan_tables: Vec<Table> = scans.iter().map(|(table, _)| *table).collect();
        let texts: Vec<(bool, String)> = texts
            .into_iter()
            .chain(scans.into_iter().map(|(_, text)| (false, text)))
            .collect();
        let all = futures_util::future::join_all(texts.iter().map(|(cond, text)| async move {
            if *cond {
                prep_conditional(session, text).await
            } else {
                prep(session, text).await
            }
        }))
        .await;
        let mut prepared = all.into_iter();
        let mut next = || {
            prepared.next().unwrap_or_else(|| {
                Err(StoreError::Backend {
                    op: "preparing a statement",
                    source: "fewer statements prepared than asked".into(),
                })
            })
        };
        let mut prepared = Prepared {
            journal_insert: next()?,
            journal_read: next()?,
            journal_delete_segment: next()?,
            generation_write: next()?,
            checkpoint_read: {
                // At SERIAL: it sees the conditional writes of the
                // generation and the checkpoint, committed or in flight.
                let mut p = next()?;
                p.set_consistency(Consistency::Serial);
                p
            },
            checkpoint_write: next()?,
            pruned_write: next()?,
            watermark_read: next()?,
            batch_read: next()?,
            levels_read: next()?,
            store_movements_read: next()?,
            rollups_read: next()?,
            history_read: next()?,
            sales_read: next()?,
            ins_sales: next()?,
            ins_lines: next()?,
            ins_movements: next()?,
            ins_store_movements: next()?,
            ins_levels: next()?,
            ins_rollups: next()?,
            ins_health: next()?,
            ins_marks: next()?,
            ins_batches: next()?,
            ins_rejected: next()?,
            ins_dead: next()?,
            ins_staged_levels: next()?,
            ins_staged_rollups: next()?,
            staged_levels_read: next()?,
            staged_rollups_read: next()?,
            staged_levels_delete: next()?,
            staged_rollups_delete: next()?,
            snapshots_at_write: next()?,
            product_insert: next()?,
            store_insert: next()?,
            products_read: next()?,
            stores_read: next()?,
            scans: Vec::with_capacity(scan_tables.len()),
        };
        for table in scan_tables {
            prepared.scans.push((table, next()?));
        }
        Ok(prepared)
    }

    /// The full-table read of `table`.
    pub(crate) fn scan_of(&self, table: Table) -> &PreparedStatement {
        match self.scans.iter().find(|(t, _)| *t == table) {
            Some((_, p)) => p,
            None => unreachable!("every table has a scan"),
        }
    }

    /// The writes of the event-keyed rows of `rows` (everything but the
    /// snapshots and the watermarks): idempotent, the same keys and values
    /// whenever the same journal records are materialized.
    /// `lsn` is the materialization's, kept with each row activation
    /// reads back (`store_movements`), so that rows written past the
    /// checkpoint before a crash are left out of a late window the replay
    /// fills again; 0 for writes with no checkpoint (tools). `writer` is
    /// the node id's `writer_hash`: activation leaves out only its own
    /// node's rows past its checkpoint (another node's rows are all
    /// within that node's checkpoint before a store changes hands).
    pub(crate) fn event_writes<'a>(
        &'a self,
        rows: &RowSet,
        lsn: u64,
        writer: u64,
    ) -> Vec<Write<'a>> {
        let mut out = Vec::with_capacity(rows.len() + rows.stock_movements.len());
        add(
            &mut out,
            &self.ins_sales,
            1,
            rows.sales.iter().copied(),
            |_| None,
        );
        add(
            &mut out,
            &self.ins_lines,
            2,
            rows.sale_lines.iter().copied(),
            |_| None,
        );
        let movements = rows.stock_movements.iter().copied();
        add(&mut out, &self.ins_movements, 3, movements.clone(), |_| {
            None
        });
        add(
            &mut out,
            &self.ins_store_movements,
            4,
            movements.map(|m| ByStoreHour(m, lsn, Some(writer))),
            |_| None,
        );
        add(
            &mut out,
            &self.ins_health,
            7,
            rows.device_health.iter().copied(),
            |_| None,
        );
        add(
            &mut out,
            &self.ins_batches,
            9,
            rows.batches.iter().copied(),
            |_| None,
        );
        add(
            &mut out,
            &self.ins_rejected,
            10,
            rows.rejected.iter().cloned(),
            |_| None,
        );
        for (place, r) in rows.dead_letters.iter().enumerate() {
            let values = Placed(r, u32::try_from(place).unwrap_or(u32::MAX)).values();
            out.push(Write::new(&self.ins_dead, 11, 1, values));
        }
        out
    }

    /// The watermark writes; the highest seq wins.
    pub(crate) fn mark_writes<'a>(&'a self, rows: &RowSet) -> Vec<Write<'a>> {
        let mut out = Vec::with_capacity(rows.watermarks.len());
        add(
            &mut out,
            &self.ins_marks,
            8,
            rows.watermarks.iter().copied(),
            |r| Some(r.seq.min(i64::MAX as u64) as i64),
        );
        out
    }

    /// The snapshot rows into their tables, each stamped with a version
    /// of its own entity, so the newest wins whatever order writes land
    /// in and whichever node id (LSN sequence) wrote them: a SKU's level
    /// with its `version`, a rollup minute with its count of sales and
    /// refunds, which every change to it raises ([`rollup_version`]).
    pub(crate) fn snapshot_writes<'a>(&'a self, snap: &Snapshots) -> Vec<Write<'a>> {
        let mut out = Vec::with_capacity(snap.levels.len() + snap.rollups.len());
        add(
            &mut out,
            &self.ins_levels,
            5,
            snap.levels.iter().copied(),
            |r| Some(r.version.min(i64::MAX as u64) as i64),
        );
        add(
            &mut out,
            &self.ins_rollups,
            6,
            snap.rollups.iter().copied(),
            |r| Some(rollup_version(r)),
        );
        out
    }

    /// The snapshot rows of materialization `lsn` into the staging tables,
    /// in chunks of [`STAGED_PER_CHUNK`] (docs/internals/design.md, "ScyllaDB").
    pub(crate) fn staged_writes<'a>(
        &'a self,
        node: &str,
        lsn: u64,
        snap: &Snapshots,
    ) -> Vec<Write<'a>> {
        let mut out = Vec::with_capacity(snap.levels.len() + snap.rollups.len());
        let prefix = |i: usize| {
            vec![
                Some(CqlValue::Text(node.to_string())),
                Some(CqlValue::BigInt(lsn as i64)),
                Some(CqlValue::Int(staged_chunk(i))),
            ]
        };
        for (i, r) in snap.levels.iter().enumerate() {
            let mut values = prefix(i);
            values.extend(r.values());
            out.push(Write::new(&self.ins_staged_levels, 12, 3, values));
        }
        for (i, r) in snap.rollups.iter().enumerate() {
            let mut values = prefix(i);
            values.extend(r.values());
            out.push(Write::new(&self.ins_staged_rollups, 13, 3, values));
        }
        out
    }

    /// The writes of journal records (`(lsn, payload)`), one row each, in
    /// this start's `generation`.
    pub(crate) fn journal_writes<'a>(
        &'a self,
        node: &str,
        generation: u64,
        records: &[(u64, &[u8])],
    ) -> Vec<Write<'a>> {
        records
            .iter()
            .map(|&(lsn, payload)| {
                let values = vec![
                    Some(CqlValue::Text(node.to_string())),
                    Some(CqlValue::BigInt(journal_segment(lsn) as i64)),
                    Some(CqlValue::BigInt(lsn as i64)),
                    Some(CqlValue::BigInt(generation as i64)),
                    Some(CqlValue::Blob(payload.to_vec())),
                    Some(CqlValue::BigInt(journal_timestamp(generation, lsn))),
                ];
                Write {
                    st: &self.journal_insert,
                    key: (0, vec![journal_segment(lsn) as i64]),
                    bytes: payload.len() + 32,
                    values: unset_nulls(values),
                }
            })
            .collect()
    }

    /// Runs `writes`: one unlogged batch per partition (split past
    /// [`BATCH_ROWS`] or [`BATCH_BYTES`]), at most `max_in_flight` at once.
    /// Returns once every one is acknowledged; the first failure fails it.
    pub(crate) async fn run(
        &self,
        session: &Session,
        writes: Vec<Write<'_>>,
        max_in_flight: usize,
    ) -> Result<(), StoreError> {
        futures_util::stream::iter(group(writes))
            .map(|job| async move {
                match job {
                    Job::One(st, values) => session.execute_unpaged(st, values).await,
                    Job::Batch(batch, values) => session.batch(&batch, values).await,
                }
            })
            .buffer_unordered(max_in_flight.max(1))
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(backend_err("writing rows"))
    }
}

/// Appends the write of each of `rows` to `out`, with its write
/// timestamp bound last when `timestamp` gives one.
fn add<'a, T: CqlRow>(
    out: &mut Vec<Write<'a>>,
    st: &'a PreparedStatement,
    table: u8,
    rows: impl IntoIterator<Item = T>,
    timestamp: impl Fn(&T) -> Option<i64>,
) {
    for r in rows {
        let mut values = r.values();
        if let Some(ts) = timestamp(&r) {
            values.push(Some(CqlValue::BigInt(ts)));
        }
        out.push(Write::new(st, table, T::PARTITION_COLUMNS, values));
    }
}

/// The write timestamp of journal record `lsn` written in `generation`:
/// ordered by generation first, so a later start's record of an LSN
/// overwrites an earlier start's unacknowledged one whatever the clocks
/// say, and below any wall-clock timestamp (about 2^50 µs today), so the
/// deletion of a pruned segment covers every record in it.
pub(crate) fn journal_timestamp(generation: u64, lsn: u64) -> i64 {
    const LSN_BITS: u32 = 36;
    let gen_part = generation.min((1 << (62 - LSN_BITS)) - 1) << LSN_BITS;
    (gen_part | (lsn & ((1 << LSN_BITS) - 1))) as i64
}

/// One row write: its statement, its partition (a table tag and the
/// partition key's integers), its values. A null is bound as "unset", not
/// as null: a null writes a tombstone, which TWCS tables carry for their
/// whole life.
#[derive(Debug)]
pub(crate) struct Write<'a> {
    st: &'a PreparedStatement,
    key: (u8, Vec<i64>),
    bytes: usize,
    values: Vec<MaybeUnset<CqlValue>>,
}

fn unset_nulls(values: Values) -> Vec<MaybeUnset<CqlValue>> {
    values
        .into_iter()
        .map(|v| v.map_or(MaybeUnset::Unset, MaybeUnset::Set))
        .collect()
}

impl<'a> Write<'a> {
    fn new(st: &'a PreparedStatement, table: u8, partition: usize, values: Values) -> Write<'a> {
        let key = values[..partition.min(values.len())]
            .iter()
            .map(|v| match v {
                Some(CqlValue::BigInt(x)) => *x,
                Some(CqlValue::Int(x)) => i64::from(*x),
                _ => 0,
            })
            .collect();
        let bytes = values
            .iter()
            .map(|v| match v {
                Some(CqlValue::Blob(b)) => b.len() + 4,
                Some(CqlValue::Text(t)) => t.len() + 4,
                _ => 8,
            })
            .sum();
        Write {
            st,
            key: (table, key),
            bytes,
            values: unset_nulls(values),
        }
    }
}

/// A request to send.
enum Job<'a> {
    One(&'a PreparedStatement, Vec<MaybeUnset<CqlValue>>),
    Batch(Batch, Vec<Vec<MaybeUnset<CqlValue>>>),
}

/// Groups writes by partition into requests.
fn group(writes: Vec<Write<'_>>) -> Vec<Job<'_>> {
    chunk_by_partition(writes.into_iter().map(|w| (w.key.clone(), w.bytes, w)))
        .into_iter()
        .map(job_of)
        .collect()
}

/// Items grouped by key in first-seen order, each group cut into chunks
/// of at most [`BATCH_ROWS`] items and [`BATCH_BYTES`] (an item larger
/// than that goes alone).
fn chunk_by_partition<K: std::hash::Hash + Eq + Clone, T>(
    items: impl IntoIterator<Item = (K, usize, T)>,
) -> Vec<Vec<T>> {
    let mut order: Vec<K> = Vec::new();
    let mut by_key: HashMap<K, Vec<(usize, T)>> = HashMap::new();
    for (key, bytes, item) in items {
        let slot = by_key.entry(key.clone()).or_default();
        if slot.is_empty() {
            order.push(key);
        }
        slot.push((bytes, item));
    }
    let mut out = Vec::new();
    for key in order {
        let Some(group) = by_key.remove(&key) else {
            continue;
        };
        let mut chunk = Vec::new();
        let mut size = 0;
        for (bytes, item) in group {
            if !chunk.is_empty() && (chunk.len() == BATCH_ROWS || size + bytes > BATCH_BYTES) {
                out.push(std::mem::take(&mut chunk));
                size = 0;
            }
            size += bytes;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
    }
    out
}

fn job_of(mut ws: Vec<Write<'_>>) -> Job<'_> {
    if ws.len() == 1 {
        let w = ws.remove(0);
        return Job::One(w.st, w.values);
    }
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.set_is_idempotent(true);
    let mut values = Vec::with_capacity(ws.len());
    for w in ws {
        batch.append_statement(w.st.clone());
        values.push(w.values);
    }
    Job::Batch(batch, values)
}

#[cfg(test)]
#[path = "writes_tests.rs"]
mod tests;
