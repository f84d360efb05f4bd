//! Writes that bypass the page cache (`O_DIRECT`), shared by the journal
//! and the embedded store's block log: both append bytes that are read
//! back rarely (at open, by a backup, by a query of old hours), so the
//! page cache had nothing to give them, and filling it cost a copy and,
//! on a guest whose freed pages go back to its host, a fault per new page.
//!
//! A direct write starts and ends on a block boundary, from an aligned
//! buffer; each writer keeps its file's last partial block in memory and
//! writes it again with what follows. A file system without `O_DIRECT`
//! refuses it with `EINVAL`, at open or at the first write, and the
//! writer falls back to the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The unit of a direct write: its offset, length and buffer address are
/// multiples of it. 4 KiB covers devices of 512-byte and 4 KiB logical
/// blocks; one that needs more refuses the write, and the writer falls
/// back to the page cache.
pub(crate) const BLOCK: usize = 4096;

/// Whether `e` is a file system's refusal of `O_DIRECT` (rather than a
/// failure of the disk, which the writer reports).
pub(crate) fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Opens `path` as `options` say, plus `O_DIRECT`; None if its file
/// system refuses it, or on a system without the flag (macOS has none:
/// the writers use the page cache there).
pub(crate) fn open(options: &OpenOptions, path: &Path) -> io::Result<Option<File>> {
    #[cfg(test)]
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
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(test)]
    if refuse::take() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    file.write_all_at(buf, offset)
}

/// Fault injection for tests: no file system on these machines refuses
/// `O_DIRECT` (ext4 and bindfs take it, and tmpfs since Linux 6.6), so
/// tests make the next opens or writes of their own thread refuse it, as
/// such a file system would (`EINVAL`).
#[cfg(test)]
pub(crate) mod refuse {
    use std::cell::Cell;

    thread_local! {
        static WRITES: Cell<u32> = const { Cell::new(0) };
        static OPENS: Cell<u32> = const { Cell::new(0) };
    }

    /// The next `n` direct writes of this thread are refused.
    pub(crate) fn next_writes(n: u32) {
        WRITES.with(|c| c.set(n));
    }

    /// The next `n` opens with `O_DIRECT` of this thread are refused.
    pub(crate) fn next_opens(n: u32) {
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
