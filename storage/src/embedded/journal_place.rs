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

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::keys::JOURNAL_DIR;
use crate::store::StoreError;

/// Makes `journal` (created if missing) the journal directory of the
/// store at `store_dir` (created if missing): `store_dir/wal` becomes a
/// symbolic link to it, durably. Returns the directory, made absolute.
/// Nothing changes if it already is the journal directory. Refused,
/// changing nothing on disk but the directories it creates:
/// - a store whose journal is elsewhere already: `store_dir/wal` links to
///   another directory, or is a directory that holds files. Moving a
///   journal is its operator's work, with the server stopped;
/// - a `journal` that holds files while the store has no journal there:
///   a journal directory belongs to one store.
pub fn place_journal(store_dir: &Path, journal: &Path) -> Result<PathBuf, StoreError> {
    let refuse = |reason: String| refuse_with(store_dir, reason);
    let io = |what: String| move |e: io::Error| refuse_with(store_dir, format!("{what}: {e}"));
    fs::create_dir_all(journal).map_err(io(format!(
        "creating the journal directory {}",
        journal.display()
    )))?;
    let target = fs::canonicalize(journal).map_err(io(format!(
        "resolving the journal directory {}",
        journal.display()
    )))?;
    let wal = store_dir.join(JOURNAL_DIR);
    match fs::symlink_metadata(&wal) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let now = fs::canonicalize(&wal).map_err(io(format!(
                "{} is a link to a journal directory that cannot be reached",
                wal.display()
            )))?;
            if now == target {
                return Ok(target);
            }
            return Err(refuse(format!(
                "its journal is in {} ({} links there), not in {}: to move it, stop the server, \
                 move the files, and point the link at the new directory",
                now.display(),
                wal.display(),
                target.display()
            )));
        }
        Ok(meta) if meta.is_dir() => {
            if !is_empty(&wal).map_err(io(format!("reading {}", wal.display())))? {
                return Err(refuse(format!(
                    "its journal is in {} itself; to move it to {}: stop the server, move the \
                     files there, remove {} and start again",
                    wal.display(),
                    target.display(),
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
    if !is_empty(&target).map_err(io(format!("reading {}", target.display())))? {
        return Err(refuse(format!(
            "{} holds files already, and a journal directory belongs to one store: give this \
             store an empty one",
            target.display()
        )));
    }
    fs::create_dir_all(store_dir).map_err(io(format!("creating {}", store_dir.display())))?;
    std::os::unix::fs::symlink(&target, &wal).map_err(io(format!(
        "linking {} to {}",
        wal.display(),
        target.display()
    )))?;
    File::open(store_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", store_dir.display())))?;
    Ok(target)
}

/// Where the journal of the store at `store_dir` is: the directory
/// `store_dir/wal` links to, or `store_dir/wal` itself.
pub fn journal_dir(store_dir: &Path) -> PathBuf {
    let wal = store_dir.join(JOURNAL_DIR);
    fs::canonicalize(&wal).unwrap_or(wal)
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
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::store::Store;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_new_store_journals_where_it_is_told_and_keeps_it_there() -> TestResult {
        let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let store_dir = tmp.path().join("store");
        let journal = elsewhere.path().join("wal");
        let placed = place_journal(&store_dir, &journal)?;
        assert_eq!(placed, fs::canonicalize(&journal)?);
        assert!(
            fs::symlink_metadata(store_dir.join("wal"))?
                .file_type()
                .is_symlink()
        );
        // The store opened as every tool opens it writes its journal there.
        {
            let store = EmbeddedStore::open(&store_dir)?;
            store.journal_append(&record(1), 1)?;
        }
        assert!(
            !is_empty(&journal)?,
            "the segment is in the journal directory"
        );
        assert_eq!(journal_dir(&store_dir), placed);
        // Again with the same directory: nothing to do.
        assert_eq!(place_journal(&store_dir, &journal)?, placed);
        let store = EmbeddedStore::open(&store_dir)?;
        assert_eq!(
            store.journal_last_lsn(),
            1,
            "the record is read back through the link"
        );
        Ok(())
    }

    #[test]
    fn a_journal_is_not_moved_or_shared_by_a_flag() -> TestResult {
        let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
        // A store that journals in store/wal itself.
        let store_dir = tmp.path().join("store");
        EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
        let other = elsewhere.path().join("wal");
        let err = place_journal(&store_dir, &other)
            .err()
            .ok_or("moved a journal")?;
        assert!(err.to_string().contains("itself; to move it"), "{err}");
        assert!(
            fs::symlink_metadata(store_dir.join("wal"))?.is_dir(),
            "left as it was"
        );
        // A second store may not take a directory that holds a journal.
        let second = tmp.path().join("second");
        place_journal(&second, &other)?;
        EmbeddedStore::open(&second)?.journal_append(&record(1), 1)?;
        let third = tmp.path().join("third");
        let err = place_journal(&third, &other)
            .err()
            .ok_or("shared a journal")?;
        assert!(err.to_string().contains("belongs to one store"), "{err}");
        assert!(!third.join("wal").exists());
        // Nor may the second store's journal be pointed somewhere else.
        let err = place_journal(&second, &elsewhere.path().join("new"))
            .err()
            .ok_or("relinked a journal")?;
        assert!(err.to_string().contains("links there"), "{err}");
        Ok(())
    }

    #[test]
    fn an_empty_journal_directory_of_the_store_gives_way_to_the_link() -> TestResult {
        let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let store_dir = tmp.path().join("store");
        fs::create_dir_all(store_dir.join("wal"))?;
        place_journal(&store_dir, elsewhere.path())?;
        assert!(
            fs::symlink_metadata(store_dir.join("wal"))?
                .file_type()
                .is_symlink()
        );
        Ok(())
    }

    fn record(lsn: u64) -> Vec<u8> {
        let mut out = Vec::new();
        crate::journal::encode_record(lsn, &[b"a batch"], &mut out);
        out
    }
}
