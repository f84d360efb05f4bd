//! The journal's group commit: what every acknowledgement waits for.
//!
//! Each iteration appends one group of records (one record per device
//! batch: the engine's 32-byte header and a frame of 128 sales, ~27 KB) with
//! one write and one `fdatasync`, as the journal writer does. Throughput is
//! in events. Groups are encoded outside the timed routine. Each size runs
//! with the journal's direct appends (`O_DIRECT`, its default) and through
//! the page cache, which it falls back to where direct writes are refused.
//! The `records` runs hand the journal the frames unencoded, as the
//! engine's sequencer does (`Journal::append_records`): their time
//! includes encoding them, the one copy of each frame.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tillstream_journal::{Journal, JournalOptions, JournalRecords, encode_record};

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
        let journal = match Journal::open(dir.path(), opts) {
            Ok(j) => RefCell::new(j),
            Err(e) => panic!("cannot open the journal: {e}"),
        };
        // The setup encodes the next group while the routine appends it.
        let next = Cell::new(journal.borrow().last_lsn() + 1);
        // One batch (a lone device), a typical group under load, a large one.
        for records in [1usize, 8, 64] {
            group.throughput(Throughput::Elements(records as u64 * EVENTS_PER_RECORD));
            group.bench_function(format!("{mode}/{records}_batches_fdatasync"), |b| {
                b.iter_batched(
                    || {
                        let first = next_group(&next, &journal, records);
                        let mut buf = Vec::with_capacity(records * (RECORD_BYTES + 16));
                        for i in 0..records as u64 {
                            encode_record(first + i, &[&payload], &mut buf);
                        }
                        (buf, first + records as u64 - 1)
                    },
                    |(buf, last)| match journal.borrow_mut().append(&buf, last) {
                        Ok(()) => black_box(last),
                        Err(e) => panic!("append failed: {e}"),
                    },
                    BatchSize::PerIteration,
                );
            });
        }
        for records in [8usize, 64] {
            group.throughput(Throughput::Elements(records as u64 * EVENTS_PER_RECORD));
            group.bench_function(format!("{mode}/{records}_batches_records_fdatasync"), |b| {
                b.iter_batched(
                    || {
                        let first = next_group(&next, &journal, records);
                        Frames {
                            first,
                            count: records,
                            header: [7; 32],
                            frame: &payload[32..],
                        }
                    },
                    |frames| {
                        let last = frames.first + frames.count as u64 - 1;
                        match journal.borrow_mut().append_records(&frames, last) {
                            Ok(()) => black_box(last),
                            Err(e) => panic!("append failed: {e}"),
                        }
                    },
                    BatchSize::PerIteration,
                );
            });
        }
    }
    group.finish();
}

/// The first LSN of the next group of `records`. Outside the timed
/// routine, the segments it fills are retired, as the server retires them
/// once its tables hold them: a run of every size writes tens of GB.
fn next_group(next: &Cell<u64>, journal: &RefCell<Journal>, records: usize) -> u64 {
    let first = next.get();
    next.set(first + records as u64);
    let mut journal = journal.borrow_mut();
    if journal.disk_bytes() > 1 << 30
        && let Err(e) = journal.truncate_through(first - 1)
    {
        panic!("cannot retire segments: {e}");
    }
    first
}

/// `count` records from LSN `first`, each the engine's header and one
/// frame, shared as the sequencer shares a batch's buffer.
struct Frames<'a> {
    first: u64,
    count: usize,
    header: [u8; 32],
    frame: &'a [u8],
}

impl JournalRecords for Frames<'_> {
    fn count(&self) -> usize {
        self.count
    }

    fn record(&self, i: usize) -> (u64, [&[u8]; 2]) {
        (self.first + i as u64, [&self.header, self.frame])
    }
}

criterion_group!(benches, journal_append);
criterion_main!(benches);
