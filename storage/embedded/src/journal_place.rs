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

use super::keys::JOURNAL_DIR;
use tillstream_storage::store::StoreError;

/// The mark's file name, in the journal directory and in the store.
pub(crate) const MARK: &str = "JOURNAL_OF";

/// A mark being written, renamed to [`MARK`] once durable.
pub(crate) const MARK_BEING_WRITTEN: &str = "JOURNAL_OF.new";

/// Makes `journal` the journal directory of the store at `store_dir`:
/// `store_dir/wal` becomes a symbolic link to it, durably, with the mark
/// (module docs) on both sides. Returns the directory, made absolute.
/// - Nothing changes if it already is the journal directory; its mark is
///   checked.
/// - The first time, `journal` is created if missing and must be empty
///   (but for a file system's `lost+found`), or hold this store's own
///   journal, moved there with its mark as the refusal below says.
/// - Refused, with what to do: a link to another directory, or one that
///   is missing (a placed store's directory is never created again: an
///   unmounted disk); a journal in `store_dir/wal` itself, which is then
///   marked for its move (moving one is its operator's, with the server
///   stopped: move its files, remove `store_dir/wal`, start again).
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
            // The store's copy of its own mark lost: written again.
            let lost = !store_dir.join(MARK).exists();
            if let Some(mark) = fs::read(now.join(MARK))
                .ok()
                .filter(|m| lost && names(m, store_dir))
            {
                write_mark(&store_dir.join(MARK), &mark)
                    .map_err(io(format!("marking {}", store_dir.display())))?;
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
                // Marked now, on both sides, so that the files moved carry
                // the mark, and a store whose journal is half moved (gone
                // from here, not yet linked) refuses to open.
                mark_in_place(store_dir, &wal).map_err(io(format!("marking {}", wal.display())))?;
                return Err(refuse(format!(
                    "its journal is in {} itself; to move it to {}: stop the server, move all \
                     the files of {} there (its {MARK} too), remove {}, and start again with \
                     the same --journal-dir",
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
    let ours = fs::read(store_dir.join(MARK)).ok();
    if ours.is_none() {
        create_durably(journal).map_err(io(format!(
            "creating the journal directory {}",
            journal.display()
        )))?;
    }
    // A store that was placed before never creates its directory again:
    // one missing is a disk not mounted (module docs).
    let target = fs::canonicalize(journal).map_err(io(format!(
        "its journal was placed in another directory ({MARK} here says so), and {} cannot be \
         reached: is its disk mounted?",
        journal.display()
    )))?;
    let listed: Vec<String> = fs::read_dir(&target)
        .and_then(|d| {
            d.map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .filter(|n: &io::Result<String>| {
                    n.as_ref()
                        .map_or(true, |n| n != "lost+found" && n != MARK_BEING_WRITTEN)
                })
                .collect()
        })
        .map_err(io(format!("reading {}", target.display())))?;
    let theirs = fs::read(target.join(MARK)).ok();
    let only_mark = listed.iter().all(|n| n == MARK);
    let mark = match (theirs, ours) {
        // This store's journal: placed before, or moved here as told.
        (Some(theirs), Some(ours)) if theirs == ours => theirs,
        // Placed once, cut off before the store's copy was written:
        // nothing was appended yet.
        (Some(theirs), None) if only_mark && names(&theirs, store_dir) => theirs,
        (Some(_), _) => {
            return Err(refuse(format!(
                "{} holds another store's journal ({MARK} there names it): give this store a \
                 directory of its own",
                target.display()
            )));
        }
        (None, Some(_)) => {
            return Err(refuse(format!(
                "its journal was placed in another directory ({MARK} here says so), and {} \
                 has no {MARK}: is its disk mounted, or was the journal placed elsewhere?",
                target.display()
            )));
        }
        (None, None) if !listed.is_empty() => {
            return Err(refuse(format!(
                "{} holds files already, and a journal directory belongs to one store: give \
                 this store an empty one (a subdirectory of a mount point, say)",
                target.display()
            )));
        }
        (None, None) => new_mark(store_dir, &target),
    };
    create_durably(store_dir).map_err(io(format!("creating {}", store_dir.display())))?;
    write_mark(&target.join(MARK), &mark).map_err(io(format!("marking {}", target.display())))?;
    write_mark(&store_dir.join(MARK), &mark)
        .map_err(io(format!("marking {}", store_dir.display())))?;
    std::os::unix::fs::symlink(&target, &wal).map_err(io(format!(
        "linking {} to {}",
        wal.display(),
        target.display()
    )))?;
    sync_dir(store_dir).map_err(io(format!("syncing {}", store_dir.display())))?;
    Ok(target)
}

/// Checks that the store's journal is where its mark says and is this
/// store's (module docs), and marks a journal that is not marked yet, so
/// that from then on a journal gone from its place is refused, not
/// started anew. Called by every open of the store, before anything in
/// it is read or written; `existing`: the store was there before (its
/// format file was).
pub(crate) fn check_placed(store_dir: &Path, existing: bool) -> Result<(), StoreError> {
    let wal = store_dir.join(JOURNAL_DIR);
    let io = |what: String| move |e: io::Error| refuse_with(store_dir, format!("{what}: {e}"));
    let marked = match fs::symlink_metadata(store_dir.join(MARK)) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(refuse_with(store_dir, format!("reading its {MARK}: {e}"))),
    };
    match fs::symlink_metadata(&wal) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = linked_dir(store_dir, &wal)?;
            check_mark(store_dir, &target)?;
            not_a_copy(store_dir, &target)
        }
        Ok(_) if marked => check_mark(store_dir, &wal),
        // A journal from before marks: marked now.
        Ok(_) => mark_in_place(store_dir, &wal).map_err(io(format!("marking {}", wal.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if marked || existing {
                let was = fs::read(store_dir.join(MARK)).map_or_else(
                    |_| String::new(),
                    |m| format!(" ({MARK} here: {})", String::from_utf8_lossy(&m).trim()),
                );
                return Err(refuse_with(
                    store_dir,
                    format!(
                        "{} is missing, and a store's journal holds what it acknowledged: \
                         start with --journal-dir naming the directory it was placed or moved \
                         to{was}; only to give up what it held, create an empty {}",
                        wal.display(),
                        wal.display()
                    ),
                ));
            }
            // A new store: its journal directory, marked from the start.
            create_durably(&wal).map_err(io(format!("creating {}", wal.display())))?;
            mark_in_place(store_dir, &wal).map_err(io(format!("marking {}", wal.display())))
        }
        Err(e) => Err(refuse_with(
            store_dir,
            format!("reading {}: {e}", wal.display()),
        )),
    }
}

/// Refuses a copy of a placed store whose link still reaches the
/// original's journal: its mark names another store directory, which is
/// still there and links to the same journal. (A store moved whole, its
/// old directory gone, opens; two open at once are refused by the
/// journal's lock.)
fn not_a_copy(store_dir: &Path, target: &Path) -> Result<(), StoreError> {
    let Ok(mark) = fs::read(target.join(MARK)) else {
        return Ok(());
    };
    let Some(named) = named_store(&mark) else {
        return Ok(());
    };
    let here = fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    let shares = fs::canonicalize(named.join(JOURNAL_DIR)).is_ok_and(|t| t == target);
    if named != here && shares {
        return Err(refuse_with(
            store_dir,
            format!(
                "it is a copy of the store at {}, and its {} still links to that store's \
                 journal {}: give the copy a journal of its own (remove the link, then start \
                 it with another --journal-dir)",
                named.display(),
                JOURNAL_DIR,
                target.display()
            ),
        ));
    }
    Ok(())
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
        (Some(_), None) => Err(refuse_with(
            store_dir,
            format!(
                "its journal directory {} is marked, but this store's copy of the mark \
                 ({MARK}) is missing: start with --journal-dir naming it",
                target.display()
            ),
        )),
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
    let store = fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    format!(
        "{MARK_PREFIX}{}{MARK_STORE_END}{} at {at} ns\n",
        store.display(),
        target.display()
    )
    .into_bytes()
}

const MARK_PREFIX: &str = "tillstream journal of the store at ";
const MARK_STORE_END: &str = ", placed in ";

/// The store directory a mark names, if it is one [`new_mark`] made.
fn named_store(mark: &[u8]) -> Option<PathBuf> {
    let text = std::str::from_utf8(mark).ok()?.strip_prefix(MARK_PREFIX)?;
    Some(PathBuf::from(text.split_once(MARK_STORE_END)?.0))
}

/// Whether `mark` names the store at `store_dir`.
pub(crate) fn names(mark: &[u8], store_dir: &Path) -> bool {
    let here = fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    named_store(mark).is_some_and(|named| named == here)
}

/// Marks a journal that is in `store_dir/wal` itself, on both sides, if
/// it is not marked yet: the files its operator moves then carry it.
fn mark_in_place(store_dir: &Path, wal: &Path) -> io::Result<()> {
    let mark = match fs::read(store_dir.join(MARK)) {
        Ok(mark) => mark,
        Err(_) => new_mark(store_dir, wal),
    };
    write_mark(&wal.join(MARK), &mark)?;
    write_mark(&store_dir.join(MARK), &mark)
}

/// Writes a mark durably: to a new file renamed over the old, so a crash
/// leaves the old mark or the new, never a torn one; nothing if the file
/// holds it already.
fn write_mark(path: &Path, mark: &[u8]) -> io::Result<()> {
    if fs::read(path).is_ok_and(|m| m == mark) {
        return Ok(());
    }
    let tmp = path.with_file_name(MARK_BEING_WRITTEN);
    let mut f = File::create(&tmp)?;
    f.write_all(mark)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => Ok(()),
    }
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
