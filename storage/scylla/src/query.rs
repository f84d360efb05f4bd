//! The read side on ScyllaDB: a store's reads go to the partitions that
//! hold them; reads over all stores, and a store's reads over more hours
//! than [`MAX_PARTITION_READS`], page through the table instead. The sums
//! are the shared folds of `tillstream_storage::query`, so both backends answer alike.

use futures_util::TryStreamExt;
use scylla::value::Row;

use super::mapping::CqlRow;
use super::{ScyllaStore, backend_err, hours_of};
use tillstream_storage::query::*;
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;
use tillstream_storage::time;

/// Partition reads of one question before a paged scan of the table is
/// cheaper (a year of hours is 8,760).
const MAX_PARTITION_READS: i64 = 10_000;

impl ScyllaStore {
    /// Pages through all of `table`, handing each row to `f`.
    async fn scan_rows(
        &self,
        table: Table,
        mut f: impl FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut pager = self
            .session
            .execute_iter(self.st.scan_of(table).clone(), ())
            .await
            .map_err(backend_err("scanning a table"))?
            .rows_stream::<Row>()
            .map_err(backend_err("scanning a table"))?;
        while let Some(row) = pager
            .try_next()
            .await
            .map_err(backend_err("scanning a table"))?
        {
            f(row)?;
        }
        Ok(())
    }

    /// (node id, LSN) of each row of `cql`, a read of two columns.
    async fn node_lsns(
        &self,
        cql: &str,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        self.session
            .query_iter(cql, ())
            .await
            .map_err(backend_err("reading the node ids' LSNs"))?
            .rows_stream::<(String, Option<i64>)>()
            .map_err(backend_err("reading the node ids' LSNs"))?
            .map_ok(|(node, lsn)| (node, lsn.map_or(0, |l| u64::try_from(l).unwrap_or(0))))
            .try_collect()
            .await
            .map_err(backend_err("reading the node ids' LSNs"))
    }

