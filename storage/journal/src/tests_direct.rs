//! The journal with direct appends (`O_DIRECT`), as it is deployed: the
//! padding to blocks, what open makes of it, torn and unsynced direct
//! appends, spares, and the fallback where the file system refuses it.

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::direct::BLOCK;
use super::tests::{
    TestResult, append_n, assert_records, assert_reopens_whole, copy_dir, power_cut, read_all,
    segment_files,
};
use super::write::Writes;
use super::*;

/// Small segments, no spares, direct appends.
const DIRECT: JournalOptions = JournalOptions {
    segment_bytes: 300,
    spare_segments: 0,
    direct_io: true,
};

/// A directory on the file system of the checkout, which takes
/// `O_DIRECT`; `/tmp` may be tmpfs, which does not.
pub(super) fn disk_dir() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let probe = dir.path().join("probe");
    fs::write(&probe, b"")?;
    assert!(
        direct::open(&probe)?.is_some(),
        "these tests need a file system that takes O_DIRECT under {}",
        base.display()
    );
    fs::remove_file(probe)?;
    Ok(dir)
}

pub(super) fn writes_direct(j: &Journal) -> bool {
    j.segs
        .current
        .as_ref()
        .is_some_and(|a| matches!(a.writes, Writes::Direct(_)))
}

fn file_lens(dir: &Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    Ok(segment_files(dir)?
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()))
        .collect::<Result<_, _>>()?)
}

#[test]
fn direct_appends_round_trip_in_files_padded_to_blocks() -> TestResult {
    let tmp = disk_dir()?;
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    for n in [1, 4, 2, 7, 3, 1, 5] {
        append_n(&mut j, n)?;
        assert!(writes_direct(&j));
    }
    let lens = file_lens(tmp.path())?;
    assert!(lens.len() >= 3, "small segments rotate: {lens:?}");
    assert!(lens.iter().all(|l| l % BLOCK as u64 == 0), "{lens:?}");
    assert!(
        j.disk_bytes() < lens.iter().sum::<u64>(),
        "padding is not data"
    );
    assert_records(&read_all(&j, 0)?, 1, 23);
    drop(j);

    // Reopened, the padding is no torn tail, and appends go on after the
    // last record, the partial block read back from the file.
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    assert_eq!((j.last_lsn(), j.cut_at_open()), (23, 0));
    append_n(&mut j, 2)?;
    drop(j);
    // Through the page cache over a padded file, then direct again.
    let mut j = Journal::open(
        tmp.path(),
        JournalOptions {
            direct_io: false,
            ..DIRECT
        },
    )?;
    assert_eq!((j.last_lsn(), j.cut_at_open()), (25, 0));
    append_n(&mut j, 1)?;
    drop(j);
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    append_n(&mut j, 3)?;
    drop(j);
    assert_records(&read_all(&Journal::open(tmp.path(), DIRECT)?, 0)?, 1, 29);
    Ok(())
}

/// Zeros after the records of an earlier segment are a direct append's
/// padding only while fewer than a block and all zero; anything else is
/// where acknowledged records would be, and open fails.
#[test]
fn an_earlier_segment_may_end_in_padding_and_nothing_else() -> TestResult {
    let tmp = disk_dir()?;
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    for _ in 0..6 {
        append_n(&mut j, 3)?;
    }
    let closed = j.segs.closed.front().ok_or("no closed segment")?;
    let (path, valid) = (closed.path.clone(), closed.bytes);
    drop(j);
    let good = fs::read(&path)?;
    assert!(good.len() as u64 > valid, "the first segment is padded");

    let one_byte = {
        let mut b = good.clone();
        *b.last_mut().ok_or("empty")? = 1;
        b
    };
    let a_block_more = [good.as_slice(), &[0; BLOCK]].concat();
    for (bytes, ok) in [(&good, true), (&one_byte, false), (&a_block_more, false)] {
        fs::write(&path, bytes)?;
        let opened = Journal::open(tmp.path(), DIRECT);
        match opened {
            Ok(j) if ok => assert_records(&read_all(&j, 0)?, 1, 18),
            Err(JournalError::Corrupt { offset, .. }) if !ok => assert_eq!(offset, valid),
            other => panic!("padding ok: {ok}, got {other:?}"),
        }
    }
    Ok(())
}

