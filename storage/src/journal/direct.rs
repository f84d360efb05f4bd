//! The journal's appends that bypass the page cache (`O_DIRECT`, see
//! `crate::direct_io`).
//!
//! Why: a buffered append copies its group into the page cache, and its
//! `fdatasync` then finds and writes back those dirty pages. Written
//! straight from the journal's buffer, the same append (86 KB, then
//! `fdatasync`, on this ext4 over virtio) took about half the CPU: 38–42
//! µs against 67–76 µs, with a lower wall time too. The journal is read
//! back only at open and by a backup, so the cache had nothing to give.
//!
//! How: a direct write starts and ends on a block boundary, from an
//! aligned buffer. The journal keeps in memory the bytes of the segment's
//! last, partial block; an append writes that block again, then the
//! group, zero-padded to the next boundary. The rewritten prefix is the
//! same bytes the disk holds, so a torn write cannot damage an
//! acknowledged record in it: whatever mix of old and new sectors lands,
//! the prefix reads the same. The padding, fewer than [`BLOCK`] zero bytes
//! up to the end of the file, reads as the segment's end (see
//! `segments::scan_segment`), in the last segment and before it.
//!
//! A file system without `O_DIRECT` (some FUSE ones, tmpfs before Linux
//! 6.6) refuses it, at open or at the first write, with `EINVAL`; the
//! journal then writes through the page cache as before, for the rest of
//! its life.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rkyv::util::AlignedVec;

pub(super) use crate::direct_io::{BLOCK, refused};

use super::format::salt_crcs_in_place;

/// Opens `path` for direct writes; None if its file system refuses them.
pub(super) fn open(path: &Path) -> io::Result<Option<File>> {
    crate::direct_io::open(OpenOptions::new().write(true), path)
}

/// The aligned buffer of a segment's direct appends, holding the bytes of
/// its last partial block between appends.
#[derive(Debug)]
pub(super) struct DirectTail {
    buf: AlignedVec<BLOCK>,
}

impl DirectTail {
    /// The tail of a segment whose valid records end at `bytes`: the
    /// bytes of the last partial block, read back from `path`.
    pub(super) fn read(path: &Path, bytes: u64) -> io::Result<DirectTail> {
        let kept = (bytes % BLOCK as u64) as usize;
        let mut buf = AlignedVec::<BLOCK>::with_capacity(BLOCK);
        buf.resize(kept, 0);
        if kept > 0 {
            File::open(path)?.read_exact_at(buf.as_mut_slice(), bytes - kept as u64)?;
        }
        Ok(DirectTail { buf })
    }

    /// Writes `group` at byte `bytes` of `file` (opened by [`open`]),
    /// its CRCs salted with `salt` if that is not 0, in one write from
    /// the start of the block that holds `bytes`. Nothing is synced.
    pub(super) fn write(
        &mut self,
        file: &File,
        bytes: u64,
        group: &[u8],
        salt: u32,
    ) -> io::Result<()> {
        let kept = self.buf.len();
        debug_assert_eq!(kept as u64, bytes % BLOCK as u64);
        let start = bytes - kept as u64;
        self.buf.extend_from_slice(group);
        if salt != 0 {
            salt_crcs_in_place(&mut self.buf.as_mut_slice()[kept..], salt);
        }
        let end = self.buf.len();
        self.buf.resize(end.next_multiple_of(BLOCK), 0);
        let written = crate::direct_io::write_at(file, self.buf.as_slice(), start);
        // Kept for the next append whatever happened: a failed write
        // poisons the journal (or, refused, drops this tail), so the
        // bytes only matter once this one succeeded.
        let last_block = end - end % BLOCK;
        self.buf.as_mut_slice().copy_within(last_block..end, 0);
        self.buf.resize(end - last_block, 0);
        written
    }
}

/// Whether `tail` (the bytes of a segment from where its valid records
/// end to the end of the file) is the padding of a direct append: fewer
/// than [`BLOCK`] bytes, all zero.
pub(super) fn is_padding(tail: &[u8]) -> bool {
    !tail.is_empty() && tail.len() < BLOCK && tail.iter().all(|&b| b == 0)
}
