//! Appends of records not yet encoded ([`Journal::append_records`]): they
//! write what an encoded append of the same records writes, through the
//! page cache or direct, in new segments and in reused (salted) ones, and
//! a bad group is refused without changing anything.

use std::fs;

use super::tests::{
    TestResult, append_n, assert_records, assert_reopens_whole, body, head, read_all, segment_files,
};
use super::tests_direct::{disk_dir, writes_direct};
use super::*;

/// Records `first .. first + n` as the sequencer hands them over: the
/// caller's header and the body apart, not encoded.
struct Unencoded(Vec<(u64, [u8; 2], Vec<u8>)>);

impl Unencoded {
    fn new(first: u64, n: u64) -> Unencoded {
        Unencoded(
            (first..first + n)
                .map(|lsn| (lsn, head(lsn), body(lsn)))
                .collect(),
        )
    }
}

impl JournalRecords for Unencoded {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn record(&self, i: usize) -> (u64, [&[u8]; 2]) {
        let (lsn, head, body) = &self.0[i];
        (*lsn, [head, body])
    }
}

/// Appends `n` unencoded records after the last one.
fn append_unencoded(j: &mut Journal, n: u64) -> Result<u64, JournalError> {
    let first = j.last_lsn() + 1;
    let last = first + n - 1;
    j.append_records(&Unencoded::new(first, n), last)?;
    Ok(last)
}

const GROUPS: [u64; 7] = [1, 4, 2, 7, 3, 1, 5];

fn options(direct_io: bool, spare_segments: usize) -> JournalOptions {
    JournalOptions {
        segment_bytes: 300,
        spare_segments,
        direct_io,
    }
}

#[test]
fn unencoded_records_write_the_bytes_an_encoded_append_writes() -> TestResult {
    for direct_io in [false, true] {
        let (encoded, unencoded) = (disk_dir()?, disk_dir()?);
        let opts = options(direct_io, 0);
        let mut a = Journal::open(encoded.path(), opts)?;
        let mut b = Journal::open(unencoded.path(), opts)?;
        for n in GROUPS {
            append_n(&mut a, n)?;
            append_unencoded(&mut b, n)?;
            assert_eq!(writes_direct(&b), direct_io, "as asked");
        }
        let (files_a, files_b) = (
            segment_files(encoded.path())?,
            segment_files(unencoded.path())?,
        );
        assert!(files_a.len() >= 3, "small segments rotate: {files_a:?}");
        assert_eq!(files_a.len(), files_b.len(), "direct: {direct_io}");
        for (fa, fb) in files_a.iter().zip(&files_b) {
            assert_eq!(fa.file_name(), fb.file_name());
            assert_eq!(
                fs::read(fa)?,
                fs::read(fb)?,
                "{} (direct: {direct_io})",
                fb.display()
            );
        }
        drop(b);
        assert_records(
            &read_all(&Journal::open(unencoded.path(), opts)?, 0)?,
            1,
            23,
        );
    }
    Ok(())
}

#[test]
fn unencoded_records_are_salted_in_reused_segments() -> TestResult {
    for direct_io in [false, true] {
        let tmp = disk_dir()?;
        let opts = options(direct_io, 2);
        let mut j = Journal::open(tmp.path(), opts)?;
        let mut retired = 0;
        // Until the segment being written is a reused file, under a salt.
        for _ in 0..50 {
            if j.segs.current.as_ref().is_some_and(|a| a.seg.salt != 0) {
                break;
            }
            append_unencoded(&mut j, 3)?;
            retired = j.last_lsn();
            j.truncate_through(retired)?;
        }
        assert!(
            j.segs.current.as_ref().is_some_and(|a| a.seg.salt != 0),
            "no spare was reused (direct: {direct_io})"
        );
        for n in GROUPS {
            append_unencoded(&mut j, n)?;
            assert_eq!(writes_direct(&j), direct_io, "as asked");
        }
        let last = j.last_lsn();
        drop(j);
        assert_reopens_whole(tmp.path(), opts, retired, last)?;
    }
    Ok(())
}

