//! The block log: raw-row blocks written once, to append-only segment
//! files (`blocks/NNNNNNNN.blk`), with fjall holding a 20-byte pointer to
//! each under its block key.
//!
//! Why: through fjall, a block was copied into its write batch, serialized
//! into fjall's journal, inserted into a memtable, then written again into
//! a blob file when the memtable flushed. Writing no blocks at all raised a
//! 1M-event run from 277k to 413k events/s (2 runs each): most of that was
//! fjall handling bytes it never needed to index. Blocks are written once
//! and never updated, which is what a log is for.
//!
//! Invariants:
//! - a commit appends its blocks and `fdatasync`s them *before* its fjall
//!   batch (the pointers, and `meta/blocklog_end`) is written, so fjall
//!   never holds a pointer to bytes a power cut can take;
//! - `meta/blocklog_end` (segment, offset) is written in the same batch as
//!   the pointers: at open, whatever lies past it (the blocks of a commit
//!   whose batch was lost) is cut off, so appends resume where the last
//!   durable commit ended;
//! - each block is framed as `len u32 | crc32 u32 | 8 bytes of padding |
//!   bytes | padding to 16` (little-endian), encoded in place in the
//!   staging buffer; a read checks length and CRC against its pointer, and a mismatch is
//!   [`StoreError::Corrupt`], never a panic.
//!
//! Writes bypass the page cache (`O_DIRECT`, `tillstream_journal::direct_io`) where the
//! file system allows it: the last partial 4 KiB block stays staged and is
//! written again with the next frames, zero-padded to a block boundary, so
//! a segment's file may run past the recorded end (open cuts it there).
//! Why: the log is read back only by queries and backups, and copying
//! ~110 bytes an event into new page-cache pages was 3–14% of the server's
//! CPU, the more on a guest whose freed pages go back to its host.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rkyv::util::AlignedVec;

use tillstream_journal::direct_io::{self, BlockTail};
use tillstream_storage::store::StoreError;

/// The directory of the segments, under the store's.
pub(crate) const DIR: &str = "blocks";

/// A segment is closed once it passes this size (a block never spans two).
const SEGMENT_BYTES: u64 = 1 << 30;

/// Bytes before each block: its length and CRC-32, then padding so the
/// block starts 16-aligned (rkyv's archives, which older stores hold, are
/// encoded for that). Frames are padded to a multiple of it too.
const FRAME: usize = 16;

/// What a pointer value starts with, by the format of the block it points
/// to; an inline block (a store written before the block log, or a
/// backup) never is 20 bytes with either prefix.
const MAGIC_RKYV: &[u8; 4] = b"TSB1";
const MAGIC_PACKED: &[u8; 4] = b"TSB2";

/// How a logged block is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockFormat {
    /// An rkyv `Vec<Row>` (stores written before the packed format).
    Rkyv,
    /// The packed format (`packed`).
    Packed,
}

/// Where a block lies: its segment, the offset of its frame, its length,
/// and how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ptr {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) format: BlockFormat,
}

impl Ptr {
    /// The 20-byte value fjall stores for the block.
    pub(crate) fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..4].copy_from_slice(match self.format {
            BlockFormat::Rkyv => MAGIC_RKYV,
            BlockFormat::Packed => MAGIC_PACKED,
        });
        v[4..8].copy_from_slice(&self.segment.to_le_bytes());
        v[8..16].copy_from_slice(&self.offset.to_le_bytes());
        v[16..20].copy_from_slice(&self.len.to_le_bytes());
        v
    }

    /// The pointer in a stored value, or `None` for an inline block.
    pub(crate) fn decode(value: &[u8]) -> Option<Ptr> {
        if value.len() != 20 {
            return None;
        }
        let format = match &value[..4] {
            m if m == MAGIC_RKYV => BlockFormat::Rkyv,
            m if m == MAGIC_PACKED => BlockFormat::Packed,
            _ => return None,
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([value[i], value[i + 1], value[i + 2], value[i + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&value[8..16]);
        Some(Ptr {
            segment: u32_at(4),
            offset: u64::from_le_bytes(off),
            len: u32_at(16),
            format,
        })
    }
}

/// The end of the log: the segment being appended to and its length.
pub(crate) type End = (u32, u64);

/// Encodes an [`End`] for `meta/blocklog_end`.
pub(crate) fn encode_end(end: End) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&end.0.to_be_bytes());
    v[4..].copy_from_slice(&end.1.to_be_bytes());
    v
}

