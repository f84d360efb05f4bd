//! Where the journal lives: `store/wal`, or a directory elsewhere (another
//! disk) that `store/wal` is a symbolic link to, so that every tool that
//! opens the store (`verify`, `query`, `backup`, recovery) finds it without
//! being told.
//!
//! Why elsewhere: an acknowledgement waits for the journal's append and
//! nothing else (ARCHITECTURE.md, "One event, device to disk"), so the
//! journal's disk sets the ack latency, while the tables' writes are
//! large, come in bursts and are off the ack path. A disk that stalls
//! writes for a few hundred milliseconds stalls every ack with it
//! (`tillstream check-disk` measures one).
//!
//! A journal elsewhere can be missing where a journal in the store cannot:
//! its disk not mounted, leaving an empty mount point. Opened as it is,
//! such a directory would read as a journal with nothing past the
//! checkpoint, and every batch acknowledged since would be lost without a
//! word. So a placed journal carries a mark, a file naming its store that
//! the store keeps a copy of, and the store refuses to open a linked
//! journal whose mark is missing or another's; and no directory behind a
//! link is ever created again.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::data_format;
use super::keys::JOURNAL_DIR;
use crate::store::StoreError;

/// The mark's file name, in the journal directory and in the store.
pub(crate) const MARK: &str = "JOURNAL_OF";

