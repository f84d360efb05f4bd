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
//! How: an append writes the segment's last partial block again, then
//! the group, zero-padded to the next boundary ([`BlockTail`]), so a torn
//! write cannot damage an acknowledged record. The padding, fewer than
//! [`BLOCK`] zero bytes up to the end of the file, reads as the segment's
//! end (see `segments::scan_segment`), in the last segment and before it.
//!
//! A file system without `O_DIRECT` (some FUSE ones, tmpfs before Linux
//! 6.6) refuses it, at open or at the first write, with `EINVAL`; the
//! journal then writes through the page cache as before, for the rest of
//! its life.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

pub(super) use crate::direct_io::{BLOCK, BlockTail, refused};

use super::group::Group;

/// Opens `path` for direct writes; None if its file system refuses them.
pub(super) fn open(path: &Path) -> io::Result<Option<File>> {
    crate::direct_io::open(OpenOptions::new().write(true), path)
}

/// Writes `group` (`group_bytes` encoded) at byte `bytes` of `file`
/// (opened by [`open`]), its CRCs salted with `salt` if that is not 0,
/// from the start of the block that holds `bytes`: encoded straight into
/// the tail's buffer. Nothing is synced.
pub(super) fn write_group(
    tail: &mut BlockTail,
    file: &File,
    bytes: u64,
    group: Group<'_>,
    group_bytes: usize,
    salt: u32,
) -> io::Result<()> {
    debug_assert_eq!(tail.kept() as u64, bytes % BLOCK as u64);
    group.encode_into(tail.buf(), salt, group_bytes)?;
    tail.write_out(file, bytes).map(drop)
}

/// Whether `tail` (the bytes of a segment from where its valid records
/// end to the end of the file) is the padding of a direct append: fewer
/// than [`BLOCK`] bytes, all zero.
pub(super) fn is_padding(tail: &[u8]) -> bool {
    !tail.is_empty() && tail.len() < BLOCK && tail.iter().all(|&b| b == 0)
}
