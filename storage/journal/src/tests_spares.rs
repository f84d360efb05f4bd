//! Tests of spare segments: expired files renamed and written over by later
//! segments under a new salt. What a reused file held must never read as a
//! record: not at a clean end, not after a torn append, not when it was
//! made to look like the next record.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::format::salt_crcs;
use super::segments::parse_segment_name;
use super::tests::{TestResult, append_n, assert_records, group, read_all, segment_files};
use super::*;

/// Small segments and two spares.
const REUSE: JournalOptions = JournalOptions {
    segment_bytes: 300,
    spare_segments: 2,
    // Through the page cache, as `tests::SMALL` (`tests_direct` reuses
    // spares with direct appends).
    direct_io: false,
};

fn spare_files(dir: &Path) -> Result<Vec<PathBuf>, io::Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "spare"));
    files.sort();
    Ok(files)
}

/// The first LSN and salt in a segment's file name.
fn name_of(path: &Path) -> Result<(u64, u32), Box<dyn std::error::Error>> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    Ok(parse_segment_name(name).ok_or("not a segment name")?)
}

/// A journal whose segments have been reused: `rounds` times, 8 groups of
/// 3 records, then everything but the current segment retired. Returns
/// the journal, still open.
fn churned(dir: &Path, rounds: usize) -> Result<Journal, JournalError> {
    let mut j = Journal::open(dir, REUSE)?;
    for _ in 0..rounds {
        append_groups(&mut j, 8)?;
        j.truncate_through(j.last_lsn())?;
    }
    Ok(j)
}

/// A journal in `dir` with spares on, after `groups` groups of 3 records.
fn filled(dir: &Path, groups: usize) -> Result<Journal, JournalError> {
    let mut j = Journal::open(dir, REUSE)?;
    append_groups(&mut j, groups)?;
    Ok(j)
}

fn append_groups(j: &mut Journal, groups: usize) -> Result<(), JournalError> {
    for _ in 0..groups {
        append_n(j, 3)?;
    }
    Ok(())
}

/// Appends and retires until the segment being written is a reused file.
fn until_current_is_reused(j: &mut Journal) -> Result<(), JournalError> {
    for _ in 0..50 {
        if j.segs.current.as_ref().is_some_and(|a| a.seg.salt != 0) {
            return Ok(());
        }
        append_n(j, 3)?;
        j.truncate_through(j.last_lsn())?;
    }
    panic!("no spare was reused in 50 appends");
}

#[test]
fn expired_segments_are_kept_as_spares_and_written_over() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = filled(tmp.path(), 8)?;
    let before = segment_files(tmp.path())?.len();
    assert!(before >= 4, "{before} segments");
    let retired = j.truncate_through(j.last_lsn())?;
    assert_eq!(retired, before - 1);
    assert_eq!(j.spare_files(), 2, "two kept, the rest deleted");
    assert_eq!(spare_files(tmp.path())?.len(), 2);
    assert_eq!(segment_files(tmp.path())?.len(), 1);

    // The next two segments are the spares, renamed under a salt.
    let first_new = j.last_lsn() + 1;
    append_groups(&mut j, 8)?;
    assert_eq!(j.spare_files(), 0);
    assert!(spare_files(tmp.path())?.is_empty());
    let salted: Vec<PathBuf> = segment_files(tmp.path())?
        .into_iter()
        .filter(|p| name_of(p).is_ok_and(|(_, salt)| salt != 0))
        .collect();
    assert_eq!(salted.len(), 2, "{salted:?}");
    let last = j.last_lsn();
    let kept_from = name_of(&segment_files(tmp.path())?[0])?.0;
    assert!(kept_from < first_new);
    assert_records(&read_all(&j, 0)?, kept_from, last);
    drop(j);

    // Reopened: the closed reused segments end where the next begins, the
    // last one is cut at its end, the spares stay spares.
    let mut j = Journal::open(tmp.path(), REUSE)?;
    assert_eq!(j.last_lsn(), last);
    assert_records(&read_all(&j, 0)?, kept_from, last);
    append_n(&mut j, 2)?;
    assert_records(&read_all(&j, last)?, last + 1, last + 2);
    Ok(())
}

