//! The read side of the embedded store: block scans filtered by time, and
//! the [`Query`] implementation on top of them.

use std::ops::RangeBounds;

use fjall::{Iter, Keyspace, Readable, Snapshot};
use rkyv::util::AlignedVec;

use super::blocklog::{BlockFormat, Ptr};
use super::blocks::BlockRow;
use super::{EmbeddedStore, backend_err, keys, packed};
use crate::archive::StoredRow;
use tillstream_storage::query::*;
use tillstream_storage::rows::*;
use tillstream_storage::store::{StoreError, WindowMovement};
use tillstream_storage::time;

/// Rows of a [from, to) time range: the hours to read and the exact filter.
#[derive(Debug, Clone, Copy)]
struct Window {
    from_us: i64,
    to_us: i64,
}

impl Window {
    const ALL: Window = Window {
        from_us: i64::MIN,
        to_us: i64::MAX,
    };

    fn hours(self) -> (u32, u32) {
        (
            time::hour(self.from_us),
            time::hour(self.to_us.saturating_sub(1)),
        )
    }

    fn contains(self, ts_us: i64) -> bool {
        (self.from_us..self.to_us).contains(&ts_us)
    }
}

/// Where reads come from: the tables as they are, or as of a snapshot.
enum Reader<'a> {
    Live,
    At(&'a Snapshot),
}

impl Reader<'_> {
    fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, ks: &Keyspace, range: R) -> Iter {
        match self {
            Reader::Live => ks.range(range),
            Reader::At(s) => s.range(ks, range),
        }
    }

    fn prefix<K: AsRef<[u8]>>(&self, ks: &Keyspace, prefix: K) -> Iter {
        match self {
            Reader::Live => ks.prefix(prefix),
            Reader::At(s) => s.prefix(ks, prefix),
        }
    }
}

impl EmbeddedStore {
    /// Hands every row of the blocks of `T`'s table (of partition `part`,
    /// or of all) whose hour meets `window` to `f`, block by block in key
    /// order: rows of an hour that meets the window, not only rows inside
    /// it. Rows are decoded into `f`, never gathered (a store's late
    /// window is millions of them), so on an error `f` may have had the
    /// rows before it.
    fn each_block<T: BlockRow>(
        &self,
        part: Option<u64>,
        window: Window,
        f: &mut impl FnMut(T),
    ) -> Result<(), StoreError> {
        self.each_block_in(&Reader::Live, part, window, f)
    }

    fn each_block_in<T: BlockRow>(
        &self,
        rd: &Reader<'_>,
        part: Option<u64>,
        window: Window,
        f: &mut impl FnMut(T),
    ) -> Result<(), StoreError> {
        let (from_h, to_h) = window.hours();
        let iter: Iter = match part {
            Some(p) => rd.range(&self.blocks, keys::block_range(T::TABLE, p, from_h, to_h)),
            None if keys::part_width(T::TABLE) == 0 => {
                rd.range(&self.blocks, keys::block_range(T::TABLE, 0, from_h, to_h))
            }
            None => rd.prefix(&self.blocks, keys::block_prefix(T::TABLE, None)),
        };
        let (mut buf, mut logged) = (AlignedVec::new(), AlignedVec::new());
        for guard in iter {
            let (key, value) = guard
                .into_inner_if(|k| {
                    keys::block_hour(T::TABLE, k).is_some_and(|h| (from_h..=to_h).contains(&h))
                })
                .map_err(|e| backend_err("reading a block", e))?;
            let Some(value) = value else {
                if keys::block_hour(T::TABLE, &key).is_none() {
                    return Err(StoreError::Corrupt {
                        what: T::WHAT,
                        reason: format!("malformed block key of {} bytes", key.len()),
                    });
                }
                continue;
            };
            match Ptr::decode(&value) {
                Some(ptr) => {
                    self.block_log.read(ptr, &mut logged)?;
                    match ptr.format {
                        BlockFormat::Packed => packed::decode_each::<T>(&logged, &mut *f)?,
                        BlockFormat::Rkyv => {
                            crate::archive::decode_block::<T>(&logged, &mut buf)?
                                .into_iter()
                                .for_each(&mut *f);
                        }
                    }
                }
                None => crate::archive::decode_block::<T>(&value, &mut buf)?
                    .into_iter()
                    .for_each(&mut *f),
            }
        }
        Ok(())
    }

