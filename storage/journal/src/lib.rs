//! The write-ahead journal: an append-only sequence of opaque records, each
//! with a 64-bit LSN (log sequence number) the caller assigns, kept in
//! segment files under one directory. It is the durable step an
//! acknowledgement waits for: [`Journal::append`] returns Ok only once the
//! bytes are written and `fdatasync`ed.
//!
//! # Record format
//!
//! Every integer is little-endian. A segment file is a sequence of
//! records, with no file header. A direct append (`O_DIRECT`, see
//! `direct`) leaves fewer than 4096 zero bytes after the last record, up to
//! the end of the file; they read as the end of the segment, and the next
//! append writes over them:
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0..4 | `len u32` | payload bytes, 1 to [`MAX_RECORD_PAYLOAD`] (64 MiB); anything else is invalid |
//! | 4..8 | `crc u32` | CRC-32 (crc32fast) of the 8 LSN bytes, then the payload, XORed with the segment's salt |
//! | 8..16 | `lsn u64` | the record's LSN |
//! | 16..16+len | payload | the caller's bytes |
//!
//! A segment is named after the first LSN it holds, zero-padded to 20
//! digits, with the extension `.wal` (`00000000000000000001.wal`): a new
//! file, whose salt is 0. A reused file carries its salt, 8 hex digits,
//! in its name (`00000000000000000001-9f3a01c2.wal`). Files named
//! `<segment name>.spare` are spares; other files in the directory are
//! ignored.
//!
//! # Spares
//!
//! Expired segments ([`Journal::expire_through`], [`Expired::retire`])
//! are renamed to spares, up to [`JournalOptions::spare_segments`], and
//! deleted past that. A new segment takes a spare if there is one and
//! writes over it: its blocks are allocated and written already, so an
//! append's `fdatasync` changes no file system metadata and does not wait
//! for a commit of ext4's journal, which also carries the tables' new
//! blocks (at 300 k events/s the append p50 went from 0.5 to 0.25 ms, and
//! p999 from 25 to 10 ms). A spare is renamed under a new random salt,
//! never its old one, so what it held (old records, and record-like bytes
//! inside their payloads, which devices chose) fails the CRC and reads as
//! the end of the segment; the salt is not visible outside the server.
//!
//! # Invariants
//!
//! - LSNs are contiguous: within a segment each record is the previous
//!   one + 1, the first record of a segment carries the segment's name,
//!   and each segment starts right after the previous one ends. LSN 0 is
//!   never a record: an empty journal has `last_lsn` 0 (or its base).
//! - A record is acknowledged (its append returned Ok) only after
//!   `write_all` and `sync_data` of its segment (direct or not: the sync
//!   also flushes the device's cache), and, for the first record
//!   of a segment, after the fsync of the directory that made the new file
//!   durable. One append is one write and one sync.
//! - Only the last segment can end in a torn record: a segment stops
//!   growing only when an append to the next one starts, which happens
//!   only after every earlier append succeeded. So [`Journal::open`] cuts
//!   the last segment at its first invalid record (a power cut mid-append;
//!   nothing acknowledged follows it). An earlier segment may go on past
//!   its valid records (a reused file's old bytes) only if the next
//!   segment starts right after them; any other invalid record fails open
//!   with [`JournalError::Corrupt`], rather than skip acknowledged data.
//! - The cut is made durable (truncate, then fsync) before any append, and
//!   redoing it is a no-op, so an interrupted open is simply opened again.
//! - Any I/O error in an append or a truncation poisons the journal: every
//!   later append fails with [`JournalError::Poisoned`]. A failed fsync is
//!   never retried, as the kernel may have dropped the dirty pages it
//!   reported on; the process restarts and recovers from what is on disk.
//! - Segments are retired (deleted or renamed to spares) oldest first,
//!   with a directory fsync after each, so a crash mid-way leaves a
//!   contiguous run of segments. A spare becomes a segment by a rename
//!   made durable before the first append to it.
//!
//! One caveat of cutting at the first invalid record: a bit flipped on the
//! disk in an acknowledged record of the last segment also reads as a torn
//! tail, and the records after it are dropped with it. Telling the two
//! apart would need a second copy; the CRC only tells that the record is
//! wrong.

