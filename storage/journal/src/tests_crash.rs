//! Crash tests of the journal, below any store: tails torn at every byte,
//! garbage after the valid end, bit flips in the last and earlier segments,
//! gaps, recovery interrupted and run again, and a power-cut property.

use std::fs::{self, OpenOptions};

use proptest::prelude::*;

use super::tests::{
    SMALL, TestResult, append_n, assert_records, build, copy_dir, group, last_file, payload,
    power_cut, read_all, segment_files,
};
use super::*;

#[test]
fn torn_tail_at_every_offset_is_cut() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let last = build(&tmp.path().join("src"), 5)?;
    let src = tmp.path().join("src");
    let tail_len = fs::metadata(last_file(&src)?)?.len();
    let start = tail_len - (RECORD_HEADER + payload(last).len()) as u64;
    for cut in start..tail_len {
        let dir = tmp.path().join(format!("cut{cut}"));
        copy_dir(&src, &dir)?;
        let file = last_file(&dir)?;
        OpenOptions::new().write(true).open(&file)?.set_len(cut)?;

        let mut j = Journal::open(&dir, SMALL)?;
        assert_eq!(j.last_lsn(), last - 1, "cut at {cut}");
        assert_eq!(j.cut_at_open(), cut - start);
        assert_eq!(
            fs::metadata(&file)?.len(),
            start,
            "the file is cut at the torn record"
        );
        assert_records(&read_all(&j, 0)?, 1, last - 1);
        append_n(&mut j, 2)?;
        assert_records(&read_all(&j, 0)?, 1, last + 1);
        drop(j);
        assert_records(&read_all(&Journal::open(&dir, SMALL)?, 0)?, 1, last + 1);
        fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

#[test]
fn garbage_after_the_valid_end_is_cut() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    let last = build(&src, 4)?;
    // A record that is valid but repeats an LSN, as a stale sector would.
    let stale = group(last - 1, 1);
    let garbage: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tails: [&[u8]; 4] = [&[0; 4096], &garbage, &stale, &[1, 2, 3]];
    for (i, tail) in tails.into_iter().enumerate() {
        let dir = tmp.path().join(format!("t{i}"));
        copy_dir(&src, &dir)?;
        let file = last_file(&dir)?;
        let len = fs::metadata(&file)?.len();
        let mut bytes = fs::read(&file)?;
        bytes.extend_from_slice(tail);
        fs::write(&file, &bytes)?;

        let mut j = Journal::open(&dir, SMALL)?;
        assert_eq!(j.last_lsn(), last);
        assert_eq!(j.cut_at_open(), tail.len() as u64);
        assert_eq!(fs::metadata(&file)?.len(), len);
        append_n(&mut j, 3)?;
        drop(j);
        assert_records(&read_all(&Journal::open(&dir, SMALL)?, 0)?, 1, last + 3);
    }
    Ok(())
}

#[test]
fn bit_flip_in_the_last_segment_drops_the_tail() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    let last = build(&src, 5)?;
    let first_of_last: u64 = last_file(&src)?
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("name")?
        .parse()?;
    assert!(
        first_of_last > 1 && first_of_last < last,
        "the last segment holds several records"
    );
    let len = fs::metadata(last_file(&src)?)?.len() as usize;
    let last_start = len - (RECORD_HEADER + payload(last).len());
    // Every byte of the last record, then the first byte of the segment
    // (the header of its first record).
    let flips = (last_start..len).map(|at| (at, last - 1)).chain([
        (0, first_of_last - 1),
        (RECORD_HEADER + 1, first_of_last - 1),
    ]);
    for (at, survivors) in flips {
        let dir = tmp.path().join(format!("flip{at}"));
        copy_dir(&src, &dir)?;
        let file = last_file(&dir)?;
        let mut bytes = fs::read(&file)?;
        bytes[at] ^= 1 << (at % 8);
        fs::write(&file, &bytes)?;

        let mut j = Journal::open(&dir, SMALL)?;
        assert_eq!(j.last_lsn(), survivors, "flip at {at}");
        assert_records(&read_all(&j, 0)?, 1, survivors);
        append_n(&mut j, 1)?;
        assert_records(&read_all(&j, 0)?, 1, survivors + 1);
        drop(j);
        fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

#[test]
fn bit_flip_in_an_earlier_segment_is_corrupt() -> TestResult {
    let tmp = tempfile::tempdir()?;
    build(tmp.path(), 5)?;
    let files = segment_files(tmp.path())?;
    assert!(files.len() >= 3);
    for (at, file) in [
        (RECORD_HEADER + 1, &files[0]),
        (3, &files[1]),
        (9, &files[1]),
    ] {
        let good = fs::read(file)?;
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        fs::write(file, &bad)?;
        match Journal::open(tmp.path(), SMALL) {
            Err(JournalError::Corrupt { path, .. }) => assert_eq!(&path, file),
            other => {
                return Err(
                    format!("flip at {at} of {file:?}: expected Corrupt, got {other:?}").into(),
                );
            }
        }
        fs::write(file, &good)?;
    }
    // A torn end of an earlier segment is corrupt too.
    let good = fs::read(&files[0])?;
    fs::write(&files[0], &good[..good.len() - 1])?;
    let opened = Journal::open(tmp.path(), SMALL);
    assert!(
        matches!(opened, Err(JournalError::Corrupt { .. })),
        "got {opened:?}"
    );
    fs::write(&files[0], &good)?;
    assert_eq!(Journal::open(tmp.path(), SMALL)?.last_lsn(), 15);
    Ok(())
}

#[test]
fn a_gap_between_segments_is_corrupt() -> TestResult {
    let tmp = tempfile::tempdir()?;
    build(tmp.path(), 5)?;
    let files = segment_files(tmp.path())?;
    fs::remove_file(&files[1])?;
    let opened = Journal::open(tmp.path(), SMALL);
    assert!(
        matches!(opened, Err(JournalError::Corrupt { .. })),
        "got {opened:?}"
    );
    Ok(())
}

#[test]
fn recovery_is_idempotent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = tmp.path().join("a");
    let last = build(&a, 4)?;
    let file = last_file(&a)?;
    let mut bytes = fs::read(&file)?;
    let torn = bytes.len() - 5;
    bytes.truncate(torn);
    bytes.extend_from_slice(&[0xEE; 40]);
    fs::write(&file, &bytes)?;
    // The state of a crash before open's cut was durable.
    let b = tmp.path().join("b");
    copy_dir(&a, &b)?;

    let first = read_all(&Journal::open(&a, SMALL)?, 0)?;
    assert_records(&first, 1, last - 1);
    let again = Journal::open(&a, SMALL)?;
    assert_eq!(
        again.cut_at_open(),
        0,
        "the second open finds nothing to cut"
    );
    assert_eq!(read_all(&again, 0)?, first);
    assert_eq!(read_all(&Journal::open(&b, SMALL)?, 0)?, first);
    assert_eq!(fs::read(last_file(&a)?)?, fs::read(last_file(&b)?)?);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_records_survive_a_power_cut(
        groups in prop::collection::vec(1u64..6, 1..10),
        segment_bytes in 1u64..600,
        keep in any::<u64>(),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        power_cut(&tmp, &groups, segment_bytes, keep, &garbage, false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
