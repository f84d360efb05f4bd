//! How an append reaches its segment: the segment being written, and the
//! write and sync of one group, direct (`direct`) or through the page
//! cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::group::Group;
use super::{JournalError, Segment, SyncFault, Writer, direct, io_err};

/// The segment appends go to, with its open file.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) seg: Segment,
    pub(super) file: File,
    /// How its appends are written; decided at the first one.
    pub(super) writes: Writes,
}

/// How a segment's appends reach the file.
#[derive(Debug)]
pub(super) enum Writes {
    /// Not decided yet: no append since the file was opened.
    Undecided,
    /// Through the page cache.
    Buffered,
    /// Direct, from the buffer that holds the last partial block; `file`
    /// was opened with `O_DIRECT`.
    Direct(direct::BlockTail),
}

impl Active {
    pub(super) fn new(seg: Segment, file: File) -> Active {
        Active {
            seg,
            file,
            writes: Writes::Undecided,
        }
    }
}

/// Writes a group after the valid records of the active segment (over
/// whatever a reused file held there) and syncs it.
pub(super) fn write_durably(
    active: &mut Active,
    fault: &dyn SyncFault,
    group: Group<'_>,
    group_bytes: usize,
    last: u64,
    writer: &mut Writer,
) -> Result<(), JournalError> {
    if matches!(active.writes, Writes::Undecided) {
        active.writes = decide_writes(active, writer.direct_io)
            .map_err(io_err("open segment for direct writes", &active.seg.path))?;
    }
    let path = &active.seg.path;
    let (bytes, salt) = (active.seg.bytes, active.seg.salt);
    let mut written = match &mut active.writes {
        Writes::Direct(tail) => {
            direct::write_group(tail, &active.file, bytes, group, group_bytes, salt)
        }
        _ => write_buffered(&active.file, bytes, group, group_bytes, salt, writer),
    };
    if let Err(e) = &written
        && matches!(active.writes, Writes::Direct(_))
        && direct::refused(e)
    {
        // Refused before anything was written: the file system takes the
        // flag at open but not the write. Through the page cache, then,
        // for this segment and every later one.
        writer.direct_io = false;
        active.file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open segment", path))?;
        active.writes = Writes::Buffered;
        written = write_buffered(&active.file, bytes, group, group_bytes, salt, writer);
    }
    written.map_err(io_err("write segment", path))?;
    fault.before_sync().map_err(io_err("sync segment", path))?;
    active
        .file
        .sync_data()
        .map_err(io_err("sync segment", path))?;
    active.seg.bytes += group_bytes as u64;
    active.seg.last = last;
    Ok(())
}

/// How the first append to `active` since its file was opened is written:
/// direct if `direct_io` and the file system takes `O_DIRECT` (the file is
/// opened again with it), else through the page cache.
fn decide_writes(active: &mut Active, direct_io: bool) -> io::Result<Writes> {
    if !direct_io {
        return Ok(Writes::Buffered);
    }
    let Some(file) = direct::open(&active.seg.path)? else {
        return Ok(Writes::Buffered);
    };
    let tail = direct::BlockTail::read(&active.seg.path, active.seg.bytes)?;
    active.file = file;
    Ok(Writes::Direct(tail))
}

/// A buffered write of a group at byte `at`: an encoded group as it is
/// if `salt` is 0, else encoded (its CRCs salted) into the writer's
/// buffer first.
fn write_buffered(
    file: &File,
    at: u64,
    group: Group<'_>,
    group_bytes: usize,
    salt: u32,
    writer: &mut Writer,
) -> io::Result<()> {
    if let (Group::Encoded(encoded), 0) = (group, salt) {
        return file.write_all_at(encoded, at);
    }
    let buf = &mut writer.buffered;
    buf.clear();
    group.encode_into(buf, salt, group_bytes)?;
    file.write_all_at(buf, at)
}
