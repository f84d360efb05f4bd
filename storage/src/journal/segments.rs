//! The journal's files: segment names, listing, the scan that finds the
//! valid end at open, and creating, opening and syncing segments and the
//! directory.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};

use std::path::{Path, PathBuf};

use super::format::{SegmentReader, Step};
use super::{Active, JournalError, Segment, Segments, io_err};

pub(super) fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// The first LSN of a segment file name, or None if it is not one.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, by first LSN.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list journal directory", dir))? {
        let entry = entry.map_err(io_err("list journal directory", dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(first, _)| *first);
    Ok(found)
}

/// Scans every segment of `dir`, oldest first, and opens the last one
/// for appending, cut at the end of its valid records. Returns the
/// segments and the bytes cut.
pub(super) fn recover(dir: &Path) -> Result<(Segments, u64), JournalError> {
    let mut closed = VecDeque::new();
    // The newest segment scanned so far: the last one, unless another
    // follows.
    let mut newest: Option<Scan> = None;
    for (first, path) in list_segments(dir)? {
        if let Some(prev) = newest.take() {
            if let Some(reason) = prev.bad {
                let (path, offset) = (prev.seg.path, prev.seg.bytes);
                return Err(JournalError::Corrupt {
                    path,
                    offset,
                    reason,
                });
            }
            if Some(first) != prev.seg.last.checked_add(1) {
                let reason = format!(
                    "the segment starts at LSN {first}, the previous one ends at {}",
                    prev.seg.last
                );
                return Err(JournalError::Corrupt {
                    path,
                    offset: 0,
                    reason,
                });
            }
            closed.push_back(prev.seg);
        }
        if first == 0 {
            let reason = "a segment named LSN 0".to_string();
            return Err(JournalError::Corrupt {
                path,
                offset: 0,
                reason,
            });
        }
        newest = Some(scan_segment(path, first)?);
    }
    let (current, cut) = match newest {
        Some(last) => {
            let cut = last.file_len - last.seg.bytes;
            let current = open_current(last.seg, cut > 0)?;
            sync_dir(dir)?;
            (Some(current), cut)
        }
        None => (None, 0),
    };
    let segs = Segments {
        dir: dir.to_path_buf(),
        closed,
        current,
        rebase: false,
    };
    Ok((segs, cut))
}

/// What [`scan_segment`] found.
#[derive(Debug)]
pub(super) struct Scan {
    /// The segment up to the end of its valid records.
    seg: Segment,
    file_len: u64,
    /// Why the record at `seg.bytes` is invalid, if the file goes on.
    bad: Option<String>,
}

/// Reads a whole segment, checking every record.
pub(super) fn scan_segment(path: PathBuf, first: u64) -> Result<Scan, JournalError> {
    let mut reader = SegmentReader::open(&path, first, None)?;
    let mut last = first.saturating_sub(1);
    let bad = loop {
        match reader.step(0)? {
            Step::Record(lsn) | Step::Skipped(lsn) => last = lsn,
            Step::End => break None,
            Step::Bad(reason) => break Some(reason),
        }
    };
    let (bytes, file_len) = (reader.offset(), reader.end());
    drop(reader);
    let seg = Segment {
        first,
        last,
        bytes,
        path,
    };
    Ok(Scan { seg, file_len, bad })
}

/// Opens the last segment for appending, first cutting it at the end of
/// its valid records if `cut`. Syncs it either way: what open found (maybe
/// only in the page cache, after a crash of the process) becomes durable
/// before anything is appended after it.
pub(super) fn open_current(seg: Segment, cut: bool) -> Result<Active, JournalError> {
    let path = &seg.path;
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    if cut {
        file.set_len(seg.bytes)
            .map_err(io_err("truncate segment", path))?;
    }
    file.sync_data().map_err(io_err("sync segment", path))?;
    Ok(Active { seg, file })
}

/// Creates the segment whose first record is `first`, durably.
pub(super) fn create_segment(dir: &Path, first: u64) -> Result<Active, JournalError> {
    let path = dir.join(segment_name(first));
    // create_new: an existing file of that name would be a segment open
    // did not account for.
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create segment", &path))?;
    sync_dir(dir)?;
    let seg = Segment {
        first,
        last: first.saturating_sub(1),
        bytes: 0,
        path,
    };
    Ok(Active { seg, file })
}

/// Creates `dir` if needed; a new directory is made durable in its parent.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create journal directory", dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// fsyncs a directory, making the creation or deletion of its entries
/// durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync journal directory", dir))
}
