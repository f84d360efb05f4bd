//! The journal's group commit: what every acknowledgement waits for.
//!
//! Each iteration appends one group of records (one record per device
//! batch: the engine's 32-byte header and a frame of 128 sales, ~27 KB) with
//! one write and one `fdatasync`, as the journal writer does. Throughput is
//! in events. Groups are encoded outside the timed routine. Each size runs
//! with the journal's direct appends (`O_DIRECT`, its default) and through
//! the page cache, which it falls back to where direct writes are refused.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tillstream_storage::journal::{Journal, JournalOptions, encode_record};

/// Bytes of one journaled batch: header and a 128-sale frame.
const RECORD_BYTES: usize = 32 + 27_000;
const EVENTS_PER_RECORD: u64 = 128;

fn journal_append(c: &mut Criterion) {
    let payload: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let mut group = c.benchmark_group("journal_append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (mode, direct_io) in [("direct", true), ("buffered", false)] {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("no temp dir: {e}"),
        };
        let opts = JournalOptions {
            direct_io,
            ..JournalOptions::default()
        };
        let mut journal = match Journal::open(dir.path(), opts) {
            Ok(j) => j,
            Err(e) => panic!("cannot open the journal: {e}"),
        };
        // The setup encodes the next group while the routine appends it.
        let next = std::cell::Cell::new(journal.last_lsn() + 1);
        // One batch (a lone device), a typical group under load, a large one.
        for records in [1usize, 8, 64] {
            group.throughput(Throughput::Elements(records as u64 * EVENTS_PER_RECORD));
            group.bench_function(format!("{mode}/{records}_batches_fdatasync"), |b| {
                b.iter_batched(
                    || {
                        let first = next.get();
                        next.set(first + records as u64);
                        let mut buf = Vec::with_capacity(records * (RECORD_BYTES + 16));
                        for i in 0..records as u64 {
                            encode_record(first + i, &[&payload], &mut buf);
                        }
                        (buf, first + records as u64 - 1)
                    },
                    |(buf, last)| match journal.append(&buf, last) {
                        Ok(()) => black_box(last),
                        Err(e) => panic!("append failed: {e}"),
                    },
                    BatchSize::PerIteration,
                );
            });
        }
    }
    group.finish();
}

criterion_group!(benches, journal_append);
criterion_main!(benches);
