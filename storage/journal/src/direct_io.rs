//! Writes that bypass the page cache (`O_DIRECT`), shared by the journal
//! and the embedded store's block log: both append bytes that are read
//! back rarely (at open, by a backup, by a query of old hours), so the
//! page cache had nothing to give them, and filling it cost a copy and,
//! on a guest whose freed pages go back to its host, a fault per new page.
//!
//! A direct write starts and ends on a block boundary, from an aligned
//! buffer; each writer keeps its file's last partial block in memory and
//! writes it again with what follows ([`BlockTail`]). A file system without `O_DIRECT`
//! refuses it with `EINVAL`, at open or at the first write, and the
//! writer falls back to the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rkyv::util::AlignedVec;

/// The unit of a direct write: its offset, length and buffer address are
/// multiples of it. 4 KiB covers devices of 512-byte and 4 KiB logical
/// blocks; one that needs more refuses the write, and the writer falls
/// back to the page cache.
pub const BLOCK: usize = 4096;

/// Whether `e` is a file system's refusal of `O_DIRECT` (rather than a
/// failure of the disk, which the writer reports).
pub fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Opens `path` as `options` say, plus `O_DIRECT`; None if its file
/// system refuses it, or on a system without the flag (macOS has none:
/// the writers use the page cache there).
pub fn open(options: &OpenOptions, path: &Path) -> io::Result<Option<File>> {
    #[cfg(any(test, feature = "fault-injection"))]
    if refuse::take_open() {
        return Ok(None);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if refused(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (options, path);
        Ok(None)
    }
}

/// Writes `buf` at `offset` of a file opened by [`open`]: all of it, or
/// an error.
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(any(test, feature = "fault-injection"))]
    if refuse::take() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    file.write_all_at(buf, offset)
}

/// A direct writer's buffer: the file's last partial block (already on
/// disk), then the bytes appended since. [`BlockTail::write_out`] writes
/// both from the start of that block, zero-padded to the next, and keeps
/// the new last partial block. The rewritten prefix is the bytes the disk
/// holds, so a torn write cannot damage what was written before: whatever
/// mix of old and new sectors lands, the prefix reads the same.
#[derive(Debug, Default)]
pub struct BlockTail {
    buf: AlignedVec<BLOCK>,
    /// Bytes of the last partial block at the start of `buf`.
    kept: usize,
}

impl BlockTail {
    /// The tail of a file whose data ends at `end`: its last partial
    /// block, read back from `path`.
    pub fn read(path: &Path, end: u64) -> io::Result<BlockTail> {
        let kept = (end % BLOCK as u64) as usize;
        let mut buf = AlignedVec::<BLOCK>::with_capacity(BLOCK);
        buf.resize(kept, 0);
        if kept > 0 {
            File::open(path)?.read_exact_at(buf.as_mut_slice(), end - kept as u64)?;
        }
        Ok(BlockTail { buf, kept })
    }

    /// Bytes of the last partial block held: the file's data end modulo
    /// [`BLOCK`].
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// The kept block, then what was appended: append here (block-aligned,
    /// so bytes may be encoded in place).
    pub fn buf(&mut self) -> &mut AlignedVec<BLOCK> {
        &mut self.buf
    }

    /// Drops what was appended since the last write.
    pub fn discard(&mut self) {
        self.buf.resize(self.kept, 0);
    }

    /// Forgets the kept block, leaving what was appended: for a writer
    /// that falls back to the page cache and writes at the data end.
    pub fn forget_kept(&mut self) {
        self.buf.as_mut_slice().copy_within(self.kept.., 0);
        let appended = self.buf.len() - self.kept;
        self.buf.resize(appended, 0);
        self.kept = 0;
    }

    /// Writes the kept block and what was appended to `file` (opened by
    /// [`open`]), whose data ends at `end`; returns the new end. On an
    /// error nothing is kept of this write: the buffer is as it was.
    pub fn write_out(&mut self, file: &File, end: u64) -> io::Result<u64> {
        let len = self.buf.len();
        let start = end - self.kept as u64;
        self.buf.resize(len.next_multiple_of(BLOCK), 0);
        if let Err(e) = write_at(file, &self.buf, start) {
            self.buf.resize(len, 0);
            return Err(e);
        }
        let last_block = len - len % BLOCK;
        self.buf.as_mut_slice().copy_within(last_block..len, 0);
        self.kept = len - last_block;
        self.buf.resize(self.kept, 0);
        Ok(start + len as u64)
    }
}

/// Fault injection for tests: no file system on these machines refuses
/// `O_DIRECT` (ext4 and bindfs take it, and tmpfs since Linux 6.6), so
/// tests make the next opens or writes of their own thread refuse it, as
/// such a file system would (`EINVAL`).
#[cfg(any(test, feature = "fault-injection"))]
pub mod refuse {
    use std::cell::Cell;

    thread_local! {
        static WRITES: Cell<u32> = const { Cell::new(0) };
        static OPENS: Cell<u32> = const { Cell::new(0) };
    }

    /// The next `n` direct writes of this thread are refused.
    pub fn next_writes(n: u32) {
        WRITES.with(|c| c.set(n));
    }

    /// The next `n` opens with `O_DIRECT` of this thread are refused.
    pub fn next_opens(n: u32) {
        OPENS.with(|c| c.set(n));
    }

    fn take_one(c: &Cell<u32>) -> bool {
        let n = c.get();
        c.set(n.saturating_sub(1));
        n > 0
    }

    /// Whether this write is refused (and one fewer is to be).
    pub(super) fn take() -> bool {
        WRITES.with(take_one)
    }

    /// Whether this open is refused (and one fewer is to be).
    pub(super) fn take_open() -> bool {
        OPENS.with(take_one)
    }
}