#[test]
fn spares_survive_a_restart_up_to_the_cap() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = filled(tmp.path(), 8)?;
    j.truncate_through(j.last_lsn())?;
    let last = j.last_lsn();
    drop(j);

    let j = Journal::open(tmp.path(), REUSE)?;
    assert_eq!(j.spare_files(), 2);
    drop(j);
    let one = JournalOptions {
        spare_segments: 1,
        ..REUSE
    };
    let mut j = Journal::open(tmp.path(), one)?;
    assert_eq!(j.spare_files(), 1);
    assert_eq!(
        spare_files(tmp.path())?.len(),
        1,
        "the extra one is deleted"
    );
    append_groups(&mut j, 4)?;
    assert_eq!(j.spare_files(), 0);
    assert_eq!(j.last_lsn(), last + 12);
    Ok(())
}

/// The reused segments of a churned journal hold old records past their
/// end; every reopen must read exactly what was appended.
#[test]
fn many_reuses_read_back_exactly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let j = churned(tmp.path(), 6)?;
    let last = j.last_lsn();
    let from = read_all(&j, 0)?.first().map(|r| r.0).ok_or("empty")?;
    drop(j);
    for _ in 0..3 {
        let mut j = Journal::open(tmp.path(), REUSE)?;
        assert_records(&read_all(&j, 0)?, from, j.last_lsn());
        append_n(&mut j, 1)?;
    }
    let j = Journal::open(tmp.path(), REUSE)?;
    assert_eq!(j.last_lsn(), last + 3);
    assert_records(&read_all(&j, 0)?, from, last + 3);
    Ok(())
}

/// After the valid end of a reused segment lie bytes that form the next
/// record exactly, CRC and all, as an old record or a payload could. Under
/// the segment's salt they are not a record; written with it, they would
/// be (the control that shows the check is the salt).
#[test]
fn a_record_left_in_a_reused_file_is_not_read_as_the_next_one() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = churned(tmp.path(), 3)?;
    until_current_is_reused(&mut j)?;
    let last = j.last_lsn();
    drop(j);
    // Open cuts what the file held past the valid end.
    drop(Journal::open(tmp.path(), REUSE)?);
    let file = segment_files(tmp.path())?.pop().ok_or("no segment")?;
    let (_, salt) = name_of(&file)?;
    assert_ne!(salt, 0, "the current segment is a reused file");
    let valid = fs::read(&file)?;

    let forged = group(last + 1, 1);
    let mut salted = Vec::new();
    salt_crcs(&forged, salt, &mut salted);
    for (tail, read_as_record) in [(&forged, false), (&salted, true)] {
        let mut bytes = valid.clone();
        bytes.extend_from_slice(tail);
        fs::write(&file, &bytes)?;
        let j = Journal::open(tmp.path(), REUSE)?;
        let expected = if read_as_record { last + 1 } else { last };
        assert_eq!(j.last_lsn(), expected, "salted: {read_as_record}");
        let cut = if read_as_record {
            0
        } else {
            forged.len() as u64
        };
        assert_eq!(j.cut_at_open(), cut);
        drop(j);
        fs::write(&file, &valid)?;
    }
    Ok(())
}

/// The record just before a closed reused segment's stale tail is where
/// the tolerance for that tail must stop: a flip in it is corruption, not
/// the end of the segment.
#[test]
fn a_bit_flip_in_a_closed_reused_segment_is_corrupt() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = churned(tmp.path(), 2)?;
    // A closed reused segment whose file goes on past its records.
    let mut found = None;
    for _ in 0..200 {
        found = j.segs.closed.iter().find_map(|seg| {
            let len = fs::metadata(&seg.path).ok()?.len();
            (seg.salt != 0 && len > seg.bytes).then(|| (seg.path.clone(), seg.bytes))
        });
        if found.is_some() {
            break;
        }
        let n = 1 + j.last_lsn() % 4;
        append_n(&mut j, n)?;
        if j.segs.closed.len() > 3 {
            j.truncate_through(j.last_lsn())?;
        }
    }
    let (closed, valid) = found.ok_or("no closed reused segment with a stale tail")?;
    drop(j);
    let good = fs::read(&closed)?;
    let mut last_start = 0;
    let mut at = 0;
    while at < valid as usize {
        last_start = at;
        at += RECORD_HEADER + u32::from_le_bytes(good[at..at + 4].try_into()?) as usize;
    }
    assert_eq!(at, valid as usize);
    // The first record's LSN, the last record's LSN and its last byte.
    for flip in [8, last_start + 8, at - 1] {
        let mut bad = good.clone();
        bad[flip] ^= 0x04;
        fs::write(&closed, &bad)?;
        let opened = Journal::open(tmp.path(), REUSE);
        assert!(
            matches!(&opened, Err(JournalError::Corrupt { path, .. }) if *path == closed),
            "flip at {flip}: {opened:?}"
        );
        fs::write(&closed, &good)?;
    }
    assert!(Journal::open(tmp.path(), REUSE).is_ok());
    Ok(())
}

