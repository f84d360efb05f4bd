//! Tests of the journal: round trips, truncation, sync faults, bad
//! appends, and the helpers the crash tests (`tests_crash`) share.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Small segments, so a few groups span several.
/// No spares: expired segments are deleted (`tests_spares` reuses them).
/// Through the page cache: these tests cut and flip files at the offsets
/// of records, which direct appends pad to blocks (`tests_direct` runs
/// the journal as it is deployed, direct).
pub(super) const SMALL: JournalOptions = JournalOptions {
    segment_bytes: 300,
    spare_segments: 0,
    direct_io: false,
};

/// The caller's small header of a record.
pub(super) fn head(lsn: u64) -> [u8; 2] {
    [lsn as u8, 0xAB]
}

/// The big part of a record: 0 to 89 bytes, depending on the LSN.
pub(super) fn body(lsn: u64) -> Vec<u8> {
    (0..(lsn * 37) % 90)
        .map(|i| (i as u8) ^ (lsn as u8).rotate_left(3))
        .collect()
}

/// The payload `encode_record` stores for `lsn`: the two parts joined.
pub(super) fn payload(lsn: u64) -> Vec<u8> {
    let mut p = head(lsn).to_vec();
    p.extend(body(lsn));
    p
}

/// The records `first .. first + n`, encoded as one group.
pub(super) fn group(first: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for lsn in first..first + n {
        encode_record(lsn, &[&head(lsn), &body(lsn)], &mut out);
    }
    out
}

/// Appends `n` records after the last one; returns the new last LSN.
pub(super) fn append_n(j: &mut Journal, n: u64) -> Result<u64, JournalError> {
    let first = j.last_lsn() + 1;
    let last = first + n - 1;
    j.append(&group(first, n), last)?;
    Ok(last)
}

pub(super) fn read_all(
    j: &Journal,
    after: u64,
) -> Result<Vec<(u64, Vec<u8>)>, ReplayError<Infallible>> {
    let mut got = Vec::new();
    let visited = j.replay(after, |lsn, p| {
        got.push((lsn, p.to_vec()));
        Ok::<(), Infallible>(())
    })?;
    assert_eq!(visited, got.len() as u64);
    Ok(got)
}

/// Asserts that `got` is exactly the records `from ..= to`.
pub(super) fn assert_records(got: &[(u64, Vec<u8>)], from: u64, to: u64) {
    let lsns: Vec<u64> = got.iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(lsns, (from..=to).collect::<Vec<_>>());
    for (lsn, p) in got {
        assert_eq!(p, &payload(*lsn), "payload of record {lsn}");
    }
}

/// Opens the journal in `dir` again and asserts that it ends at `last`
/// with nothing cut, and that it replays exactly the records after
/// `after` up to `last`.
pub(super) fn assert_reopens_whole(
    dir: &Path,
    opts: JournalOptions,
    after: u64,
    last: u64,
) -> TestResult {
    let j = Journal::open(dir, opts)?;
    assert_eq!((j.last_lsn(), j.cut_at_open()), (last, 0));
    assert_records(&read_all(&j, after)?, after + 1, last);
    Ok(())
}

/// The segment files of `dir`, oldest first.
pub(super) fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, io::Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "wal"));
    files.sort();
    Ok(files)
}

pub(super) fn copy_dir(src: &Path, dst: &Path) -> Result<(), io::Error> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        fs::copy(entry.path(), dst.join(entry.file_name()))?;
    }
    Ok(())
}

pub(super) fn last_file(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(segment_files(dir)?.pop().ok_or("no segment")?)
}

/// A journal of `groups` groups of 3 records in small segments; returns
/// its last LSN.
pub(super) fn build(dir: &Path, groups: u64) -> Result<u64, JournalError> {
    let mut j = Journal::open(dir, SMALL)?;
    for _ in 0..groups {
        append_n(&mut j, 3)?;
    }
    Ok(j.last_lsn())
}

#[test]
fn round_trip_across_segments() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), 0);
    for n in [1, 4, 2, 7, 3, 1, 5] {
        append_n(&mut j, n)?;
    }
    assert_eq!(j.last_lsn(), 23);
    assert!(
        segment_files(tmp.path())?.len() >= 3,
        "small segments rotate"
    );
    assert_records(&read_all(&j, 0)?, 1, 23);
    let on_disk: u64 = segment_files(tmp.path())?
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()))
        .sum::<Result<_, _>>()?;
    assert_eq!(j.disk_bytes(), on_disk);
    drop(j);

    let j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), 23);
    assert_eq!(j.cut_at_open(), 0);
    assert_records(&read_all(&j, 0)?, 1, 23);
    for k in [1, 5, 12, 22] {
        assert_records(&read_all(&j, k)?, k + 1, 23);
    }
    assert!(read_all(&j, 23)?.is_empty());
    assert!(read_all(&j, 100)?.is_empty());
    Ok(())
}

