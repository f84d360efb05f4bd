//! Retiring expired segments: deleted, or kept as spares for later
//! segments to write over (see the module docs of the journal).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::segments::{parse_segment_name, spare_name, sync_dir};
use super::{JournalError, io_err};

/// An expired segment file kept for reuse: `<segment name>.spare`.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) path: PathBuf,
    /// The salt it was last written with.
    pub(super) salt: u32,
}

/// The spare files, shared by the journal (which takes them) and
/// [`Expired`] (which adds them), at most `cap`.
#[derive(Debug)]
pub(super) struct SparePool {
    pub(super) cap: usize,
    pub(super) files: Mutex<Vec<Spare>>,
}

impl SparePool {
    pub(super) fn files(&self) -> MutexGuard<'_, Vec<Spare>> {
        // The list is valid whatever a panicking holder left: every push
        // and pop is whole.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Deletes one segment file and syncs its directory.
pub(super) fn delete_segment(dir: &Path, path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        // Already gone (deleted before a failed directory sync).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("delete segment", path)(e)),
    }
    sync_dir(dir)
}

/// Segments taken off a journal by
/// [`Journal::expire_through`](super::Journal::expire_through), whose files
/// are still to be retired.
#[derive(Debug)]
#[must_use = "expired segments stay on disk until retired"]
pub struct Expired {
    pub(super) dir: PathBuf,
    pub(super) paths: Vec<PathBuf>,
    pub(super) spares: Arc<SparePool>,
}

impl Expired {
    /// How many segments.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Takes the files out of the journal, oldest first, syncing the
    /// directory after each, so that what survives a crash is a
    /// contiguous run: each is renamed to a spare while the journal has
    /// fewer than [`JournalOptions::spare_segments`](super::JournalOptions::spare_segments), deleted otherwise.
    /// Returns how many.
    pub fn retire(self) -> Result<usize, JournalError> {
        for path in &self.paths {
            let spare = spare_name(path);
            // A spare of that name already (LSNs used twice after a
            // rebase): rename would replace it under the pool's feet.
            if self.spares.files().len() < self.spares.cap && !spare.exists() {
                let salt = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .map_or(0, |(_, salt)| salt);
                match fs::rename(path, &spare) {
                    Ok(()) => {}
                    // Already gone (deleted before a failed directory sync).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("retire segment", path)(e)),
                }
                sync_dir(&self.dir)?;
                self.spares.files().push(Spare { path: spare, salt });
            } else {
                delete_segment(&self.dir, path)?;
            }
        }
        Ok(self.paths.len())
    }
}