    /// Every row of a table, mapped.
    async fn scan_all<T: CqlRow>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.scan_rows(table, |row| {
            out.push(T::from_row(row)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }
}

impl Query for ScyllaStore {
    fn sales_by_time(
        &self,
        store: Option<u32>,
        from_us: i64,
        to_us: i64,
        bucket: Bucket,
    ) -> Result<Vec<SalesBucket>, StoreError> {
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let mut series = SalesSeries::new(from_us, to_us, bucket);
        let (first, last) = hours_of(from_us.max(0), to_us.min(super::now_us() + 86_400_000_000));
        match store {
            Some(s) if last - first < MAX_PARTITION_READS && first <= last => {
                let s = i64::from(s);
                let parts = self.block(self.many(first..=last, |hour| {
                    self.read::<SaleRow>(&self.st.sales_read, (s, hour, from_us, to_us))
                }))?;
                parts.iter().flatten().for_each(|r| series.add(r));
            }
            _ => self.block(self.scan_rows(Table::Sales, |row| {
                let r = SaleRow::from_row(row)?;
                if store.is_none_or(|s| s == r.store) {
                    series.add(&r);
                }
                Ok(())
            }))?,
        }
        Ok(series.finish())
    }

    fn top_skus(
        &self,
        store: Option<u32>,
        from_us: i64,
        to_us: i64,
        by: TopBy,
        limit: usize,
    ) -> Result<Vec<SkuTotal>, StoreError> {
        if from_us >= to_us || limit == 0 {
            return Ok(Vec::new());
        }
        // Sale lines are partitioned by (store, SKU, day): a store's SKUs
        // are not known up front, so this pages through the table.
        let mut totals = SkuTotals::new(from_us, to_us, store.is_some());
        self.block(self.scan_rows(Table::SaleLines, |row| {
            let r = SaleLineRow::from_row(row)?;
            if store.is_none_or(|s| s == r.store) {
                totals.add(&r);
            }
            Ok(())
        }))?;
        Ok(totals.finish(by, limit))
    }

    fn sku_movements(
        &self,
        store: u32,
        sku: u64,
        from_us: i64,
        to_us: i64,
    ) -> Result<Vec<StockMovementRow>, StoreError> {
        // No event is stamped before 1970 or after tomorrow (later ones
        // are refused), so an open range reads the months in between,
        // not the ~3.5 million months up to i64::MAX.
        let (from_us, to_us) = (from_us.max(0), to_us.min(super::now_us() + 86_400_000_000));
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let (first, last) = (
            i64::from(time::month(from_us)),
            i64::from(time::month(to_us - 1)),
        );
        let (store, sku) = (i64::from(store), sku as i64);
        let parts = self.block(self.many(first..=last, |month| {
            self.read::<StockMovementRow>(
                &self.st.history_read,
                (store, sku, month, from_us, to_us),
            )
        }))?;
        Ok(parts.into_iter().flatten().collect())
    }

    fn low_stock(&self, store: Option<u32>, below: i64) -> Result<Vec<StockLevelRow>, StoreError> {
        let levels = match store {
            Some(s) => self.block(self.levels_of_store(s))?,
            None => self.block(self.scan_all::<StockLevelRow>(Table::StockLevels))?,
        };
        Ok(lowest_levels(levels, below))
    }

    fn catalog(&self) -> Result<tillstream_storage::catalog::Catalog, StoreError> {
        use tillstream_storage::catalog::{Catalog, Product, StoreInfo};
        let buckets = 0..i32::from(tillstream_storage::buckets::LEVEL_BUCKETS);
        let products: Vec<Vec<(i64, String, String, String)>> =
            self.block(self.many(buckets, |bucket| async move {
                self.session
                    .execute_iter(self.st.products_read.clone(), (bucket,))
                    .await
                    .map_err(backend_err("reading the catalogue"))?
                    .rows_stream::<(i64, String, String, String)>()
                    .map_err(backend_err("reading the catalogue"))?
                    .try_collect()
                    .await
                    .map_err(backend_err("reading the catalogue"))
            }))?;
        let stores: Vec<(i64, String, String)> = self.block(async {
            self.session
                .execute_iter(self.st.stores_read.clone(), ())
                .await
                .map_err(backend_err("reading the catalogue"))?
                .rows_stream::<(i64, String, String)>()
                .map_err(backend_err("reading the catalogue"))?
                .try_collect()
                .await
                .map_err(backend_err("reading the catalogue"))
        })?;
        Ok(Catalog {
            products: products
                .into_iter()
                .flatten()
                .map(|(sku, code, name, category)| Product {
                    sku: sku as u64,
                    code,
                    name,
                    category,
                })
                .collect(),
            stores: stores
                .into_iter()
                .map(|(store, name, country)| StoreInfo {
                    store: u32::try_from(store).unwrap_or(u32::MAX),
                    name,
                    country,
                })
                .collect(),
        })
    }

    fn watermarks(&self) -> Result<Vec<WatermarkRow>, StoreError> {
        let mut marks = self.block(self.scan_all::<WatermarkRow>(Table::DeviceWatermarks))?;
        marks.sort_unstable_by_key(|w| w.device);
        Ok(marks)
    }

    /// Each node id's checkpoint against the high-water mark of its
    /// journal (`fence.rs`): both tables hold a row per node id.
    fn trailing_journals(&self) -> Result<Vec<TrailingJournal>, StoreError> {
        let ks = &self.cfg.keyspace;
        let (highs, checkpoints) = self.block(async {
            let highs = self
                .node_lsns(&format!("SELECT node, journal_high FROM {ks}.node_leases"))
                .await?;
            let checkpoints = self
                .node_lsns(&format!("SELECT node, lsn FROM {ks}.checkpoints"))
                .await?;
            Ok::<_, StoreError>((highs, checkpoints))
        })?;
        let mut out: Vec<TrailingJournal> = highs
            .into_iter()
            .filter_map(|(writer, journal_lsn)| {
                let tables_lsn = checkpoints.get(&writer).copied().unwrap_or(0);
                (journal_lsn > tables_lsn).then_some(TrailingJournal {
                    writer,
                    tables_lsn,
                    journal_lsn,
                })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.writer.cmp(&b.writer));
        Ok(out)
    }

    /// Pages through the table in the cluster's token order (not key
    /// order: a cluster has no global one), one row at a time.
    fn scan(&self, table: Table, f: &mut dyn FnMut(RowRef<'_>)) -> Result<(), StoreError> {
        self.block(self.scan_rows(table, |row| {
            match table {
                Table::Sales => f(RowRef::Sale(&SaleRow::from_row(row)?)),
                Table::SaleLines => f(RowRef::SaleLine(&SaleLineRow::from_row(row)?)),
                Table::StockMovements => f(RowRef::Movement(&StockMovementRow::from_row(row)?)),
                Table::StockLevels => f(RowRef::Level(&StockLevelRow::from_row(row)?)),
                Table::TerminalRollups => f(RowRef::Rollup(&TerminalRollupRow::from_row(row)?)),
                Table::DeviceHealth => f(RowRef::Health(&DeviceHealthRow::from_row(row)?)),
                Table::DeviceWatermarks => f(RowRef::Watermark(&WatermarkRow::from_row(row)?)),
                Table::DeviceBatches => f(RowRef::Batch(&BatchRow::from_row(row)?)),
                Table::RejectedEvents => f(RowRef::Rejected(&RejectedEventRow::from_row(row)?)),
                Table::DeadLetters => f(RowRef::DeadLetter(&DeadLetterRow::from_row(row)?)),
            }
            Ok(())
        }))
    }
}