#[test]
fn a_bad_unencoded_group_is_refused_and_changes_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open(tmp.path(), options(false, 0))?;
    append_unencoded(&mut j, 2)?;
    let refused = |r: Result<(), JournalError>| matches!(r, Err(JournalError::InvalidAppend(_)));
    // A gap before the first record, and within the group.
    assert!(refused(j.append_records(&Unencoded::new(4, 2), 5)));
    let mut gap = Unencoded::new(3, 3);
    gap.0.remove(1);
    assert!(refused(j.append_records(&gap, 5)));
    // An empty payload, and a group that does not end at `last`.
    assert!(refused(j.append_records(&EmptyPayload(3), 3)));
    assert!(refused(j.append_records(&Unencoded::new(3, 2), 5)));
    // No records: nothing to do.
    j.append_records(&Unencoded(Vec::new()), 2)?;
    assert_eq!(j.last_lsn(), 2);
    // Not poisoned: the next good group goes on after the last record.
    append_unencoded(&mut j, 3)?;
    drop(j);
    assert_records(
        &read_all(&Journal::open(tmp.path(), options(false, 0))?, 0)?,
        1,
        5,
    );
    Ok(())
}

/// A file system that refuses a direct write at the first append of
/// unencoded records (injected): that group goes through the page cache,
/// encoded again from the records, and reads back.
#[test]
fn unencoded_records_fall_back_to_the_page_cache_when_a_direct_write_is_refused() -> TestResult {
    let tmp = disk_dir()?;
    let opts = options(true, 0);
    let mut j = Journal::open(tmp.path(), opts)?;
    append_unencoded(&mut j, 2)?;
    assert!(writes_direct(&j));
    direct_io::refuse::next_writes(1);
    append_unencoded(&mut j, 3)?;
    assert!(!writes_direct(&j), "through the page cache after a refusal");
    for n in [2, 5, 1] {
        append_unencoded(&mut j, n)?;
    }
    drop(j);
    assert_reopens_whole(tmp.path(), opts, 0, 13)
}

/// Records that answer differently when they are written than when they
/// were checked: the append fails and writes nothing, and the journal
/// takes nothing more until it is opened again.
#[test]
fn records_that_change_after_their_check_are_not_written() -> TestResult {
    for direct_io in [false, true] {
        let tmp = disk_dir()?;
        let opts = options(direct_io, 0);
        let mut j = Journal::open(tmp.path(), opts)?;
        append_unencoded(&mut j, 2)?;
        let fickle = Fickle {
            asked: std::cell::Cell::new(0),
        };
        assert!(j.append_records(&fickle, 3).is_err());
        assert!(matches!(
            j.append_records(&Unencoded::new(3, 1), 3),
            Err(JournalError::Poisoned(_))
        ));
        drop(j);
        let j = Journal::open(tmp.path(), opts)?;
        assert_eq!(
            (j.last_lsn(), j.cut_at_open()),
            (2, 0),
            "direct: {direct_io}"
        );
        assert_records(&read_all(&j, 0)?, 1, 2);
    }
    Ok(())
}

/// Record 3, whose body grows each time it is asked for.
struct Fickle {
    asked: std::cell::Cell<usize>,
}

impl JournalRecords for Fickle {
    fn count(&self) -> usize {
        1
    }

    fn record(&self, _: usize) -> (u64, [&[u8]; 2]) {
        self.asked.set(self.asked.get() + 1);
        const BODY: [u8; 8] = [9; 8];
        (3, [&[1], &BODY[..self.asked.get().min(BODY.len())]])
    }
}

/// One record whose payload is empty.
struct EmptyPayload(u64);

impl JournalRecords for EmptyPayload {
    fn count(&self) -> usize {
        1
    }

    fn record(&self, _: usize) -> (u64, [&[u8]; 2]) {
        (self.0, [&[], &[]])
    }
}