/// A direct append that wrote but never synced, cut short at every
/// offset or with its blocks never written (zeros): what was
/// acknowledged before it survives, whole.
#[test]
fn a_torn_direct_append_keeps_what_was_acknowledged() -> TestResult {
    let tmp = disk_dir()?;
    let src = tmp.path().join("src");
    let opts = JournalOptions {
        segment_bytes: 1 << 20,
        ..DIRECT
    };
    let mut j = Journal::open_with_fault(&src, opts, Box::new(FailSyncAfter::new(3)))?;
    for _ in 0..3 {
        append_n(&mut j, 5)?;
    }
    let acked = j.last_lsn();
    let valid = j.disk_bytes();
    assert!(append_n(&mut j, 9).is_err(), "the fourth sync fails");
    drop(j);
    let file = segment_files(&src)?.pop().ok_or("no segment")?;
    let written = fs::read(&file)?;
    // Every offset in the first record after the acknowledged ones, then
    // a sample up to the end of the padded block.
    let len = written.len() as u64;
    let cuts = (valid..valid + 40).chain((valid + 40..len).step_by(53));
    for cut in cuts.filter(|&c| c < len) {
        for zeroed in [false, true] {
            let dir = tmp.path().join(format!("c{cut}{zeroed}"));
            copy_dir(&src, &dir)?;
            let mut bytes = written.clone();
            if zeroed {
                bytes[cut as usize..].fill(0);
            } else {
                bytes.truncate(cut as usize);
            }
            fs::write(dir.join(file.file_name().ok_or("no name")?), &bytes)?;
            let mut j = Journal::open(&dir, opts)?;
            let end = j.last_lsn();
            assert!(end >= acked, "cut {cut}, zeroed {zeroed}: last {end}");
            assert_records(&read_all(&j, 0)?, 1, end);
            append_n(&mut j, 1)?;
            drop(j);
            assert_records(&read_all(&Journal::open(&dir, opts)?, 0)?, 1, end + 1);
            fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

#[test]
fn spares_are_written_over_by_direct_appends() -> TestResult {
    let tmp = disk_dir()?;
    let opts = JournalOptions {
        spare_segments: 2,
        ..DIRECT
    };
    let mut reused = false;
    for _ in 0..8 {
        let mut j = Journal::open(tmp.path(), opts)?;
        for _ in 0..6 {
            append_n(&mut j, 3)?;
            reused |= j.segs.current.as_ref().is_some_and(|a| a.seg.salt != 0) && writes_direct(&j);
        }
        j.truncate_through(j.last_lsn() - 4)?;
        let from = j.segs.iter().next().ok_or("no segment")?.first;
        let last = j.last_lsn();
        drop(j);
        let j = Journal::open(tmp.path(), opts)?;
        assert_eq!(j.last_lsn(), last);
        assert_records(&read_all(&j, 0)?, from, last);
    }
    assert!(reused, "a spare was written over directly");
    Ok(())
}

/// A file system that took `O_DIRECT` at open but refuses the write
/// (injected: none here does): that append goes through the page cache,
/// over the padding a direct one left, and so does every later one, in
/// this segment and the next.
#[test]
fn a_refused_direct_write_falls_back_to_the_page_cache() -> TestResult {
    let tmp = disk_dir()?;
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    append_n(&mut j, 2)?;
    assert!(writes_direct(&j));
    direct_io::refuse::next_writes(1);
    append_n(&mut j, 1)?;
    assert!(matches!(
        j.segs.current.as_ref().map(|a| &a.writes),
        Some(Writes::Buffered)
    ));
    for n in [2, 5, 1, 6] {
        append_n(&mut j, n)?;
        assert!(!writes_direct(&j), "no direct write after a refusal");
    }
    let lens = file_lens(tmp.path())?;
    assert!(lens.len() >= 2, "segments rotated: {lens:?}");
    let last = lens.last().copied().unwrap_or(0);
    assert_ne!(
        last % BLOCK as u64,
        0,
        "the new segment is not padded: {lens:?}"
    );
    assert_records(&read_all(&j, 0)?, 1, 17);
    drop(j);
    assert_reopens_whole(tmp.path(), DIRECT, 0, 17)
}

/// Where the file system refuses `O_DIRECT` at open (injected: none here
/// does), the journal writes through the page cache, unpadded.
#[test]
fn where_o_direct_is_refused_appends_go_through_the_page_cache() -> TestResult {
    let tmp = disk_dir()?;
    let mut j = Journal::open(tmp.path(), DIRECT)?;
    direct_io::refuse::next_opens(u32::MAX);
    for n in [2, 5, 1] {
        append_n(&mut j, n)?;
    }
    direct_io::refuse::next_opens(0);
    assert!(matches!(
        j.segs.current.as_ref().map(|a| &a.writes),
        Some(Writes::Buffered)
    ));
    let lens: u64 = file_lens(tmp.path())?.iter().sum();
    assert_eq!(lens, j.disk_bytes(), "no padding");
    drop(j);
    assert_records(&read_all(&Journal::open(tmp.path(), DIRECT)?, 0)?, 1, 8);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_direct_appends_survive_a_power_cut(
        groups in prop::collection::vec(1u64..6, 1..10),
        segment_bytes in 1u64..600,
        keep in any::<u64>(),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let tmp = disk_dir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        power_cut(&tmp, &groups, segment_bytes, keep, &garbage, true)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
