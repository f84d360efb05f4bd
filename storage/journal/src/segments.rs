//! The journal's files: segment names, listing, the scan that finds the
//! valid end at open, and creating, opening and syncing segments and the
//! directory.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{SegmentReader, Step};
use super::{Active, JournalError, Segment, Segments, Spare, direct, io_err};

/// The name of a segment whose first record is `first`: `<first>.wal`
/// for a new file (salt 0), `<first>-<salt>.wal` for a reused one.
pub(super) fn segment_name(first: u64, salt: u32) -> String {
    if salt == 0 {
        format!("{first:020}.wal")
    } else {
        format!("{first:020}-{salt:08x}.wal")
    }
}

/// The first LSN and the salt of a segment file name, or None if it is
/// not one.
pub(super) fn parse_segment_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".wal")?;
    let (digits, salt) = match stem.split_once('-') {
        None => (stem, 0),
        Some((digits, hex)) => {
            if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let salt = u32::from_str_radix(hex, 16).ok().filter(|&s| s != 0)?;
            (digits, salt)
        }
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, salt))
}

/// What a retired segment is renamed to: its name and `.spare`. Not a
/// segment name, so open never reads it as one.
pub(super) fn spare_name(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(SPARE_SUFFIX);
    PathBuf::from(name)
}

const SPARE_SUFFIX: &str = ".spare";

/// The segments in `dir` by first LSN, and its spare files.
pub(super) fn list_segments(dir: &Path) -> Result<(Vec<Listed>, Vec<Spare>), JournalError> {
    let mut found = Vec::new();
    let mut spares = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list journal directory", dir))? {
        let entry = entry.map_err(io_err("list journal directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((first, salt)) = parse_segment_name(name) {
            found.push(Listed {
                first,
                salt,
                path: entry.path(),
            });
        } else if let Some((_, salt)) = name.strip_suffix(SPARE_SUFFIX).and_then(parse_segment_name)
        {
            spares.push(Spare {
                path: entry.path(),
                salt,
            });
        }
    }
    found.sort_unstable_by_key(|l| l.first);
    Ok((found, spares))
}

/// A segment file found by [`list_segments`].
#[derive(Debug)]
pub(super) struct Listed {
    pub(super) first: u64,
    pub(super) salt: u32,
    pub(super) path: PathBuf,
}

/// Scans every segment of `dir`, oldest first, and opens the last one
/// for appending, cut at the end of its valid records. Returns the
/// segments, the bytes cut, and the spare files (see [`Journal`]).
///
/// A segment before the last may go on past its valid records only when
/// the next segment starts right after them: that tail is what a reused
/// file held before (salted differently, so it can never read as valid).
/// Anywhere else an invalid record is where acknowledged data must be, and
/// open fails.
///
/// [`Journal`]: super::Journal
pub(super) fn recover(dir: &Path) -> Result<(Segments, u64, Vec<Spare>), JournalError> {
    let mut closed = VecDeque::new();
    // The newest segment scanned so far: the last one, unless another
    // follows.
    let mut newest: Option<Scan> = None;
    let (listed, spares) = list_segments(dir)?;
    for Listed { first, salt, path } in listed {
        if let Some(prev) = newest.take() {
            let follows = Some(first) == prev.seg.last.checked_add(1);
            // Only a reused file (salted) can hold bytes past its records.
            let tail_ok = prev.bad.is_none() || prev.seg.salt != 0;
            if !(follows && tail_ok) {
                if let Some(reason) = prev.bad {
                    let (path, offset) = (prev.seg.path, prev.seg.bytes);
                    return Err(JournalError::Corrupt {
                        path,
                        offset,
                        reason,
                    });
                }
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
        newest = Some(scan_segment(path, first, salt)?);
    }
    let (current, cut) = match newest {
        Some(last) => {
            let cut = last.file_len - last.seg.bytes - last.padding;
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
    Ok((segs, cut, spares))
}

/// What [`scan_segment`] found.
#[derive(Debug)]
pub(super) struct Scan {
    /// The segment up to the end of its valid records.
    seg: Segment,
    file_len: u64,
    /// Why the record at `seg.bytes` is invalid, if the file goes on.
    bad: Option<String>,
    /// Bytes of a direct append's zero padding after the valid records,
    /// up to the end of the file: not a torn tail (see `direct`).
    padding: u64,
}

/// Reads a whole segment, checking every record.
pub(super) fn scan_segment(path: PathBuf, first: u64, salt: u32) -> Result<Scan, JournalError> {
    let mut reader = SegmentReader::open(&path, first, salt, None)?;
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
    let mut padding = 0;
    if bad.is_some() && file_len - bytes < direct::BLOCK as u64 {
        let mut tail = vec![0; (file_len - bytes) as usize];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut tail, bytes))
            .map_err(io_err("read segment", &path))?;
        if direct::is_padding(&tail) {
            padding = file_len - bytes;
        }
    }
    let bad = if padding > 0 { None } else { bad };
    let seg = Segment {
        first,
        last,
        bytes,
        salt,
        path,
    };
    Ok(Scan {
        seg,
        file_len,
        bad,
        padding,
    })
}

/// Opens the last segment for writing, first cutting it at the end of
/// its valid records if `cut`. Syncs it either way: what open found (maybe
/// only in the page cache, after a crash of the process) becomes durable
/// before anything is appended after it.
pub(super) fn open_current(seg: Segment, cut: bool) -> Result<Active, JournalError> {
    let path = &seg.path;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    if cut {
        file.set_len(seg.bytes)
            .map_err(io_err("truncate segment", path))?;
    }
    file.sync_data().map_err(io_err("sync segment", path))?;
    Ok(Active::new(seg, file))
}

/// Creates the segment whose first record is `first`, durably.
pub(super) fn create_segment(dir: &Path, first: u64) -> Result<Active, JournalError> {
    let path = dir.join(segment_name(first, 0));
    // create_new: an existing file of that name would be a segment open
    // did not account for.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create segment", &path))?;
    sync_dir(dir)?;
    Ok(Active::new(Segment::empty(first, 0, path), file))
}

/// Makes a spare file the segment whose first record is `first`, durably:
/// renamed under a new salt, so that nothing it held reads as a record of
/// its new name. Its blocks are already allocated and written, so the
/// appends that overwrite them change no file system metadata, and their
/// `fdatasync` need not wait for a commit of the file system's journal
/// (see the module docs of the journal).
///
/// Ok(None) if the spare could not be renamed (it is gone, or the name is
/// taken): nothing changed, and the caller makes a new file instead.
pub(super) fn reuse_spare(
    dir: &Path,
    spare: &Spare,
    first: u64,
) -> Result<Option<Active>, JournalError> {
    let salt = new_salt(spare.salt);
    let path = dir.join(segment_name(first, salt));
    // rename replaces a file of the new name: never do that to a segment.
    if path.exists() || fs::rename(&spare.path, &path).is_err() {
        return Ok(None);
    }
    sync_dir(dir)?;
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("open segment", &path))?;
    Ok(Some(Active::new(Segment::empty(first, salt, path), file)))
}

/// A random salt, never 0 (the salt of new files) nor `old`.
fn new_salt(old: u32) -> u32 {
    use std::hash::BuildHasher;
    loop {
        // std's RandomState is seeded from the OS (and each new one
        // differs): the salt must not be guessable by whoever chose the
        // payload bytes a spare still holds.
        let salt = std::collections::hash_map::RandomState::new().hash_one(old) as u32;
        if salt != 0 && salt != old {
            return salt;
        }
    }
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
