//! A consistent copy of a live embedded store (`tillstream backup`).
//!
//! The tables are copied as of one fjall snapshot, and the journal records
//! after that snapshot's checkpoint with them: opened (and its journal
//! replayed, as every open by the engine does), the copy holds every batch
//! acknowledged before the backup began, exactly once. The journal lock is
//! held while the snapshot is taken and those records are read, so no
//! segment they live in can be dropped meanwhile; acknowledgements wait
//! that long (the records of one flush interval, a few MiB).

use std::fs;
use std::path::{Path, PathBuf};

use fjall::{Keyspace, PersistMode, Readable};

use super::journal_place::{self, MARK, place_journal};
use super::keys::JOURNAL_DIR;
use super::{EmbeddedStore, backend_err, keys, open_err};
use crate::journal::{JOURNAL_LOCK, ReplayError, encode_record};
use crate::store::{BackupInfo, Store, StoreError};

/// Bytes of one write batch of the copy.
const BATCH_BYTES: usize = 8 << 20;

impl EmbeddedStore {
    /// Copies the store into `dest`, a directory that does not exist or is
    /// empty, while the store keeps serving. See the module documentation.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, StoreError> {
        if fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
            return Err(open_err(dest, "the backup directory is not empty"));
        }
        let (snapshot, checkpoint, records, last) = {
            let journal = self.journal.lock();
            let snapshot = self.db.snapshot();
            let checkpoint = match snapshot
                .get(&self.meta, keys::CHECKPOINT)
                .map_err(|e| backend_err("reading the checkpoint", e))?
            {
                Some(v) => {
                    u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        what: "checkpoint lsn",
                        reason: format!("{} bytes instead of 8", v.len()),
                    })?)
                }
                None => 0,
            };
            let (mut records, mut last) = (Vec::new(), checkpoint);
            journal
                .replay(checkpoint, &mut |lsn, payload: &[u8]| {
                    encode_record(lsn, &[payload], &mut records);
                    last = lsn;
                    Ok::<(), StoreError>(())
                })
                .map_err(|e| match e {
                    ReplayError::Callback(e) => e,
                    ReplayError::Journal(e) => StoreError::Corrupt {
                        what: "journal",
                        reason: e.to_string(),
                    },
                })?;
            (snapshot, checkpoint, records, last)
        };

        let mut info = BackupInfo {
            checkpoint,
            journal_records: last - checkpoint,
            keys: 0,
            bytes: 0,
        };
        {
            // Opening makes the keyspaces with the options of a live
            // store; the copy then fills them.
            let copy = EmbeddedStore::open(dest)?;
            // Blocks are copied whole into the copy's keyspace (a backup
            // stands alone; the copy's own log starts empty).
            copy_keyspace(
                &snapshot,
                &self.blocks,
                &copy,
                &copy.blocks,
                &mut info,
                &|k, v| self.block_bytes(k, v),
            )?;
            for (from, to) in [
                (&self.levels, &copy.levels),
                (&self.rollups, &copy.rollups),
                (&self.marks, &copy.marks),
                (&self.batches, &copy.batches),
                (&self.meta, &copy.meta),
            ] {
                copy_keyspace(
                    &snapshot,
                    from,
                    &copy,
                    to,
                    &mut info,
                    &|_, v| Ok(v.to_vec()),
                )?;
            }
            // Its blocks are inline: it has no log for an end to point into.
            copy.meta
                .remove(keys::BLOCKLOG_END)
                .map_err(|e| backend_err("writing the backup", e))?;
            copy.db
                .persist(PersistMode::SyncAll)
                .map_err(|e| backend_err("syncing the backup", e))?;
        }
        // Reopened, the copy reads the checkpoint it now holds, and its
        // journal continues after it.
        let copy = EmbeddedStore::open(dest)?;
        if last > checkpoint {
            copy.journal_append(&records, last)?;
        }
        Ok(info)
    }
}

/// Copies a backup (a directory [`EmbeddedStore::backup_to`] wrote) into
/// `store_dir`, which must not exist yet: `tillstream restore` opens it
/// after, which replays the backup's journal. With `journal`, the journal
/// is placed there first, as `serve --journal-dir` places it
/// (`journal_place`), and the backup's records are copied into it, so the
/// restored store journals on that disk from its first open; returns that
/// directory. The backup's marks and journal lock stay behind: they are
/// the backup's, and the restored store is marked as its own (by the
/// placement, or at its first open).
pub fn restore_files(
    backup: &Path,
    store_dir: &Path,
    journal: Option<&Path>,
) -> Result<Option<PathBuf>, StoreError> {
    if !backup.join(JOURNAL_DIR).is_dir() {
        return Err(open_err(backup, "not a backup (no wal/ in it)"));
    }
    if fs::symlink_metadata(store_dir).is_ok() {
        return Err(open_err(
            store_dir,
            "it already exists: restore into a data directory without a store",
        ));
    }
    fs::create_dir_all(store_dir).map_err(|e| open_err(store_dir, e))?;
    let copied = copy_backup(backup, store_dir, journal);
    if copied.is_err() {
        // Nothing else has it: a second try starts where this one did.
        let _ = fs::remove_dir_all(store_dir);
    }
    copied
}