#[test]
fn segments_are_named_by_their_first_lsn() -> TestResult {
    let tmp = tempfile::tempdir()?;
    build(tmp.path(), 6)?;
    let files = segment_files(tmp.path())?;
    assert_eq!(
        files[0].file_name().and_then(|n| n.to_str()),
        Some("00000000000000000001.wal")
    );
    for file in &files {
        let bytes = fs::read(file)?;
        let lsn = u64::from_le_bytes(bytes.get(8..16).ok_or("empty segment")?.try_into()?);
        assert_eq!(
            file.file_name().and_then(|n| n.to_str()),
            Some(format!("{lsn:020}.wal").as_str())
        );
    }
    Ok(())
}

#[test]
fn truncate_through_deletes_whole_old_segments_only() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    for _ in 0..12 {
        append_n(&mut j, 3)?;
    }
    let last = j.last_lsn();
    let firsts: Vec<u64> = segment_files(tmp.path())?
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
        .collect();
    assert!(firsts.len() >= 4, "segments: {firsts:?}");
    // Inside the second segment: only the first one is wholly at or below.
    let mid = firsts[1];
    assert_eq!(j.truncate_through(mid)?, 1);
    assert_eq!(j.truncate_through(mid)?, 0);
    assert_eq!(segment_files(tmp.path())?.len(), firsts.len() - 1);
    assert_records(&read_all(&j, 0)?, firsts[1], last);
    // Exactly the end of the second segment.
    assert_eq!(j.truncate_through(firsts[2] - 1)?, 1);
    // Everything: all but the current segment.
    assert_eq!(j.truncate_through(u64::MAX)?, firsts.len() - 3);
    let current = *firsts.last().ok_or("no segment")?;
    assert_eq!(segment_files(tmp.path())?.len(), 1);
    assert_records(&read_all(&j, 0)?, current, last);
    assert_eq!(j.disk_bytes(), fs::metadata(last_file(tmp.path())?)?.len());
    append_n(&mut j, 1)?;
    drop(j);

    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), last + 1);
    assert_records(&read_all(&j, 0)?, current, last + 1);
    append_n(&mut j, 2)?;
    assert_records(&read_all(&j, last)?, last + 1, last + 3);
    Ok(())
}

/// Expired segments leave the journal at once and their files only when
/// deleted; appends go on in between, and a crash in between reopens a
/// contiguous journal that still holds them.
#[test]
fn expired_segments_are_deleted_apart_from_the_journal() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    for _ in 0..8 {
        append_n(&mut j, 3)?;
    }
    let files = segment_files(tmp.path())?.len();
    let expired = j.expire_through(u64::MAX)?;
    assert_eq!(expired.len(), files - 1, "all but the current one");
    assert_eq!(segment_files(tmp.path())?.len(), files, "files stay");
    // The journal goes on without them, and so does a reopen.
    append_n(&mut j, 2)?;
    let last = j.last_lsn();
    let first_kept = read_all(&j, 0)?.first().map(|r| r.0).ok_or("empty")?;
    assert!(first_kept > 1);
    drop(j);
    let j = Journal::open(tmp.path(), SMALL)?;
    assert_records(&read_all(&j, 0)?, 1, last);
    assert_eq!(expired.retire()?, files - 1);
    drop(j);
    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_records(&read_all(&j, 0)?, first_kept, last);
    append_n(&mut j, 1)?;
    // Nothing is expired while a rebase is pending: the next append
    // deletes every old segment itself.
    j.set_base(j.last_lsn() + 10);
    assert!(j.expire_through(u64::MAX)?.is_empty());
    Ok(())
}

#[test]
fn an_empty_last_segment_keeps_its_lsn() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let last = build(tmp.path(), 5)?;
    let file = last_file(tmp.path())?;
    let first: u64 = file
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("name")?
        .parse()?;
    // The power cut hit the first record of the segment: nothing of it left.
    fs::write(&file, b"")?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), first - 1);
    assert!(first - 1 < last);
    // Every old segment deleted: the empty one still tells the LSN.
    j.truncate_through(u64::MAX)?;
    drop(j);
    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), first - 1);
    assert!(read_all(&j, 0)?.is_empty());
    append_n(&mut j, 2)?;
    assert_eq!(
        segment_files(tmp.path())?,
        vec![file],
        "the empty segment is reused"
    );
    drop(j);
    assert_records(
        &read_all(&Journal::open(tmp.path(), SMALL)?, 0)?,
        first,
        first + 1,
    );
    Ok(())
}