mod direct;
pub mod direct_io;
mod fault;
mod format;
mod group;
mod retire;
mod segments;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_crash;
#[cfg(test)]
mod tests_direct;
#[cfg(test)]
mod tests_records;
#[cfg(test)]
mod tests_spares;
mod write;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use fault::{FailSyncAfter, RealSync, SyncFault};
pub use format::{MAX_RECORD_PAYLOAD, RECORD_HEADER, encode_record, split_records};
use format::{SegmentReader, Step};
use group::Group;
pub use group::{JournalRecords, encode_records};
pub use retire::Expired;
use retire::{Spare, SparePool, delete_segment};
use segments::{create_segment, ensure_dir, recover, reuse_spare};
use write::{Active, write_durably};

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file system call failed.
    #[error("journal: {op} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A segment holds an invalid record where acknowledged data must be,
    /// or the segments do not hold contiguous LSNs.
    #[error("journal: corrupt segment {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the invalid record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier append or truncation failed; nothing more is accepted
    /// until the process restarts and reopens the journal.
    #[error(
        "the journal is poisoned after an earlier failed write or sync ({0}); restart to recover"
    )]
    Poisoned(String),
    /// The group given to [`Journal::append`] is not whole records with
    /// the next LSNs; nothing was written and the journal is unchanged.
    #[error("journal: invalid append: {0}")]
    InvalidAppend(String),
    /// Another open journal holds the directory: two stores (a copy that
    /// kept its link to another's journal) or two processes.
    #[error(
        "journal: {0} is open in another process, or by another store (a copy of a store \
         whose store/wal still links to the original's journal?)"
    )]
    InUse(PathBuf),
}

/// Wraps an OS error with what was being done and where.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An error of [`Journal::replay`]: the journal's, or the callback's as is.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The callback returned this error; replay stopped there.
    #[error("the journal replay callback failed")]
    Callback(#[source] E),
}

/// Options of a [`Journal`].
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// An append starts a new segment once the current one holds at least
    /// this many bytes (so a segment exceeds it by at most one group).
    pub segment_bytes: u64,
    /// How many expired segment files are kept, renamed, to be written
    /// over as later segments instead of deleted and created anew.
    pub spare_segments: usize,
    /// Appends bypass the page cache (`O_DIRECT`) where the file system
    /// allows it, and go through it where it does not (see `direct`).
    pub direct_io: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            spare_segments: 2,
            direct_io: true,
        }
    }
}

/// One segment file as the journal knows it.
#[derive(Debug)]
struct Segment {
    /// The LSN in its name: of its first record, once it has one.
    first: u64,
    /// LSN of its last valid record; `first - 1` while empty.
    last: u64,
    /// Bytes of valid records: where the next append writes. The file
    /// may be longer: a torn tail of a failed append, or, in a reused
    /// file, what it held before.
    bytes: u64,
    /// XORed into the CRC of each record: 0 in a new file, random in a
    /// reused one (its name carries it).
    salt: u32,
    path: PathBuf,
}

impl Segment {
    fn empty(first: u64, salt: u32, path: PathBuf) -> Segment {
        Segment {
            first,
            last: first.saturating_sub(1),
            bytes: 0,
            salt,
            path,
        }
    }
}

/// The segment files of the directory, oldest first.
#[derive(Debug)]
struct Segments {
    dir: PathBuf,
    /// Every segment before the current one.
    closed: VecDeque<Segment>,
    /// The last segment, None only while the journal has no segment.
    current: Option<Active>,
    /// Set by [`Journal::set_base`] above the last record: the next append
    /// deletes every segment first, so that LSNs stay contiguous.
    rebase: bool,
}

/// The journal's state besides its segments that appends need.
#[derive(Debug)]
struct Writer {
    spares: Arc<SparePool>,
    /// A group encoded for a write through the page cache (a group of
    /// records not encoded yet, or one whose CRCs a reused segment salts).
    buffered: rkyv::util::AlignedVec<{ direct::BLOCK }>,
    /// Whether appends try `O_DIRECT`: the option, until the file system
    /// refuses it once.
    direct_io: bool,
}

/// The write-ahead journal. See the module documentation.
#[derive(Debug)]
pub struct Journal {
    segs: Segments,
    writer: Writer,
    opts: JournalOptions,
    fault: Box<dyn SyncFault>,
    last_lsn: u64,
    poisoned: Option<String>,
    cut_at_open: u64,
    /// The directory's lock, held until the journal is dropped.
    _lock: File,
}

