//! A store made from a backup (`tillstream restore`): the backup's files
//! copied into a new store directory, its journal optionally placed on
//! another disk first, as `serve --journal-dir` places it
//! (`journal_place`). Opening the copy then replays the backup's journal.
//!
//! The backup's marks and journal lock stay behind: they name the backup's
//! directory, and the restored store is marked as its own (by the
//! placement, or at its first open). A restore that fails removes what it
//! made, the new store directory and what it put in the journal directory,
//! so a second try starts as the first did; it never writes into, or
//! removes, a store or a journal that was there before.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::journal_place::{MARK, MARK_BEING_WRITTEN, place_journal};
use super::keys::JOURNAL_DIR;
use super::open_err;
use tillstream_journal::JOURNAL_LOCK;
use tillstream_storage::store::StoreError;

/// A file system's own directory in its root, which counts as nothing.
const LOST_FOUND: &str = "lost+found";

/// The directory of a backup that holds the server's credentials beside
/// the store (the engine writes and restores it): never copied into the
/// store, where secret keys would sit where nothing lists or reads them.
pub const CREDENTIALS_DIR: &str = "credentials";

/// Copies the backup at `backup` (a directory `EmbeddedStore::backup_to`
/// wrote) into `store_dir`, which must not exist. With `journal`, a
/// directory that is missing or empty, the journal is placed there and the
/// backup's records copied into it; returns that directory. Every file is
/// synced before this returns.
pub fn restore_files(
    backup: &Path,
    store_dir: &Path,
    journal: Option<&Path>,
) -> Result<Option<PathBuf>, StoreError> {
    if !backup.join(JOURNAL_DIR).is_dir() {
        return Err(open_err(backup, "not a backup (no wal/ in it)"));
    }
    if let Some(journal) = journal {
        check_journal_dir(backup, journal)?;
    }
    if let Some(parent) = store_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| open_err(store_dir, e))?;
    }
    // Created here or refused: a store that appeared since any check is
    // never written into (nor removed below).
    fs::create_dir(store_dir).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => open_err(
            store_dir,
            "it already exists: restore into a data directory without a store",
        ),
        _ => open_err(store_dir, e),
    })?;
    let mut placed = None;
    let copied = copy_backup(backup, store_dir, journal, &mut placed);
    if copied.is_err() {
        let _ = fs::remove_dir_all(store_dir);
        if let Some(dir) = &placed {
            // Empty before (checked above): all in it is this restore's.
            let _ = empty_dir(dir);
        }
    }
    copied.map(|()| placed)
}

/// Refuses a journal directory that holds anything (but `lost+found`), or
/// lies inside the backup (it would be copied into the store too).
fn check_journal_dir(backup: &Path, journal: &Path) -> Result<(), StoreError> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let real = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| absolute(p));
    if absolute(journal).starts_with(absolute(backup)) || real(journal).starts_with(real(backup)) {
        return Err(open_err(
            journal,
            format!(
                "the journal directory is inside the backup {}",
                backup.display()
            ),
        ));
    }
    match fs::read_dir(journal) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| open_err(journal, e))?;
                if entry.file_name() != LOST_FOUND {
                    return Err(open_err(
                        journal,
                        "the journal directory is not empty: restore needs a new or empty one",
                    ));
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(open_err(journal, e)),
    }
}

/// [`restore_files`] once `store_dir` is made; `placed` is set as soon as
/// the journal is placed.
fn copy_backup(
    backup: &Path,
    store_dir: &Path,
    journal: Option<&Path>,
    placed: &mut Option<PathBuf>,
) -> Result<(), StoreError> {
    let copying = |e: io::Error| open_err(store_dir, format!("copying {}: {e}", backup.display()));
    if let Some(journal) = journal {
        *placed = Some(place_journal(store_dir, journal)?);
    }
    let theirs = |name: &OsStr| name == MARK || name == MARK_BEING_WRITTEN || name == JOURNAL_LOCK;
    let to_wal = store_dir.join(JOURNAL_DIR);
    copy_tree(&backup.join(JOURNAL_DIR), &to_wal, &theirs).map_err(copying)?;
    sync_dir(&to_wal).map_err(copying)?;
    for entry in fs::read_dir(backup).map_err(copying)? {
        let entry = entry.map_err(copying)?;
        let name = entry.file_name();
        if name == JOURNAL_DIR || name == CREDENTIALS_DIR || theirs(&name) {
            continue;
        }
        let dest = store_dir.join(&name);
        if entry.file_type().map_err(copying)?.is_dir() {
            copy_tree(&entry.path(), &dest, &|_| false).map_err(copying)?;
        } else {
            copy_file(&entry.path(), &dest).map_err(copying)?;
        }
    }
    sync_dir(store_dir).map_err(copying)
}

/// Copies the files and directories of `from` into `to` (created if
/// missing), but for the files `skip` names, each synced.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&OsStr) -> bool) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest, skip)?;
            sync_dir(&dest)?;
        } else if !skip(&entry.file_name()) {
            copy_file(&entry.path(), &dest)?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    fs::copy(from, to)?;
    File::open(to)?.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes everything in `dir` but `lost+found`.
fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == LOST_FOUND {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
#[path = "tests_restore.rs"]
mod tests;
