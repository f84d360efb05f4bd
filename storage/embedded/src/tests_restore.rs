//! Tests of `restore_files`: where the journal goes, whose marks it
//! carries, and what a refused or failed restore leaves behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::super::backup::tests::backed_up;
use super::super::journal_place;
use super::*;
use crate::EmbeddedStore;
use tillstream_storage::store::Store;

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push((path.clone(), fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// The journal records after 2 of the restored store at `store_dir`.
fn restored_records(store_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let copy = EmbeddedStore::open(store_dir)?;
    assert_eq!(copy.materialized_lsn()?, 2);
    let mut lsns = Vec::new();
    copy.journal_replay(2, &mut |lsn, payload| {
        assert_eq!(payload, format!("record {lsn}").as_bytes());
        lsns.push(lsn);
        Ok(())
    })?;
    Ok(lsns)
}

#[test]
fn a_restore_puts_the_journal_where_it_is_told_and_marks_it_its_own()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (_live, backup, _) = backed_up(dir.path())?;
    let before = files(&backup)?;

    let store_dir = dir.path().join("restored/store");
    let journal = dir.path().join("fast/wal");
    let placed = restore_files(&backup, &store_dir, Some(&journal))?;
    assert_eq!(placed, Some(fs::canonicalize(&journal)?));
    assert!(fs::symlink_metadata(store_dir.join(JOURNAL_DIR))?.is_symlink());
    assert_eq!(restored_records(&store_dir)?, [3, 4]);
    assert!(
        fs::read_dir(&journal)?
            .any(|e| e.is_ok_and(|e| e.path().extension() == Some("wal".as_ref()))),
        "the segments are in the placed directory"
    );
    // Marked as the restored store's, on both sides, not the backup's.
    for mark in [journal.join(MARK), store_dir.join(MARK)] {
        assert!(
            journal_place::names(&fs::read(&mark)?, &store_dir),
            "{}",
            mark.display()
        );
    }
    assert_eq!(files(&backup)?, before, "the backup is left as it was");

    // Without a journal directory, in store/wal, marked its own too.
    let plain = dir.path().join("plain/store");
    assert_eq!(restore_files(&backup, &plain, None)?, None);
    assert_eq!(restored_records(&plain)?, [3, 4]);
    assert!(journal_place::names(
        &fs::read(plain.join(JOURNAL_DIR).join(MARK))?,
        &plain
    ));
    Ok(())
}

#[test]
fn a_refused_restore_leaves_no_store_behind() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (_live, backup, _) = backed_up(dir.path())?;
    // A journal directory that holds something else.
    let busy = dir.path().join("busy");
    fs::create_dir_all(&busy)?;
    fs::write(busy.join("keep.txt"), b"mine")?;
    let store_dir = dir.path().join("restored/store");
    let err = restore_files(&backup, &store_dir, Some(&busy)).err();
    assert!(err.is_some());
    assert!(!store_dir.exists(), "{err:?}");
    assert_eq!(fs::read(busy.join("keep.txt"))?, b"mine");
    // Then into an empty one; a second restore into it is refused.
    restore_files(&backup, &store_dir, Some(&dir.path().join("empty")))?;
    let again = restore_files(&backup, &store_dir, None)
        .err()
        .map(|e| e.to_string());
    assert!(
        again
            .as_deref()
            .is_some_and(|e| e.contains("already exists")),
        "{again:?}"
    );
    assert_eq!(restored_records(&store_dir)?, [3, 4]);
    // Not a backup at all.
    let err = restore_files(&busy, &dir.path().join("x/store"), None)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("not a backup")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn a_restore_that_fails_after_placing_its_journal_leaves_nothing_behind()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (_live, backup, _) = backed_up(dir.path())?;
    // A file of the backup that cannot be read: the copy fails after the
    // journal was placed and its records copied.
    std::os::unix::fs::symlink(dir.path().join("gone"), backup.join("zz-dangling"))?;
    let store_dir = dir.path().join("restored/store");
    let journal = dir.path().join("fast/wal");
    fs::create_dir_all(journal.join(LOST_FOUND))?;
    let err = restore_files(&backup, &store_dir, Some(&journal)).err();
    assert!(err.is_some());
    assert!(!store_dir.exists(), "{err:?}");
    let left: Vec<_> = fs::read_dir(&journal)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(left, [LOST_FOUND], "only what was there before");
    // A second try, once the backup is whole again, restores.
    fs::remove_file(backup.join("zz-dangling"))?;
    restore_files(&backup, &store_dir, Some(&journal))?;
    assert_eq!(restored_records(&store_dir)?, [3, 4]);
    // A journal directory inside the backup is refused before anything.
    let inside = restore_files(
        &backup,
        &dir.path().join("x/store"),
        Some(&backup.join("wal2")),
    );
    let inside = inside.err().map(|e| e.to_string());
    assert!(
        inside
            .as_deref()
            .is_some_and(|e| e.contains("inside the backup")),
        "{inside:?}"
    );
    assert!(!dir.path().join("x/store").exists() && !backup.join("wal2").exists());
    Ok(())
}

/// The credentials a backup carries beside the store (`credentials/`)
/// are the engine's to place in the data directory: none of them is
/// copied into the store, where a secret would sit unlisted.
#[test]
fn a_restore_leaves_the_credentials_beside_the_store_out_of_it()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (_live, backup, _) = backed_up(dir.path())?;
    fs::create_dir_all(backup.join("credentials/auth"))?;
    fs::write(backup.join("credentials/auth/signing.key"), b"secret")?;
    let store_dir = dir.path().join("restored/store");
    restore_files(&backup, &store_dir, None)?;
    assert!(!store_dir.join("credentials").exists());
    assert_eq!(restored_records(&store_dir)?, [3, 4]);
    Ok(())
}