#[test]
fn set_base_on_an_empty_journal() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("new/journal");
    let mut j = Journal::open(&dir, SMALL)?;
    assert_eq!(j.last_lsn(), 0);
    j.set_base(100);
    j.set_base(50);
    assert_eq!(j.last_lsn(), 100);
    let wrong = j.append(&group(1, 1), 1);
    assert!(
        matches!(wrong, Err(JournalError::InvalidAppend(_))),
        "got {wrong:?}"
    );
    append_n(&mut j, 2)?;
    assert_eq!(
        segment_files(&dir)?,
        vec![dir.join("00000000000000000101.wal")]
    );
    drop(j);
    let j = Journal::open(&dir, SMALL)?;
    assert_eq!(j.last_lsn(), 102);
    assert_records(&read_all(&j, 0)?, 101, 102);
    Ok(())
}

#[test]
fn set_base_over_records_starts_afresh() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let last = build(tmp.path(), 4)?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    j.set_base(last - 3);
    assert_eq!(j.last_lsn(), last, "set_base never lowers");
    j.set_base(50);
    assert_eq!(j.last_lsn(), 50);
    append_n(&mut j, 1)?;
    assert_eq!(
        segment_files(tmp.path())?,
        vec![tmp.path().join("00000000000000000051.wal")]
    );
    assert_records(&read_all(&j, 0)?, 51, 51);
    drop(j);
    let j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), 51);
    Ok(())
}

#[test]
fn a_failed_sync_poisons() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open_with_fault(tmp.path(), SMALL, Box::new(FailSyncAfter::new(2)))?;
    append_n(&mut j, 2)?;
    append_n(&mut j, 2)?;
    assert!(!j.is_poisoned());
    let third = append_n(&mut j, 2);
    assert!(
        matches!(third, Err(JournalError::Io { .. })),
        "got {third:?}"
    );
    assert!(j.is_poisoned());
    assert_eq!(j.last_lsn(), 4);
    let fourth = j.append(&group(5, 1), 5);
    assert!(
        matches!(fourth, Err(JournalError::Poisoned(_))),
        "got {fourth:?}"
    );
    assert!(matches!(
        j.truncate_through(u64::MAX),
        Err(JournalError::Poisoned(_))
    ));
    // What was acknowledged is still readable, the failed group is not.
    assert_records(&read_all(&j, 0)?, 1, 4);
    drop(j);
    // Restarted: the disk is fine, the unsynced group happens to be there.
    let mut j = Journal::open(tmp.path(), SMALL)?;
    assert_eq!(j.last_lsn(), 6);
    append_n(&mut j, 1)?;
    assert_records(&read_all(&j, 0)?, 1, 7);
    Ok(())
}

#[test]
fn append_rejects_groups_that_do_not_follow() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut j = Journal::open(tmp.path(), SMALL)?;
    append_n(&mut j, 3)?;
    let reject = |j: &mut Journal, encoded: &[u8], last: u64| -> TestResult {
        match j.append(encoded, last) {
            Err(JournalError::InvalidAppend(_)) => Ok(()),
            other => Err(format!("expected InvalidAppend, got {other:?}").into()),
        }
    };
    // First LSN not last + 1: a repeat, a gap.
    reject(&mut j, &group(3, 1), 3)?;
    reject(&mut j, &group(5, 2), 6)?;
    // `last` not the end of the group.
    reject(&mut j, &group(4, 2), 4)?;
    reject(&mut j, &group(4, 2), 6)?;
    // A gap inside the group.
    let mut gap = group(4, 1);
    gap.extend(group(6, 1));
    reject(&mut j, &gap, 6)?;
    // A partial record, an empty payload.
    let whole = group(4, 2);
    reject(&mut j, &whole[..whole.len() - 1], 5)?;
    reject(&mut j, &whole[..RECORD_HEADER - 1], 4)?;
    let mut empty = Vec::new();
    encode_record(4, &[&[], &[]], &mut empty);
    reject(&mut j, &empty, 4)?;
    // Nothing was written, nothing poisoned.
    assert!(!j.is_poisoned());
    assert_eq!(j.last_lsn(), 3);
    j.append(&[], 99)?;
    j.append(&whole, 5)?;
    drop(j);
    assert_records(&read_all(&Journal::open(tmp.path(), SMALL)?, 0)?, 1, 5);
    Ok(())
}

