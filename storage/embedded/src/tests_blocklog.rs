//! Tests of `blocklog`: framing, the cut at open, rolls, and corruption.

use super::*;
use tillstream_journal::direct_io::BLOCK;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn blocks_read_back_and_a_pointer_is_told_from_an_inline_block() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = BlockLog::open(dir.path(), None)?;
    let a = log.stage(b"first block")?;
    let b = log.stage(&[7u8; 1000])?;
    let end = log.sync()?;
    // Each frame is padded to 16 bytes.
    assert_eq!(end, (0, (2 * FRAME + 16 + 1008) as u64));
    assert_eq!(b.offset, (FRAME + 16) as u64);
    let mut out = AlignedVec::new();
    log.read(a, &mut out)?;
    assert_eq!(out.as_slice(), b"first block");
    log.read(b, &mut out)?;
    assert_eq!(out.as_slice(), &[7u8; 1000][..]);
    assert_eq!(Ptr::decode(&b.encode()), Some(b));
    let old = Ptr {
        format: BlockFormat::Rkyv,
        ..b
    };
    assert_eq!(Ptr::decode(&old.encode()), Some(old));
    assert_eq!(Ptr::decode(b"an inline block of 20"), None);
    assert_eq!(decode_end(&encode_end(end))?, end);
    Ok(())
}

#[test]
fn what_lies_past_the_recorded_end_is_cut_at_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let end = {
        let log = BlockLog::open(dir.path(), None)?;
        log.stage(b"kept")?;
        let end = log.sync()?;
        // A commit whose batch never reached the tables.
        log.stage(b"orphan")?;
        log.sync()?;
        end
    };
    let log = BlockLog::open(dir.path(), Some(end))?;
    let next = log.stage(b"after")?;
    assert_eq!(next.offset, end.1, "appends resume at the recorded end");
    log.sync()?;
    let mut out = AlignedVec::new();
    log.read(next, &mut out)?;
    assert_eq!(out.as_slice(), b"after");
    Ok(())
}

#[test]
fn a_full_segment_rolls_to_the_next_and_both_read_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let blocks: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 40]).collect();
    let (ptrs, end) = {
        // Two 64-byte frames a segment.
        let log = BlockLog::open_with(dir.path(), None, 128, true)?;
        let mut ptrs = Vec::new();
        for b in &blocks[..3] {
            ptrs.push(log.stage(b)?);
        }
        let end = log.sync()?;
        ptrs.push(log.stage(&blocks[3])?);
        (ptrs, log.sync()?.max(end))
    };
    assert_eq!(
        ptrs.iter()
            .map(|p| (p.segment, p.offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (0, 64), (1, 0), (1, 64)]
    );
    let log = BlockLog::open_with(dir.path(), Some(end), 128, true)?;
    let last = log.stage(&blocks[4])?;
    assert_eq!((last.segment, last.offset), (2, 0));
    log.sync()?;
    let mut out = AlignedVec::new();
    for (p, b) in ptrs.iter().chain([&last]).zip(&blocks) {
        log.read(*p, &mut out)?;
        assert_eq!(out.as_slice(), &b[..]);
    }
    Ok(())
}

#[test]
fn a_log_shorter_than_the_tables_point_is_corrupt_not_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let short = {
        let log = BlockLog::open(dir.path(), None)?;
        log.stage(b"short")?;
        log.sync()?
    };
    // Past the file, padding and all: open refuses it.
    let err = BlockLog::open(dir.path(), Some((0, 100_000))).map(drop);
    assert!(matches!(err, Err(StoreError::Corrupt { .. })), "{err:?}");
    // Inside a direct write's padding, open cannot tell; a pointer to a
    // block that was never written there fails its frame when read.
    let log = BlockLog::open(dir.path(), Some((0, 1_000)))?;
    let lost = Ptr {
        segment: 0,
        offset: short.1,
        len: 16,
        format: BlockFormat::Packed,
    };
    let mut out = AlignedVec::new();
    let read = log.read(lost, &mut out);
    assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
    Ok(())
}