    /// A `blocks` value (under `key`) as the rkyv block it stands for:
    /// read from the block log when it is a pointer (a packed block is
    /// re-encoded), as it is otherwise (a store written before the log, or
    /// a backup). For copies that must stand alone: an inline value is
    /// always rkyv, so it needs no tag of its format.
    pub(super) fn block_bytes(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(ptr) = Ptr::decode(value) else {
            return Ok(value.to_vec());
        };
        let mut out = AlignedVec::new();
        self.block_log.read(ptr, &mut out)?;
        if ptr.format == BlockFormat::Rkyv {
            return Ok(out.to_vec());
        }
        fn repack<T: BlockRow>(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
            Ok(crate::archive::encode_block(&packed::decode::<T>(bytes)?)?.to_vec())
        }
        match key
            .first()
            .and_then(|&t| Table::ALL.into_iter().find(|x| *x as u8 == t))
        {
            Some(Table::Sales) => repack::<SaleRow>(&out),
            Some(Table::SaleLines) => repack::<SaleLineRow>(&out),
            Some(Table::StockMovements) => repack::<StockMovementRow>(&out),
            Some(Table::DeviceHealth) => repack::<DeviceHealthRow>(&out),
            Some(Table::RejectedEvents) => repack::<RejectedEventRow>(&out),
            Some(Table::DeadLetters) => repack::<DeadLetterRow>(&out),
            _ => Err(StoreError::Corrupt {
                what: "blocks",
                reason: format!("a block key of no block table ({} bytes)", key.len()),
            }),
        }
    }

    /// Hands every point value of `ks` under `prefix` to `f`, decoded.
    fn each_point<T: StoredRow>(
        ks: &Keyspace,
        prefix: &[u8],
        f: &mut dyn FnMut(T),
    ) -> Result<(), StoreError> {
        Self::each_point_in(&Reader::Live, ks, prefix, f)
    }

    fn each_point_in<T: StoredRow>(
        rd: &Reader<'_>,
        ks: &Keyspace,
        prefix: &[u8],
        f: &mut dyn FnMut(T),
    ) -> Result<(), StoreError> {
        let mut buf = AlignedVec::new();
        for guard in rd.prefix(ks, prefix) {
            let value = guard
                .value()
                .map_err(|e| backend_err("reading a record", e))?;
            f(crate::archive::decode_one::<T>(&value, &mut buf)?);
        }
        Ok(())
    }

    fn points<T: StoredRow>(ks: &Keyspace, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        Self::each_point(ks, prefix, &mut |r| out.push(r))?;
        Ok(out)
    }

    /// Current levels of one store, or of all, in (store, sku) order.
    pub(super) fn levels_of(&self, store: Option<u32>) -> Result<Vec<StockLevelRow>, StoreError> {
        let mut out = Vec::new();
        self.each_level(store, &mut |r| out.push(r))?;
        out.sort_unstable_by_key(|r| (r.store, r.sku));
        Ok(out)
    }

    /// Hands every current level of one store, or of all, to `f`, store
    /// by store (see `levels`).
    fn each_level(
        &self,
        store: Option<u32>,
        f: &mut dyn FnMut(StockLevelRow),
    ) -> Result<(), StoreError> {
        self.each_level_in(&Reader::Live, store, f)
    }

    fn each_level_in(
        &self,
        rd: &Reader<'_>,
        store: Option<u32>,
        f: &mut dyn FnMut(StockLevelRow),
    ) -> Result<(), StoreError> {
        let prefix = store.map(u32::to_be_bytes);
        let prefix = prefix.as_ref().map_or(&[][..], |p| &p[..]);
        super::levels::each_level(rd.prefix(&self.levels, prefix), f)
    }

    /// Rollups of one store and day, in (terminal, minute) order.
    pub(super) fn rollups_of(
        &self,
        store: u32,
        day: u32,
    ) -> Result<Vec<TerminalRollupRow>, StoreError> {
        Self::points(&self.rollups, &keys::rollup_day_prefix(store, day))
    }

    /// A store's movements stamped at or after `since_us`, in stored order
    /// (by hour, then write): activation needs no finer order, and sorting
    /// a store's whole late window cost 40% of a restart.
    pub(super) fn movements_in(
        &self,
        store: u32,
        windows: &[(i64, i64)],
    ) -> Result<Vec<WindowMovement>, StoreError> {
        // Straight into one vector, and only what a late window keeps of
        // each row: a store's late window can be millions of rows (every
        // movement of the last hour), and collecting each window's whole
        // rows first and then appending them copied them all twice more.
        let mut out = Vec::new();
        for &(from_us, to_us) in windows {
            if from_us < to_us {
                let window = Window { from_us, to_us };
                self.each_block(
                    Some(u64::from(store)),
                    window,
                    &mut |r: StockMovementRow| {
                        if window.contains(r.ts_us) {
                            out.extend(WindowMovement::of(&r));
                        }
                    },
                )?;
            }
        }
        Ok(out)
    }
}