/// The lock file in a journal's directory (a name segments never have).
pub const JOURNAL_LOCK: &str = "LOCK";

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, cutting a torn
    /// tail off the last segment. See the module documentation.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        Journal::open_with_fault(dir, opts, Box::new(RealSync))
    }

    /// [`open`](Journal::open), with a hook around the data syncs.
    pub fn open_with_fault(
        dir: &Path,
        opts: JournalOptions,
        fault: Box<dyn SyncFault>,
    ) -> Result<Journal, JournalError> {
        ensure_dir(dir)?;
        // Held while the journal is open. The store's directory has a lock
        // of its own (fjall's), but a journal placed on another disk can
        // be reached from two stores: a copy keeps the link.
        let lock_path = dir.join(JOURNAL_LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open the journal's lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::InUse(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err("lock the journal", &lock_path)(e));
            }
        }
        let (segs, cut_at_open, mut spares) = recover(dir)?;
        // Spares past the cap (a smaller cap than the last run's) go.
        for spare in spares.drain(spares.len().min(opts.spare_segments)..) {
            delete_segment(dir, &spare.path)?;
        }
        let last_lsn = segs.current.as_ref().map_or(0, |a| a.seg.last);
        let writer = Writer {
            spares: Arc::new(SparePool {
                cap: opts.spare_segments,
                files: Mutex::new(spares),
            }),
            buffered: rkyv::util::AlignedVec::new(),
            direct_io: opts.direct_io,
        };
        Ok(Journal {
            segs,
            writer,
            opts,
            fault,
            last_lsn,
            poisoned: None,
            cut_at_open,
            _lock: lock,
        })
    }

    /// The LSN of the last valid record, or the value given to
    /// [`set_base`](Journal::set_base) / 0 if the journal is empty.
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// The LSN the journal starts at: its oldest segment's first record
    /// (or, when that segment is empty, the record it waits for); `None`
    /// with no segment. Every LSN from it to [`last_lsn`](Self::last_lsn)
    /// is in the journal.
    pub fn first_lsn(&self) -> Option<u64> {
        self.segs.iter().next().map(|s| s.first)
    }

    /// Raises [`last_lsn`](Journal::last_lsn) to `lsn`: the next record
    /// must be `lsn + 1`. For a journal that forgot its last LSN (every
    /// segment deleted) while the caller's checkpoint knows it. A lower
    /// `lsn` does nothing.
    ///
    /// `lsn` must be covered by the caller's checkpoint: if the journal
    /// still holds records (all of them at most `lsn` then), the next
    /// append deletes every segment before it starts a new one named
    /// `lsn + 1`, as a gap in the LSNs would read as corruption. Not
    /// durable until that append: reopened before it, the journal has its
    /// old last LSN.
    pub fn set_base(&mut self, lsn: u64) {
        if lsn > self.last_lsn {
            self.last_lsn = lsn;
            self.segs.rebase = true;
        }
    }

    /// Appends `encoded`: one or more whole records made by
    /// [`encode_record`], with LSNs `last_lsn + 1`, `+ 2`, ... in order,
    /// the last being `last`. Returns Ok only once they are durable.
    ///
    /// Starts a new segment first if the current one holds at least
    /// `segment_bytes`. An empty `encoded` is Ok and does nothing. A group
    /// that is not such records fails with [`JournalError::InvalidAppend`]
    /// and changes nothing; any other error poisons the journal, and every
    /// later append fails with [`JournalError::Poisoned`].
    pub fn append(&mut self, encoded: &[u8], last: u64) -> Result<(), JournalError> {
        self.append_group(Group::Encoded(encoded), last)
    }

    /// [`append`](Journal::append) of records not yet encoded: each is
    /// encoded once, into the buffer the write goes out from (`group`
    /// module docs). The same checks, errors and durability.
    pub fn append_records(
        &mut self,
        records: &dyn JournalRecords,
        last: u64,
    ) -> Result<(), JournalError> {
        self.append_group(Group::Records(records), last)
    }

    fn append_group(&mut self, group: Group<'_>, last: u64) -> Result<(), JournalError> {
        self.check_poisoned()?;
        let Some((first, bytes)) = group.check(self.last_lsn, last)? else {
            return Ok(());
        };
        let writer = &mut self.writer;
        let written = self
            .segs
            .active_for(first, self.opts.segment_bytes, &writer.spares)
            .and_then(|active| write_durably(active, &*self.fault, group, bytes, last, writer));
        match written {
            Ok(()) => {
                self.last_lsn = last;
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Calls `f(lsn, payload)` for every record with an LSN above `after`,
    /// in LSN order, up to the last durable append. Reads one segment at a
    /// time through a buffer, checking every CRC again. Returns the number
    /// of records `f` was called with; stops at the first error of `f`.
    pub fn replay<E>(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, ReplayError<E>> {
        let mut visited = 0;
        for seg in self.segs.iter().filter(|s| s.last > after) {
            let mut reader = SegmentReader::open(&seg.path, seg.first, seg.salt, Some(seg.bytes))?;
            loop {
                match reader.step(after)? {
                    Step::Record(lsn) => {
                        f(lsn, reader.payload()).map_err(ReplayError::Callback)?;
                        visited += 1;
                    }
                    Step::Skipped(_) => {}
                    Step::End => break,
                    // The segment was valid at open or written since: it
                    // changed under us.
                    Step::Bad(reason) => {
                        let (path, offset) = (seg.path.clone(), reader.offset());
                        return Err(JournalError::Corrupt {
                            path,
                            offset,
                            reason,
                        }
                        .into());
                    }
                }
            }
        }
        Ok(visited)
    }

    /// Deletes, oldest first, every segment whose records all have an LSN
    /// at most `lsn`, never the current one. Returns how many were
    /// deleted. For records checkpointed elsewhere. An I/O error poisons
    /// the journal. ([`Journal::expire_through`] does the same without
    /// holding the journal while the files go.)
    pub fn truncate_through(&mut self, lsn: u64) -> Result<usize, JournalError> {
        let expired = self.expire_through(lsn)?;
        expired.retire().map_err(|e| self.poison(e))
    }

    /// Takes every segment whose records all have an LSN at most `lsn`
    /// (never the current one) off the journal, and returns them for
    /// [`Expired::retire`], which needs no access to the journal: appends
    /// need not wait while the file system frees them (unlinking a 64 MiB
    /// segment took 60–70 ms on ext4 with `discard`, and every
    /// acknowledgement waited behind it). Until they are deleted, a crash
    /// leaves them in place, older than and contiguous with the rest, so
    /// open reads them as before.
    ///
    /// Callers delete what each call returns before the next call's, in
    /// call order: a later run deleted first would leave a gap if a crash
    /// came between. Nothing is taken while a rebase is pending
    /// ([`Journal::set_base`]): the next append deletes every segment.
    pub fn expire_through(&mut self, lsn: u64) -> Result<Expired, JournalError> {
        self.check_poisoned()?;
        let mut expired = Expired {
            dir: self.segs.dir.clone(),
            paths: Vec::new(),
            spares: Arc::clone(&self.writer.spares),
        };
        if self.segs.rebase {
            return Ok(expired);
        }
        let n = self
            .segs
            .closed
            .iter()
            .take_while(|s| s.last <= lsn)
            .count();
        expired.paths = self.segs.closed.drain(..n).map(|s| s.path).collect();
        Ok(expired)
    }

    /// Poisons the journal after a failure of its files outside it (an
    /// [`Expired::retire`]): every later append fails.
    pub fn poison_with(&mut self, e: JournalError) -> JournalError {
        self.poison(e)
    }

    /// Bytes of valid records in all segment files (for metrics).
    pub fn disk_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.bytes).sum()
    }

    /// How many spare files wait to be reused as segments.
    pub fn spare_files(&self) -> usize {
        self.writer.spares.files().len()
    }

    /// Whether an earlier error poisoned the journal.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Bytes [`open`](Journal::open) cut off the end of the last segment
    /// (a torn or invalid tail, or, in a reused file, the rest of what it
    /// held before); 0 if there was none.
    pub fn cut_at_open(&self) -> u64 {
        self.cut_at_open
    }

    fn check_poisoned(&self) -> Result<(), JournalError> {
        match &self.poisoned {
            Some(why) => Err(JournalError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: JournalError) -> JournalError {
        self.poisoned = Some(e.to_string());
        e
    }
}

impl Segments {
    fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.closed
            .iter()
            .chain(self.current.as_ref().map(|a| &a.seg))
    }

    /// The segment a group starting at `first` goes to: the current one,
    /// or a new one (a spare reused, else a new file) if there is none, a
    /// rebase is pending, or the current one is full. A full segment is
    /// never empty: an empty one already carries the name `first` (its
    /// last LSN came from its name).
    fn active_for(
        &mut self,
        first: u64,
        segment_bytes: u64,
        spares: &SparePool,
    ) -> Result<&mut Active, JournalError> {
        if self.rebase {
            if let Some(old) = self.current.take() {
                self.closed.push_back(old.seg);
            }
            self.delete_oldest(self.closed.len())?;
            self.rebase = false;
        }
        let full = |a: &Active| a.seg.bytes > 0 && a.seg.bytes >= segment_bytes;
        match self.current.take() {
            Some(active) if !full(&active) => Ok(self.current.insert(active)),
            old => {
                // A spare that cannot be renamed (deleted by hand, say)
                // is dropped and a new file made: nothing changed on disk.
                let reused = match spares.files().pop() {
                    Some(spare) => reuse_spare(&self.dir, &spare, first),
                    None => Ok(None),
                };
                let made = match reused {
                    Ok(Some(active)) => Ok(active),
                    Ok(None) => create_segment(&self.dir, first),
                    Err(e) => Err(e),
                };
                let new = match made {
                    Ok(new) => new,
                    Err(e) => {
                        self.current = old;
                        return Err(e);
                    }
                };
                if let Some(old) = old {
                    self.closed.push_back(old.seg);
                }
                Ok(self.current.insert(new))
            }
        }
    }

    /// Deletes the `n` oldest closed segments, syncing the directory after
    /// each so that what survives a crash is always a contiguous run.
    fn delete_oldest(&mut self, n: usize) -> Result<(), JournalError> {
        for _ in 0..n {
            let Some(seg) = self.closed.front() else {
                break;
            };
            delete_segment(&self.dir, &seg.path)?;
            self.closed.pop_front();
        }
        Ok(())
    }
}