#[test]
fn replay_returns_the_callback_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    build(tmp.path(), 3)?;
    let j = Journal::open(tmp.path(), SMALL)?;
    let mut seen = 0;
    let result = j.replay(2, |lsn, _| {
        seen += 1;
        if lsn == 5 { Err("stop") } else { Ok(()) }
    });
    assert!(
        matches!(result, Err(ReplayError::Callback("stop"))),
        "got {result:?}"
    );
    assert_eq!(seen, 3);
    Ok(())
}

#[test]
fn other_files_are_ignored() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let last = build(tmp.path(), 3)?;
    fs::write(tmp.path().join("notes.txt"), b"hello")?;
    fs::write(tmp.path().join("1.wal"), b"junk")?;
    fs::write(tmp.path().join("00000000000000000001.wal.tmp"), b"junk")?;
    let j = Journal::open(tmp.path(), SMALL)?;
    assert_records(&read_all(&j, 0)?, 1, last);
    Ok(())
}

/// The power-cut property: `groups` appends, the last of which writes but
/// fails its sync; then the cut keeps all synced bytes and any prefix
/// (`keep` picks it) of the unsynced ones, followed by `garbage`. Direct
/// appends if `direct_io`, where the failed one also wrote the synced
/// partial block again.
pub(super) fn power_cut(
    tmp: &tempfile::TempDir,
    groups: &[u64],
    segment_bytes: u64,
    keep: u64,
    garbage: &[u8],
    direct_io: bool,
) -> TestResult {
    let opts = JournalOptions {
        segment_bytes,
        spare_segments: 0,
        direct_io,
    };
    let acked = groups.len() as u64 - 1;
    let mut j = Journal::open_with_fault(tmp.path(), opts, Box::new(FailSyncAfter::new(acked)))?;
    let mut durable = BTreeMap::new();
    for (i, &n) in groups.iter().enumerate() {
        if i as u64 == acked {
            durable = segment_files(tmp.path())?
                .into_iter()
                .map(|p| fs::metadata(&p).map(|m| (p, m.len())))
                .collect::<Result<_, _>>()?;
        }
        let result = append_n(&mut j, n);
        assert_eq!(result.is_ok(), (i as u64) < acked, "append {i}: {result:?}");
    }
    let acked_last: u64 = groups[..groups.len() - 1].iter().sum();
    let total: u64 = groups.iter().sum();
    drop(j);

    for file in segment_files(tmp.path())? {
        let synced = durable.get(&file).copied().unwrap_or(0);
        let len = fs::metadata(&file)?.len();
        if len == synced {
            continue;
        }
        let mut bytes = fs::read(&file)?;
        bytes.truncate((synced + keep % (len - synced + 1)) as usize);
        bytes.extend_from_slice(garbage);
        fs::write(&file, &bytes)?;
    }

    let mut j = Journal::open(tmp.path(), opts)?;
    let got = read_all(&j, 0)?;
    let end = j.last_lsn();
    assert!(
        end >= acked_last && end <= total,
        "last {end}, acked {acked_last}, written {total}"
    );
    assert_records(&got, 1, end);
    append_n(&mut j, 2)?;
    drop(j);
    assert_records(&read_all(&Journal::open(tmp.path(), opts)?, 0)?, 1, end + 2);
    Ok(())
}

#[test]
fn a_group_splits_into_its_records_or_not_at_all() {
    let mut buf = Vec::new();
    encode_record(8, &[b"eight"], &mut buf);
    encode_record(9, &[b"ni", b"ne"], &mut buf);
    let split = split_records(&buf, 7, 9).map_err(|e| e.to_string());
    assert_eq!(
        split,
        Ok(vec![(8, b"eight".as_slice()), (9, b"nine".as_slice())])
    );
    // A group that does not follow LSN 6, or is cut short, is refused.
    assert!(split_records(&buf, 6, 9).is_err());
    assert!(split_records(&buf[..buf.len() - 1], 7, 9).is_err());
}

/// One open journal a directory: a second open (another store whose
/// link reaches it, or another process) is refused until the first is
/// dropped.
#[test]
fn a_journal_directory_is_open_once_at_a_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = Journal::open(dir.path(), JournalOptions::default())?;
    match Journal::open(dir.path(), JournalOptions::default()) {
        Err(JournalError::InUse(path)) => assert_eq!(path, dir.path()),
        other => return Err(format!("a second open: {other:?}").into()),
    }
    drop(first);
    Journal::open(dir.path(), JournalOptions::default())?;
    Ok(())
}