impl Query for EmbeddedStore {
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
        let window = Window { from_us, to_us };
        self.each_block(store.map(u64::from), window, &mut |r: SaleRow| {
            series.add(&r);
        })?;
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
        let window = Window { from_us, to_us };
        let mut totals = SkuTotals::new(from_us, to_us, store.is_some());
        self.each_block(store.map(u64::from), window, &mut |r: SaleLineRow| {
            totals.add(&r);
        })?;
        Ok(totals.finish(by, limit))
    }

    fn sku_movements(
        &self,
        store: u32,
        sku: u64,
        from_us: i64,
        to_us: i64,
    ) -> Result<Vec<StockMovementRow>, StoreError> {
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let window = Window { from_us, to_us };
        let mut out = Vec::new();
        self.each_block(
            Some(u64::from(store)),
            window,
            &mut |r: StockMovementRow| {
                if r.sku == sku && window.contains(r.ts_us) {
                    out.push(r);
                }
            },
        )?;
        Ok(out)
    }

    fn low_stock(&self, store: Option<u32>, below: i64) -> Result<Vec<StockLevelRow>, StoreError> {
        Ok(lowest_levels(self.levels_of(store)?, below))
    }

    fn catalog(&self) -> Result<tillstream_storage::catalog::Catalog, StoreError> {
        use tillstream_storage::catalog::{Catalog, Product, StoreInfo, decode_fields};
        let corrupt = |what| StoreError::Corrupt {
            what,
            reason: "not a catalogue entry".into(),
        };
        let mut out = Catalog::default();
        for guard in self.meta.prefix(keys::CATALOG_PRODUCTS) {
            let (k, v) = guard
                .into_inner()
                .map_err(|e| backend_err("reading the catalogue", e))?;
            let sku = k
                .get(keys::CATALOG_PRODUCTS.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("catalogue key"))?;
            let mut f = decode_fields(&v, 3).ok_or_else(|| corrupt("catalogue product"))?;
            let (category, name, code) = (f.remove(2), f.remove(1), f.remove(0));
            out.products.push(Product {
                sku,
                code,
                name,
                category,
            });
        }
        for guard in self.meta.prefix(keys::CATALOG_STORES) {
            let (k, v) = guard
                .into_inner()
                .map_err(|e| backend_err("reading the catalogue", e))?;
            let store = k
                .get(keys::CATALOG_STORES.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt("catalogue key"))?;
            let mut f = decode_fields(&v, 2).ok_or_else(|| corrupt("catalogue store"))?;
            let (country, name) = (f.remove(1), f.remove(0));
            out.stores.push(StoreInfo {
                store,
                name,
                country,
            });
        }
        Ok(out)
    }

    fn watermarks(&self) -> Result<Vec<WatermarkRow>, StoreError> {
        Self::points(&self.marks, &[])
    }

    fn scan(&self, table: Table, f: &mut dyn FnMut(RowRef<'_>)) -> Result<(), StoreError> {
        self.scan_in(&Reader::Live, table, f)
    }

    /// Every table read from one fjall snapshot: the rows of a write that
    /// lands during the scan are in every table or in none.
    fn scan_consistent(
        &self,
        tables: &[Table],
        f: &mut dyn FnMut(RowRef<'_>),
    ) -> Result<(), StoreError> {
        let snapshot = self.db.snapshot();
        for &t in tables {
            self.scan_in(&Reader::At(&snapshot), t, f)?;
        }
        Ok(())
    }
}

impl EmbeddedStore {
    fn scan_in(
        &self,
        rd: &Reader<'_>,
        table: Table,
        f: &mut dyn FnMut(RowRef<'_>),
    ) -> Result<(), StoreError> {
        let all = Window::ALL;
        match table {
            Table::Sales => {
                self.each_block_in(rd, None, all, &mut |r: SaleRow| f(RowRef::Sale(&r)))
            }
            Table::SaleLines => {
                self.each_block_in(rd, None, all, &mut |r: SaleLineRow| f(RowRef::SaleLine(&r)))
            }
            Table::StockMovements => {
                self.each_block_in(rd, None, all, &mut |r: StockMovementRow| {
                    f(RowRef::Movement(&r))
                })
            }
            Table::DeviceHealth => self.each_block_in(rd, None, all, &mut |r: DeviceHealthRow| {
                f(RowRef::Health(&r))
            }),
            Table::RejectedEvents => {
                self.each_block_in(rd, None, all, &mut |r: RejectedEventRow| {
                    f(RowRef::Rejected(&r))
                })
            }
            Table::DeadLetters => self.each_block_in(rd, None, all, &mut |r: DeadLetterRow| {
                f(RowRef::DeadLetter(&r))
            }),
            Table::StockLevels => self.each_level_in(rd, None, &mut |r| f(RowRef::Level(&r))),
            Table::TerminalRollups => {
                Self::each_point_in::<TerminalRollupRow>(rd, &self.rollups, &[], &mut |r| {
                    f(RowRef::Rollup(&r));
                })
            }
            Table::DeviceWatermarks => {
                Self::each_point_in::<WatermarkRow>(rd, &self.marks, &[], &mut |r| {
                    f(RowRef::Watermark(&r))
                })
            }
            Table::DeviceBatches => {
                Self::each_point_in::<BatchRow>(rd, &self.batches, &[], &mut |r| {
                    f(RowRef::Batch(&r))
                })
            }
        }
    }
}
