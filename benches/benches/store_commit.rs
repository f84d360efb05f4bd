//! Write throughput of the embedded store's tables: a durable commit
//! (fsync included), and a materialization, what the flusher writes off
//! the ack path every interval (no fsync: the journal holds the records),
//! and the packing of a materialization's raw rows alone, its CPU without
//! the disk's noise; and the read back: a full scan of the lines and
//! movements, what `export`, `verify` and a restart's late windows decode.
//!
//! Each commit carries what the engine writes for N sales of 3 lines from
//! 16 terminals in 2 stores: the sales, their lines, their stock movements,
//! the levels of the SKUs they touched, the terminals' minute rollups, the
//! batch ledger rows and the watermarks. Throughput is in events (sales).
//! Row sets are built outside the timed routine, each with fresh keys and
//! later times, as a live run would produce.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tillstream_embedded::{EmbeddedStore, PackersForBench, pack_for_bench};
use tillstream_storage::{time, *};

const TERMINALS: u64 = 16;
const SKUS: u64 = 5_000;

/// A seeded fleet of terminals that keeps its SKUs' levels.
struct Fleet {
    rng: u64,
    seq: u64,
    ts_us: i64,
    levels: BTreeMap<(u32, u64), (i64, u64)>,
}

impl Fleet {
    fn new() -> Self {
        Fleet {
            rng: 0x9E37_79B9_7F4A_7C15,
            seq: 0,
            ts_us: time::parse_ts("2025-03-01T09:00:00Z").unwrap_or(0),
            levels: BTreeMap::new(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// One tick: `sales` sales spread over the terminals, one batch each.
    fn tick(&mut self, sales: usize) -> RowSet {
        let mut rows = RowSet::default();
        let mut rollups: BTreeMap<(u32, u32, u32, u16), TerminalRollupRow> = BTreeMap::new();
        let mut touched: BTreeMap<(u32, u64), ()> = BTreeMap::new();
        self.seq += 1;
        let per_terminal = sales.div_ceil(TERMINALS as usize);
        for i in 0..sales {
            let device = 1 + (i as u64 % TERMINALS);
            let idx = (i / TERMINALS as usize) as u32;
            let store = 1 + (device % 2) as u32;
            let terminal = device as u32;
            self.ts_us += 10_000;
            let key = EventKey {
                device,
                seq: self.seq,
                idx,
            };
            let (mut items, mut gross, mut tax) = (0, 0, 0);
            for line in 0..3u16 {
                let sku = 1 + self.next_u64() % SKUS;
                let quantity = 1 + (self.next_u64() % 3) as i32;
                let unit_price = 99 + (sku as i64 % 50) * 100;
                let amount = i64::from(quantity) * unit_price;
                let line_tax = amount / 5;
                items += i64::from(quantity);
                gross += amount;
                tax += line_tax;
                rows.sale_lines.push(SaleLineRow {
                    store,
                    sku,
                    ts_us: self.ts_us,
                    key,
                    line,
                    kind: SaleKind::Sale,
                    quantity,
                    unit_price,
                    discount: 0,
                    tax: line_tax,
                    amount,
                });
                let level = self.levels.entry((store, sku)).or_insert((100, 0));
                level.0 -= i64::from(quantity);
                level.1 += 1;
                touched.insert((store, sku), ());
                rows.stock_movements.push(StockMovementRow {
                    store,
                    sku,
                    ts_us: self.ts_us,
                    key,
                    line,
                    reason: MovementReason::Sale,
                    delta: -i64::from(quantity),
                    counted: 0,
                    level_after: level.0,
                    applied: true,
                });
            }
            rows.sales.push(SaleRow {
                store,
                ts_us: self.ts_us,
                key,
                kind: SaleKind::Sale,
                terminal,
                operator: terminal * 10,
                txn: [idx as u8; 16],
                currency: *b"EUR",
                lines: 3,
                items,
                gross,
                discount: 0,
                tax,
                tendered: gross + tax,
                tip: 0,
                tenders: 1,
                tender_methods: 1,
                customer: None,
            });
            let (day, minute) = (time::day(self.ts_us), time::minute_of_day(self.ts_us));
            let r = rollups
                .entry((store, day, terminal, minute))
                .or_insert(TerminalRollupRow {
                    store,
                    day,
                    terminal,
                    minute,
                    ..TerminalRollupRow::default()
                });
            r.sales += 1;
            r.gross += gross;
            r.tax += tax;
        }
        for device in 1..=TERMINALS.min(sales as u64) {
            rows.batches.push(BatchRow {
                device,
                seq: self.seq,
                events: per_terminal as u32,
                received_at_us: self.ts_us,
                digest: self.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            });
            rows.watermarks.push(WatermarkRow {
                device,
                seq: self.seq,
                updated_at_us: self.ts_us,
            });
        }
        rows.stock_levels = touched
            .into_keys()
            .filter_map(|(store, sku)| {
                let &(level, version) = self.levels.get(&(store, sku))?;
                Some(StockLevelRow {
                    store,
                    sku,
                    level,
                    count_ts_us: None,
                    count_key: None,
                    updated_ts_us: self.ts_us,
                    version,
                })
            })
            .collect();
        rows.terminal_rollups = rollups.into_values().collect();
        rows
    }
}

/// An empty store in a temporary directory, which lives as long as the
/// directory returned beside it.
fn fresh_store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no temp dir: {e}"),
    };
    match EmbeddedStore::open(dir.path()) {
        Ok(s) => (dir, s),
        Err(e) => panic!("cannot open the store: {e}"),
    }
}

fn store_commit(c: &mut Criterion) {
    let (_dir, store) = fresh_store();
    let mut fleet = Fleet::new();
    let mut group = c.benchmark_group("store_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for sales in [256usize, 1024] {
        group.throughput(Throughput::Elements(sales as u64));
        group.bench_function(format!("{sales}_sales_3_lines"), |b| {
            b.iter_batched(
                || fleet.tick(sales),
                |rows| match store.commit(&rows) {
                    Ok(info) => black_box(info),
                    Err(e) => panic!("commit failed: {e}"),
                },
                BatchSize::PerIteration,
            );
        });
    }
    // Packing alone, the CPU of the block log's write (the sales, lines
    // and movements as varint deltas, `packed`), without the disk's noise.
    let mut packers = PackersForBench::default();
    let sales = 4096usize;
    group.throughput(Throughput::Elements(sales as u64));
    group.bench_function(format!("pack_{sales}_sales_3_lines"), |b| {
        b.iter_batched(
            || fleet.tick(sales),
            |rows| black_box(pack_for_bench(&rows, &mut packers)),
            BatchSize::PerIteration,
        );
    });
    // What the flusher does off the ack path: one write of everything that
    // gathered over an interval (no fsync; the journal holds it), its
    // levels and rollups deduplicated across the whole write.
    let mut lsn = 0u64;
    for sales in [4096usize, 16_384] {
        group.throughput(Throughput::Elements(sales as u64));
        group.bench_function(format!("materialize_{sales}_sales_3_lines"), |b| {
            b.iter_batched(
                || fleet.tick(sales),
                |rows| {
                    lsn += 1;
                    match store.materialize(std::slice::from_ref(&rows), lsn) {
                        Ok(info) => black_box(info),
                        Err(e) => panic!("materialize failed: {e}"),
                    }
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// A full scan of `sale_lines` and `stock_movements` over a store that
/// holds 16 writes of 4,096 sales: the packed blocks' decoding, read
/// through the `Query` trait as `export` and `verify` read them.
fn store_scan(c: &mut Criterion) {
    let (_dir, store) = fresh_store();
    let mut fleet = Fleet::new();
    for lsn in 1..=16 {
        if let Err(e) = store.materialize(std::slice::from_ref(&fleet.tick(4096)), lsn) {
            panic!("materialize failed: {e}");
        }
    }
    let count = |table: Table| {
        let mut rows = 0u64;
        match store.scan(table, &mut |r| {
            black_box(r);
            rows += 1;
        }) {
            Ok(()) => rows,
            Err(e) => panic!("scan failed: {e}"),
        }
    };
    let rows = count(Table::SaleLines) + count(Table::StockMovements);
    let mut group = c.benchmark_group("store_scan");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(rows));
    group.bench_function("lines_and_movements_of_65536_sales", |b| {
        b.iter(|| count(Table::SaleLines) + count(Table::StockMovements));
    });
    group.finish();
}

criterion_group!(benches, store_commit, store_scan);
criterion_main!(benches);