/// Decodes `meta/blocklog_end`.
pub(crate) fn decode_end(v: &[u8]) -> Result<End, StoreError> {
    if v.len() != 12 {
        return Err(StoreError::Corrupt {
            what: "block log end",
            reason: format!("{} bytes instead of 12", v.len()),
        });
    }
    let mut seg = [0u8; 4];
    seg.copy_from_slice(&v[..4]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&v[4..]);
    Ok((u32::from_be_bytes(seg), u64::from_be_bytes(off)))
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.blk"))
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// The segment appended to, and the frames staged for the next write.
#[derive(Debug)]
struct Tail {
    id: u32,
    /// Bytes written to the segment so far: its logical end.
    len: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of the segment known durable.
    synced: u64,
    /// Whether `file` was opened with `O_DIRECT`.
    direct: bool,
    /// The segment's last partial block when direct (written already, to
    /// be written again in front of the next frames; none otherwise), then
    /// the frames staged by the commit under way (written by `sync`).
    staged: BlockTail,
}

impl Tail {
    /// The segment offset of the staged buffer's first byte.
    fn base(&self) -> u64 {
        self.len - self.staged.kept() as u64
    }

    /// Writes everything staged to the segment (direct: from the start of
    /// the kept block, padded, keeping the new last partial block). Does
    /// not sync.
    fn write_out(&mut self) -> Result<(), StoreError> {
        let staged = self.staged.buf().len();
        if staged == self.staged.kept() {
            return Ok(());
        }
        if self.direct {
            match self.staged.write_out(&self.file, self.len) {
                Ok(end) => self.len = end,
                Err(e) if direct_io::refused(&e) => return self.fall_back_and_write_out(),
                Err(e) => return Err(io_err("writing the block log")(e)),
            }
        } else {
            self.file
                .write_all_at(self.staged.buf(), self.len)
                .map_err(io_err("writing the block log"))?;
            start_writeback(&self.file, self.len, staged);
            self.len += staged as u64;
            self.staged.discard();
        }
        Ok(())
    }

    /// The file system took `O_DIRECT` at open but refuses the write:
    /// the segment is opened again for the page cache, and so is every
    /// later one.
    fn fall_back_and_write_out(&mut self) -> Result<(), StoreError> {
        let file = write_options(false)
            .open(&self.path)
            .map_err(io_err("opening the block log"))?;
        self.file = Arc::new(file);
        self.direct = false;
        self.staged.forget_kept();
        self.write_out()
    }
}

/// How a segment is opened for appends (`O_DIRECT` added where taken);
/// `truncate` for a new segment, which nothing points into yet.
fn write_options(truncate: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(truncate);
    o
}

/// Opens a segment for appends, direct if `direct_io` and the file
/// system takes it; returns whether it is.
fn open_segment(path: &Path, truncate: bool, direct_io: bool) -> Result<(File, bool), StoreError> {
    let opts = write_options(truncate);
    if direct_io
        && let Some(file) = direct_io::open(&opts, path).map_err(io_err("opening the block log"))?
    {
        return Ok((file, true));
    }
    Ok((
        opts.open(path).map_err(io_err("opening the block log"))?,
        false,
    ))
}

/// The log (module docs). Appends happen under the store's commit lock;
/// reads from any thread.
#[derive(Debug)]
pub(crate) struct BlockLog {
    dir: PathBuf,
    /// A segment is closed once it would pass this size.
    segment_bytes: u64,
    tail: Mutex<Tail>,
    /// Segments opened for reading, by id.
    readers: RwLock<HashMap<u32, Arc<File>>>,
}

impl BlockLog {
    /// Opens the log in `dir` and cuts it back to `end`, the end the
    /// tables recorded with their last commit (`None`: no block was ever
    /// logged, so any segment is an orphan).
    pub(crate) fn open(dir: &Path, end: Option<End>) -> Result<Self, StoreError> {
        Self::open_with(dir, end, SEGMENT_BYTES, true)
    }

    /// [`BlockLog::open`] with segments of `segment_bytes`, written
    /// through the page cache unless `direct_io`.
    fn open_with(
        dir: &Path,
        end: Option<End>,
        segment_bytes: u64,
        direct_io: bool,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating the block log"))?;
        let (id, len) = end.unwrap_or((0, 0));
        for entry in std::fs::read_dir(dir).map_err(io_err("listing the block log"))? {
            let entry = entry.map_err(io_err("listing the block log"))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".blk"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Written after the last durable commit: nothing points there.
            if n > id {
                std::fs::remove_file(entry.path()).map_err(io_err("cutting the block log"))?;
            }
        }
        let path = segment_path(dir, id);
        let (file, direct) = open_segment(&path, false, direct_io)?;
        let on_disk = file
            .metadata()
            .map_err(io_err("opening the block log"))?
            .len();
        if on_disk < len {
            return Err(StoreError::Corrupt {
                what: "block log",
                reason: format!(
                    "{} holds {on_disk} bytes, the tables point up to {len}",
                    path.display()
                ),
            });
        }
        if on_disk > len {
            file.set_len(len).map_err(io_err("cutting the block log"))?;
            file.sync_data().map_err(io_err("cutting the block log"))?;
        }
        sync_dir(dir)?;
        // A direct write starts at the last partial block: read it back.
        let staged = if direct {
            BlockTail::read(&path, len).map_err(io_err("opening the block log"))?
        } else {
            BlockTail::default()
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            tail: Mutex::new(Tail {
                id,
                len,
                path,
                synced: len,
                file: Arc::new(file),
                direct,
                staged,
            }),
            readers: RwLock::new(HashMap::new()),
        })
    }

    /// Stages a block of `format` for the commit under way and returns
    /// where it will lie once [`BlockLog::sync`] wrote it. Rolls to a new
    /// segment (the frames staged before it written first) when the
    /// current one would pass its size.
    pub(crate) fn stage_as(&self, format: BlockFormat, block: &[u8]) -> Result<Ptr, StoreError> {
        self.stage_pieces(format, &[block])
    }

    /// [`BlockLog::stage_as`] a block given in pieces, written one after
    /// the other (a stock block's header and sections, `packed::stock`,
    /// are never copied into one buffer first).
    pub(crate) fn stage_pieces(
        &self,
        format: BlockFormat,
        pieces: &[&[u8]],
    ) -> Result<Ptr, StoreError> {
        let mut t = self.tail.lock();
        let staged = t.staged.buf();
        let mut start = staged.len();
        staged.extend_from_slice(&[0u8; FRAME]);
        for piece in pieces {
            staged.extend_from_slice(piece);
        }
        let end = staged.len();
        let Ok(len) = u32::try_from(end - start - FRAME) else {
            staged.resize(start, 0);
            return Err(StoreError::Backend {
                op: "logging a block",
                source: format!("a block of {} bytes is over 4 GiB", end - start).into(),
            });
        };
        let crc = crc32fast::hash(&staged[start + FRAME..end]);
        staged[start..start + 4].copy_from_slice(&len.to_le_bytes());
        staged[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        // Every frame starts 16-aligned, as the block inside was encoded.
        staged.resize(end.next_multiple_of(FRAME), 0);
        let staged_end = staged.len() as u64;
        if t.base() + staged_end > self.segment_bytes && t.base() + start as u64 > 0 {
            // This frame opens the next segment; what came before it
            // closes this one.
            let frame = t.staged.buf()[start..].to_vec();
            t.staged.buf().resize(start, 0);
            t.write_out()?;
            t.file
                .sync_data()
                .map_err(io_err("syncing the block log"))?;
            let id = t.id + 1;
            let path = segment_path(&self.dir, id);
            let (next, direct) = open_segment(&path, true, t.direct)?;
            sync_dir(&self.dir)?;
            t.id = id;
            t.len = 0;
            t.synced = 0;
            t.path = path;
            t.file = Arc::new(next);
            t.direct = direct;
            t.staged = BlockTail::default();
            t.staged.buf().extend_from_slice(&frame);
            start = 0;
        }
        Ok(Ptr {
            segment: t.id,
            offset: t.base() + start as u64,
            len,
            format,
        })
    }

    /// [`BlockLog::stage_as`] a packed block.
    pub(crate) fn stage(&self, block: &[u8]) -> Result<Ptr, StoreError> {
        self.stage_as(BlockFormat::Packed, block)
    }

    /// Writes the staged frames to the current segment and syncs it (the
    /// segment written before a roll was synced then); returns the log's
    /// end, for the commit's batch.
    pub(crate) fn sync(&self) -> Result<End, StoreError> {
        let mut t = self.tail.lock();
        Self::write_staged(&mut t)?;
        Ok((t.id, t.len))
    }

    /// Drops frames staged by a commit that failed before `sync`.
    pub(crate) fn discard_staged(&self) {
        self.tail.lock().staged.discard();
    }

    fn write_staged(t: &mut Tail) -> Result<(), StoreError> {
        if t.staged.buf().len() == t.staged.kept() && t.synced == t.len {
            return Ok(());
        }
        t.write_out()?;
        t.file
            .sync_data()
            .map_err(io_err("syncing the block log"))?;
        t.synced = t.len;
        Ok(())
    }

    /// Writes the frames staged so far and starts their writeback without
    /// waiting for it, so the disk works while the rest of the commit is
    /// encoded; [`BlockLog::sync`] then waits only for what is left.
    /// (Measured: the final fdatasync of a 20–55 MB commit took 25–75 ms,
    /// all of it on the engine's one serial step.)
    pub(crate) fn write_behind(&self) -> Result<(), StoreError> {
        self.tail.lock().write_out()
    }

    /// Reads the block at `ptr` into `out`, checking its frame.
    pub(crate) fn read(&self, ptr: Ptr, out: &mut AlignedVec) -> Result<(), StoreError> {
        let file = self.reader(ptr.segment)?;
        let total = FRAME + ptr.len as usize;
        out.clear();
        out.resize(total, 0);
        file.read_exact_at(out.as_mut_slice(), ptr.offset)
            .map_err(|e| StoreError::Corrupt {
                what: "block log",
                reason: format!(
                    "reading {total} bytes at {} of segment {}: {e}",
                    ptr.offset, ptr.segment
                ),
            })?;
        let frame_len = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
        let crc = u32::from_le_bytes([out[4], out[5], out[6], out[7]]);
        if frame_len != ptr.len || crc32fast::hash(&out[FRAME..]) != crc {
            return Err(StoreError::Corrupt {
                what: "block log",
                reason: format!(
                    "the block at {} of segment {} fails its length or checksum",
                    ptr.offset, ptr.segment
                ),
            });
        }
        // Keep the bytes at the start of the aligned buffer.
        out.as_mut_slice().copy_within(FRAME.., 0);
        out.resize(ptr.len as usize, 0);
        Ok(())
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.readers.read().get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.dir, segment)).map_err(|e| {
            StoreError::Corrupt {
                what: "block log",
                reason: format!("segment {segment}: {e}"),
            }
        })?);
        self.readers.write().insert(segment, f.clone());
        Ok(f)
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` back to disk,
/// without waiting (Linux `sync_file_range`; elsewhere a no-op: the final
/// fdatasync does it all). A failure here is harmless: the fdatasync that
/// makes the bytes durable reports any error.
fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)] // one FFI call std does not wrap; see SAFETY
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is open for the call's duration (we hold
        // the file), and sync_file_range reads no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Makes a segment's creation or removal durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the block log directory"))
}

#[cfg(test)]
#[path = "tests_blocklog.rs"]
mod tests;