/// [`restore_files`] once `store_dir` exists.
fn copy_backup(
    backup: &Path,
    store_dir: &Path,
    journal: Option<&Path>,
) -> Result<Option<PathBuf>, StoreError> {
    let copying =
        |e: std::io::Error| open_err(store_dir, format!("copying {}: {e}", backup.display()));
    let placed = journal.map(|j| place_journal(store_dir, j)).transpose()?;
    let to_wal = store_dir.join(JOURNAL_DIR);
    let theirs = |name: &std::ffi::OsStr| {
        name == MARK || name == journal_place::MARK_BEING_WRITTEN || name == JOURNAL_LOCK
    };
    copy_tree(&backup.join(JOURNAL_DIR), &to_wal, &theirs).map_err(copying)?;
    for entry in fs::read_dir(backup).map_err(copying)? {
        let entry = entry.map_err(copying)?;
        let name = entry.file_name();
        if name == JOURNAL_DIR || name == MARK {
            continue;
        }
        let dest = store_dir.join(&name);
        if entry.file_type().map_err(copying)?.is_dir() {
            copy_tree(&entry.path(), &dest, &|_| false).map_err(copying)?;
        } else {
            fs::copy(entry.path(), &dest).map_err(copying)?;
        }
    }
    Ok(placed)
}

/// Copies the files and directories of `from` into `to` (created if
/// missing), but for the files `skip` names.
fn copy_tree(
    from: &Path,
    to: &Path,
    skip: &dyn Fn(&std::ffi::OsStr) -> bool,
) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest, skip)?;
        } else if !skip(&entry.file_name()) {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// What a copy stores for a value it read under a key (a block log
/// pointer becomes the block).
type ValueOf<'a> = dyn Fn(&[u8], &[u8]) -> Result<Vec<u8>, StoreError> + 'a;

fn copy_keyspace(
    snapshot: &fjall::Snapshot,
    from: &Keyspace,
    copy: &EmbeddedStore,
    to: &Keyspace,
    info: &mut BackupInfo,
    value_of: &ValueOf<'_>,
) -> Result<(), StoreError> {
    let mut batch = copy.db.batch();
    let mut batch_bytes = 0;
    for guard in snapshot.iter(from) {
        let (key, value) = guard
            .into_inner()
            .map_err(|e| backend_err("reading for the backup", e))?;
        let value = value_of(&key, &value)?;
        batch_bytes += key.len() + value.len();
        info.keys += 1;
        info.bytes += (key.len() + value.len()) as u64;
        batch.insert(to, key, value);
        if batch_bytes >= BATCH_BYTES {
            batch
                .commit()
                .map_err(|e| backend_err("writing the backup", e))?;
            batch = copy.db.batch();
            batch_bytes = 0;
        }
    }
    batch
        .commit()
        .map_err(|e| backend_err("writing the backup", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Query;
    use crate::rows::Table;
    use crate::testutil::sample;

    fn counts(q: &dyn Query) -> Result<Vec<usize>, StoreError> {
        Table::ALL
            .iter()
            .map(|&t| {
                let mut n = 0;
                q.scan(t, &mut |_| n += 1)?;
                Ok(n)
            })
            .collect()
    }

    /// The copy holds the tables as of the snapshot and the journal records
    /// after its checkpoint, which a replay turns into the rest.
    #[test]
    fn a_backup_holds_the_tables_and_the_journal_after_their_checkpoint()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (store, dest, info) = backed_up(dir.path())?;
        assert_eq!((info.checkpoint, info.journal_records), (2, 2));
        assert!(info.keys > 0);
        // The live store goes on; the copy does not see what follows.
        let mut more = Vec::new();
        encode_record(5, &[b"record 5"], &mut more);
        store.journal_append(&more, 5)?;

        let copy = EmbeddedStore::open(&dest)?;
        assert_eq!(copy.materialized_lsn()?, 2);
        assert_eq!(copy.journal_last_lsn(), 4);
        let mut replayed = Vec::new();
        copy.journal_replay(2, &mut |lsn, payload| {
            replayed.push((lsn, payload.to_vec()));
            Ok(())
        })?;
        assert_eq!(
            replayed,
            vec![(3, b"record 3".to_vec()), (4, b"record 4".to_vec())]
        );
        assert_eq!(counts(&copy)?, counts(&store)?);
        let report = crate::verify::verify(&copy, None)?;
        assert!(report.ok, "{report:?}");
        Ok(())
    }

    #[test]
    fn a_backup_never_writes_into_a_directory_that_holds_something()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(&dir.path().join("live"))?;
        let dest = dir.path().join("backup");
        fs::create_dir_all(&dest)?;
        fs::write(dest.join("keep.txt"), b"mine")?;
        let err = store.backup_to(&dest).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("not empty")),
            "{err:?}"
        );
        assert_eq!(fs::read(dest.join("keep.txt"))?, b"mine");
        Ok(())
    }

    /// A live store with records 1..=4 journaled, 1..=2 in the tables, and
    /// a backup of it; returns the live store (kept open), the backup and
    /// what the backup said.
    fn backed_up(dir: &Path) -> Result<(EmbeddedStore, PathBuf, BackupInfo), StoreError> {
        let store = EmbeddedStore::open(&dir.join("live"))?;
        let mut buf = Vec::new();
        for lsn in 1..=4 {
            encode_record(lsn, &[format!("record {lsn}").as_bytes()], &mut buf);
        }
        store.journal_append(&buf, 4)?;
        store.materialize(std::slice::from_ref(&sample()), 2)?;
        store.sync_materialized()?;
        let backup = dir.join("backup");
        let info = store.backup_to(&backup)?;
        Ok((store, backup, info))
    }

    /// Every file under `dir` and its bytes.
    fn files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
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
}
