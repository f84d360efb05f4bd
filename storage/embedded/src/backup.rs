//! A consistent copy of a live embedded store (`tillstream backup`).
//!
//! The tables are copied as of one fjall snapshot, and the journal records
//! after that snapshot's checkpoint with them: opened (and its journal
//! replayed, as every open by the engine does), the copy holds every batch
//! acknowledged before the backup began, exactly once. The journal lock is
//! held while the snapshot is taken and those records are read, so no
//! segment they live in can be dropped meanwhile; acknowledgements wait
//! that long (the records of one flush interval, a few MiB).

use std::path::Path;

use fjall::{Keyspace, PersistMode, Readable};

use super::{EmbeddedStore, backend_err, keys, open_err};
use tillstream_journal::{ReplayError, encode_record};
use tillstream_storage::store::{BackupInfo, Store, StoreError};

/// Bytes of one write batch of the copy.
const BATCH_BYTES: usize = 8 << 20;

impl EmbeddedStore {
    /// Copies the store into `dest`, a directory that does not exist or is
    /// empty, while the store keeps serving. See the module documentation.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, StoreError> {
        if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
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
pub(super) mod tests {
    use super::*;
    use tillstream_storage::Query;
    use tillstream_storage::rows::Table;
    use tillstream_storage::testkit::sample;

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
        let report = tillstream_storage::verify::verify(&copy, None)?;
        assert!(report.ok, "{report:?}");
        Ok(())
    }

    #[test]
    fn a_backup_never_writes_into_a_directory_that_holds_something()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(&dir.path().join("live"))?;
        let dest = dir.path().join("backup");
        std::fs::create_dir_all(&dest)?;
        std::fs::write(dest.join("keep.txt"), b"mine")?;
        let err = store.backup_to(&dest).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("not empty")),
            "{err:?}"
        );
        assert_eq!(std::fs::read(dest.join("keep.txt"))?, b"mine");
        Ok(())
    }

    /// A live store with records 1..=4 journaled, 1..=2 in the tables, and
    /// a backup of it; returns the live store (kept open), the backup and
    /// what the backup said.
    pub(crate) fn backed_up(
        dir: &Path,
    ) -> Result<(EmbeddedStore, std::path::PathBuf, BackupInfo), StoreError> {
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
}