/// Only a reused file may hold bytes past its records: garbage after the
/// end of a closed new file is still corruption.
#[test]
fn garbage_after_a_closed_new_file_is_corrupt() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let j = filled(tmp.path(), 6)?;
    drop(j);
    let first = segment_files(tmp.path())?[0].clone();
    assert_eq!(name_of(&first)?.1, 0);
    let mut bytes = fs::read(&first)?;
    bytes.extend_from_slice(&group(1, 1));
    fs::write(&first, &bytes)?;
    let opened = Journal::open(tmp.path(), REUSE);
    assert!(
        matches!(&opened, Err(JournalError::Corrupt { path, .. }) if *path == first),
        "{opened:?}"
    );
    Ok(())
}

/// A spare deleted by hand: the next segment is a new file, and the
/// journal goes on.
#[test]
fn a_missing_spare_falls_back_to_a_new_file() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = filled(tmp.path(), 8)?;
    j.truncate_through(j.last_lsn())?;
    assert_eq!(j.spare_files(), 2);
    for spare in spare_files(tmp.path())? {
        fs::remove_file(spare)?;
    }
    append_groups(&mut j, 8)?;
    assert!(!j.is_poisoned());
    let last = j.last_lsn();
    drop(j);
    assert_eq!(Journal::open(tmp.path(), REUSE)?.last_lsn(), last);
    Ok(())
}

/// A power cut while appending to a reused segment: the bytes written
/// since its last sync are lost, each either back to what the file held
/// before (the old records) or kept, as a torn write leaves them.
/// Whatever survives, open returns every acknowledged record and nothing
/// that was not written.
fn power_cut_in_a_reused_segment(rounds: usize, groups: &[u64], keep: u64) -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = churned(tmp.path(), rounds)?;
    until_current_is_reused(&mut j)?;
    for &n in &groups[..groups.len() - 1] {
        append_n(&mut j, n)?;
    }
    let acked = j.last_lsn();
    // What the disk holds at the last sync: every file as it is now.
    let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(tmp.path())?
        .map(|e| {
            let p = e?.path();
            Ok((p.clone(), fs::read(p)?))
        })
        .collect::<Result<_, io::Error>>()?;
    let current = segment_files(tmp.path())?.pop().ok_or("no segment")?;
    let start = j.segs.current.as_ref().map_or(0, |a| a.seg.bytes) as usize;
    append_n(&mut j, groups[groups.len() - 1])?;
    let written = j.last_lsn();
    let written_end = j.segs.current.as_ref().map_or(0, |a| a.seg.bytes) as usize;
    drop(j);

    // The file the last append went to: the same segment, or a new one
    // (a spare renamed, durably, or a new file). A prefix of what it wrote
    // survives; past it the file reads as it did before.
    let target = segment_files(tmp.path())?.pop().ok_or("no segment")?;
    let (start, old): (usize, &[u8]) = if target == current {
        let old = &before.iter().find(|(p, _)| *p == current).ok_or("file")?.1;
        (start, old)
    } else {
        let gone = before
            .iter()
            .find(|(p, _)| p.extension().is_some_and(|x| x == "spare") && !p.exists());
        (0, gone.map_or(&[][..], |(_, bytes)| bytes))
    };
    let mut now = fs::read(&target)?;
    // Bytes the last append wrote there; what lies past them is old.
    let new_len = written_end.saturating_sub(start);
    let kept = (keep % (new_len as u64 + 1)) as usize;
    for (i, byte) in now.iter_mut().enumerate().skip(start + kept) {
        *byte = old.get(i).copied().unwrap_or(0);
    }
    now.truncate(old.len().max(start + kept));
    fs::write(&target, &now)?;

    let mut j = Journal::open(tmp.path(), REUSE)?;
    let end = j.last_lsn();
    assert!(
        end >= acked && end <= written,
        "last {end}, acked {acked}, written {written}"
    );
    let got = read_all(&j, 0)?;
    let from = got.first().map_or(end + 1, |r| r.0);
    assert_records(&got, from, end);
    append_n(&mut j, 2)?;
    drop(j);
    let got = read_all(&Journal::open(tmp.path(), REUSE)?, 0)?;
    assert_records(&got, from, end + 2);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_records_survive_a_power_cut_in_a_reused_segment(
        rounds in 1usize..5,
        groups in prop::collection::vec(1u64..6, 1..8),
        keep in any::<u64>(),
    ) {
        power_cut_in_a_reused_segment(rounds, &groups, keep)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