#[test]
fn a_flipped_bit_or_a_wrong_pointer_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = BlockLog::open(dir.path(), None)?;
    let p = log.stage(b"payload bytes")?;
    log.sync()?;
    let seg = segment_path(dir.path(), 0);
    let mut bytes = std::fs::read(&seg)?;
    bytes[FRAME + 3] ^= 1;
    std::fs::write(&seg, &bytes)?;
    let log = BlockLog::open(dir.path(), Some((0, bytes.len() as u64)))?;
    let mut out = AlignedVec::new();
    assert!(matches!(
        log.read(p, &mut out),
        Err(StoreError::Corrupt { .. })
    ));
    let past = Ptr { offset: 4_096, ..p };
    assert!(matches!(
        log.read(past, &mut out),
        Err(StoreError::Corrupt { .. })
    ));
    let missing = Ptr { segment: 9, ..p };
    assert!(matches!(
        log.read(missing, &mut out),
        Err(StoreError::Corrupt { .. })
    ));
    Ok(())
}

/// Blocks of every size, over several commits, reopens at unaligned ends
/// and segment rolls, direct and through the page cache: each reads back
/// as written, and a direct write leaves whole blocks.
#[test]
fn blocks_read_back_across_commits_reopens_and_rolls_direct_or_not() -> TestResult {
    for direct_io in [true, false] {
        let dir = tempfile::tempdir()?;
        let mut written: Vec<(Ptr, Vec<u8>)> = Vec::new();
        let mut end = None;
        for round in 0..6u32 {
            let log = BlockLog::open_with(dir.path(), end, 20_000, direct_io)?;
            assert_eq!(log.tail.lock().direct, direct_io, "ext4 takes O_DIRECT");
            for i in 0..7u32 {
                let n = ((round * 7 + i) * 977 % 5_000) as usize + 1;
                let block: Vec<u8> = (0..n).map(|b| (b as u32 ^ round ^ i) as u8).collect();
                written.push((log.stage(&block)?, block));
                if i == 3 {
                    log.write_behind()?;
                }
            }
            end = Some(log.sync()?);
            // A commit that failed before its sync leaves nothing behind.
            log.stage(b"never synced")?;
            log.discard_staged();
            let mut out = AlignedVec::new();
            for (ptr, block) in &written {
                log.read(*ptr, &mut out)?;
                assert_eq!(out.as_slice(), &block[..], "direct {direct_io}, {ptr:?}");
            }
        }
        let segments = written.iter().map(|(p, _)| p.segment).max().unwrap_or(0);
        assert!(segments >= 2, "the log rolled: {segments}");
        // The last segment as the last sync left it (open cuts a file at
        // the recorded end, so one reopened and then rolled may be shorter).
        let len = std::fs::metadata(segment_path(dir.path(), segments))?.len();
        assert_eq!(len % BLOCK as u64 == 0, direct_io, "{len} bytes");
    }
    Ok(())
}

/// A file system that took `O_DIRECT` at open but refuses the write
/// (injected: none here does): the log goes on through the page cache
/// from its logical end, and every block reads back, before and after a
/// reopen.
#[test]
fn a_refused_direct_write_falls_back_to_the_page_cache() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = BlockLog::open(dir.path(), None)?;
    assert!(log.tail.lock().direct, "this file system takes O_DIRECT");
    let mut blocks = vec![(
        log.stage(b"first, written direct")?,
        b"first, written direct".to_vec(),
    )];
    log.sync()?;
    direct_io::refuse::next_writes(1);
    let big = vec![9u8; 5_000];
    blocks.push((log.stage(&big)?, big));
    log.sync()?;
    assert!(!log.tail.lock().direct);
    blocks.push((log.stage(b"after")?, b"after".to_vec()));
    let end = log.sync()?;
    let mut out = AlignedVec::new();
    for (ptr, bytes) in &blocks {
        log.read(*ptr, &mut out)?;
        assert_eq!(out.as_slice(), &bytes[..]);
    }
    drop(log);
    let log = BlockLog::open(dir.path(), Some(end))?;
    for (ptr, bytes) in &blocks {
        log.read(*ptr, &mut out)?;
        assert_eq!(out.as_slice(), &bytes[..]);
    }
    Ok(())
}