/// Makes `journal` the journal directory of the store at `store_dir`:
/// `store_dir/wal` becomes a symbolic link to it, durably, with the mark
/// (module docs) on both sides. Returns the directory, made absolute.
/// - Nothing changes if it already is the journal directory; its mark is
///   checked.
/// - The first time, `journal` is created if missing. It must be empty,
///   or hold a journal its operator moved there from this store: journal
///   files and no mark of another store, for a store that exists.
/// - Refused, with what to do: a link to another directory, or one that
///   is missing (never created again: an unmounted disk); a journal in
///   `store_dir/wal` itself (moving one is its operator's, with the server
///   stopped: move the files, remove `store_dir/wal`, start again).
pub fn place_journal(store_dir: &Path, journal: &Path) -> Result<PathBuf, StoreError> {
    let refuse = |reason: String| refuse_with(store_dir, reason);
    let io = |what: String| move |e: io::Error| refuse_with(store_dir, format!("{what}: {e}"));
    let wal = store_dir.join(JOURNAL_DIR);
    match fs::symlink_metadata(&wal) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let now = linked_dir(store_dir, &wal)?;
            let asked = fs::canonicalize(journal).map_err(io(format!(
                "the journal is in {} ({} links there), and {} cannot be reached",
                now.display(),
                wal.display(),
                journal.display()
            )))?;
            if now != asked {
                return Err(refuse(format!(
                    "its journal is in {} ({} links there), not in {}: to move it, stop the \
                     server, move the files, and point the link at the new directory",
                    now.display(),
                    wal.display(),
                    asked.display()
                )));
            }
            check_mark(store_dir, &now)?;
            return Ok(now);
        }
        Ok(meta) if meta.is_dir() => {
            if fs::canonicalize(journal).is_ok_and(|j| fs::canonicalize(&wal).is_ok_and(|w| w == j))
            {
                // The journal's own place, named: nothing to do.
                return fs::canonicalize(&wal).map_err(io(format!("resolving {}", wal.display())));
            }
            if !is_empty(&wal).map_err(io(format!("reading {}", wal.display())))? {
                return Err(refuse(format!(
                    "its journal is in {} itself; to move it to {}: stop the server, move the \
                     files of {} there, remove {}, and start again with the same --journal-dir",
                    wal.display(),
                    journal.display(),
                    wal.display(),
                    wal.display()
                )));
            }
            // A journal with no segment (all of it checkpointed): nothing
            // to move, the journal continues after the checkpoint.
            fs::remove_dir(&wal).map_err(io(format!("removing the empty {}", wal.display())))?;
        }
        Ok(_) => {
            return Err(refuse(format!(
                "{} is neither a directory nor a link",
                wal.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(format!("reading {}: {e}", wal.display()))),
    }
    create_durably(journal).map_err(io(format!(
        "creating the journal directory {}",
        journal.display()
    )))?;
    let target = fs::canonicalize(journal).map_err(io(format!(
        "resolving the journal directory {}",
        journal.display()
    )))?;
    let listed: Vec<String> = fs::read_dir(&target)
        .and_then(|d| {
            d.map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .map_err(io(format!("reading {}", target.display())))?;
    let theirs = fs::read(target.join(MARK)).ok();
    let ours = fs::read(store_dir.join(MARK)).ok();
    let mark = match (theirs, ours) {
        (Some(theirs), Some(ours)) if theirs == ours => theirs,
        (Some(_), _) => {
            return Err(refuse(format!(
                "{} holds another store's journal ({} there names it): give this store a \
                 directory of its own",
                target.display(),
                MARK
            )));
        }
        (None, _) if !listed.is_empty() => {
            let journal_files = listed
                .iter()
                .all(|n| n.ends_with(".wal") || n.ends_with(".spare"));
            let store_exists = store_dir.join(data_format::FILE).exists();
            if !(journal_files && store_exists) {
                return Err(refuse(format!(
                    "{} holds files already, and a journal directory belongs to one store: \
                     give this store an empty one (or, for this store's own journal moved \
                     there, only its .wal and .spare files)",
                    target.display()
                )));
            }
            new_mark(store_dir, &target)
        }
        (None, _) => new_mark(store_dir, &target),
    };
    fs::create_dir_all(store_dir).map_err(io(format!("creating {}", store_dir.display())))?;
    write_durably(&target.join(MARK), &mark)
        .map_err(io(format!("marking {}", target.display())))?;
    write_durably(&store_dir.join(MARK), &mark)
        .map_err(io(format!("marking {}", store_dir.display())))?;
    std::os::unix::fs::symlink(&target, &wal).map_err(io(format!(
        "linking {} to {}",
        wal.display(),
        target.display()
    )))?;
    sync_dir(store_dir).map_err(io(format!("syncing {}", store_dir.display())))?;
    Ok(target)
}

/// Checks, when the store's journal is placed elsewhere, that it is there
/// and is this store's (module docs); a journal in `store_dir/wal` itself
/// needs nothing. Called by every open of the store, before anything in
/// it is read or written.
pub(crate) fn check_placed(store_dir: &Path) -> Result<(), StoreError> {
    let wal = store_dir.join(JOURNAL_DIR);
    match fs::symlink_metadata(&wal) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = linked_dir(store_dir, &wal)?;
            check_mark(store_dir, &target)
        }
        _ => Ok(()),
    }
}

/// Where the journal of the store at `store_dir` is: the directory
/// `store_dir/wal` links to, or `store_dir/wal` itself.
pub fn journal_dir(store_dir: &Path) -> PathBuf {
    let wal = store_dir.join(JOURNAL_DIR);
    fs::canonicalize(&wal).unwrap_or(wal)
}

/// The directory `wal` links to; refused where it cannot be reached.
fn linked_dir(store_dir: &Path, wal: &Path) -> Result<PathBuf, StoreError> {
    fs::canonicalize(wal).map_err(|e| {
        let to = fs::read_link(wal).map_or_else(|_| "?".into(), |t| t.display().to_string());
        refuse_with(
            store_dir,
            format!(
                "its journal directory {to} ({} links there) cannot be reached ({e}): is its \
                 disk mounted? The acknowledged batches not yet in the tables are there",
                wal.display()
            ),
        )
    })
}

/// Refuses a journal directory whose mark is missing or not the store's.
fn check_mark(store_dir: &Path, target: &Path) -> Result<(), StoreError> {
    let theirs = fs::read(target.join(MARK)).ok();
    let ours = fs::read(store_dir.join(MARK)).ok();
    match (theirs, ours) {
        (Some(theirs), Some(ours)) if theirs == ours => Ok(()),
        (None, _) => Err(refuse_with(
            store_dir,
            format!(
                "its journal directory {} has no {MARK} file: is its disk mounted? (an empty \
                 mount point would read as a journal with nothing to replay, losing what was \
                 acknowledged)",
                target.display()
            ),
        )),
        _ => Err(refuse_with(
            store_dir,
            format!(
                "its journal directory {} is another store's ({MARK} there does not match {} \
                 here)",
                target.display(),
                store_dir.join(MARK).display()
            ),
        )),
    }
}

/// A mark for the store at `store_dir`: its path and the time, unique
/// enough to tell two stores' journals apart.
fn new_mark(store_dir: &Path, target: &Path) -> Vec<u8> {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "tillstream journal of the store at {}, placed in {} at {at} ns\n",
        store_dir.display(),
        target.display()
    )
    .into_bytes()
}

/// Creates `dir` and its missing parents, each durably (the parent of
/// each created directory synced), as the journal creates its own.
fn create_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(d).or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn refuse_with(store_dir: &Path, reason: String) -> StoreError {
    StoreError::Open {
        path: store_dir.display().to_string(),
        reason,
    }
}

fn is_empty(dir: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(dir)?.next().is_none())
}

#[cfg(test)]
#[path = "tests_journal_place.rs"]
mod tests;
