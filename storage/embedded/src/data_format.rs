//! The data directory's format version: a file `FORMAT` beside the
//! tables, holding one line, `tillstream data format N`.
//!
//! A build reads every format up to its own [`DATA_FORMAT`] and refuses a
//! directory of a newer one, before it touches anything in it: an older
//! build that opened a newer directory would misread what it does not know
//! (a build from before salted journal segments skips them, and with them
//! acknowledged batches), and its recovery would then write over them.
//!
//! Opening a directory of an older format, or one from before this file
//! existed (every such directory is format 1), first makes `FORMAT` say
//! [`DATA_FORMAT`], durably: from then on this build may write what older
//! builds cannot read, and those of them that check refuse. Builds from
//! before the check cannot be stopped this way; they predate the file.
//!
//! Bump [`DATA_FORMAT`] with any change an older build would misread: a new
//! block format, journal record or segment naming, key layout.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use tillstream_storage::store::StoreError;

/// The newest format this build reads, and the one it writes.
///
/// - 1: every directory before format 2 (and before this file).
/// - 2: `stock_levels` blocks are written in the packed format, under
///   keys one byte longer (`keys::level_bucket_key`); format 1's rkyv
///   blocks are still read, and rewritten when their bucket changes.
/// - 3: a store's sale lines and stock movements of an hour of one commit
///   are one stock block (`packed::stock`): a line carries the movement
///   it made. Blocks of formats 1 and 2 are still read as they are.
/// - 4: `device_batches` rows carry the batch's digest
///   (`BatchRow::digest`); rows of formats 1 to 3 are still read, with
///   digest 0 (`crate::archive::BatchRowV3`).
pub const DATA_FORMAT: u32 = 4;

/// The file's name in the data directory.
pub(crate) const FILE: &str = "FORMAT";

const PREFIX: &str = "tillstream data format ";

fn refuse(dir: &Path, reason: String) -> StoreError {
    StoreError::Open {
        path: dir.display().to_string(),
        reason,
    }
}

/// Reads the format of the data directory `dir` (which exists): `None` when
/// it has no `FORMAT` file.
pub(crate) fn read(dir: &Path) -> Result<Option<u32>, StoreError> {
    let path = dir.join(FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(dir, format!("reading {}: {e}", path.display()))),
    };
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim_end().strip_prefix(PREFIX))
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            refuse(
                dir,
                format!(
                    "{} is not a tillstream format file (it should hold one line, \
                     \"{PREFIX}N\"); was this directory written by tillstream?",
                    path.display()
                ),
            )
        })
}

/// Checks that this build can read `dir` and marks it as [`DATA_FORMAT`],
/// durably, if it was not already. Returns the format it found (`None`: a
/// new directory, or one from before the file existed).
pub(crate) fn claim(dir: &Path) -> Result<Option<u32>, StoreError> {
    let found = read(dir)?;
    match found {
        Some(n) if n > DATA_FORMAT => {
            return Err(refuse(
                dir,
                format!(
                    "the data is in format {n}, written by a newer tillstream; this build \
                     reads formats up to {DATA_FORMAT}. Run a build that reads format {n}, \
                     or restore a backup this build wrote into an empty data directory; \
                     the store was left as it was"
                ),
            ));
        }
        Some(DATA_FORMAT) => return Ok(found),
        _ => {}
    }
    write(dir).map_err(|e| refuse(dir, format!("writing {}: {e}", dir.join(FILE).display())))?;
    Ok(found)
}

/// Replaces `FORMAT` atomically (a new file renamed over it) and makes the
/// rename durable before anything else is written.
fn write(dir: &Path) -> io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    writeln!(file, "{PREFIX}{DATA_FORMAT}")?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::EmbeddedStore;
    use tillstream_journal::encode_record;
    use tillstream_storage::store::Store;
    use tillstream_storage::testkit::sample;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Every file under `dir` with its bytes.
    fn files(dir: &Path) -> io::Result<BTreeMap<PathBuf, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for entry in fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    out.insert(path.clone(), fs::read(&path)?);
                }
            }
        }
        Ok(out)
    }

    /// A store with a commit in its tables and a record in its journal.
    fn written(dir: &Path) -> TestResult {
        let store = EmbeddedStore::open(dir)?;
        store.commit(&sample())?;
        let mut record = Vec::new();
        encode_record(1, &[b"a device frame"], &mut record);
        store.journal_append(&record, 1)?;
        Ok(())
    }

    #[test]
    fn a_new_store_is_marked_with_this_builds_format() -> TestResult {
        let dir = tempfile::tempdir()?;
        written(dir.path())?;
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE))?,
            format!("tillstream data format {DATA_FORMAT}\n")
        );
        assert_eq!(read(dir.path())?, Some(DATA_FORMAT));
        assert!(!dir.path().join("FORMAT.tmp").exists());
        Ok(())
    }

    #[test]
    fn a_newer_format_is_refused_and_nothing_in_the_directory_changes() -> TestResult {
        let dir = tempfile::tempdir()?;
        written(dir.path())?;
        let newer = DATA_FORMAT + 1;
        fs::write(
            dir.path().join(FILE),
            format!("tillstream data format {newer}\n"),
        )?;
        // What a newer build may have left that this one would misread:
        // a torn-looking tail that this build's journal open would cut.
        let wal = dir.path().join("wal");
        let segment = fs::read_dir(&wal)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .ok_or("no segment")?;
        let mut bytes = fs::read(&segment)?;
        bytes.extend_from_slice(b"\x07\0\0\0a record of a newer format");
        fs::write(&segment, &bytes)?;
        let before = files(dir.path())?;

        let err = EmbeddedStore::open(dir.path())
            .err()
            .ok_or("a newer format opened")?
            .to_string();
        assert!(
            err.contains(&format!("format {newer}, written by a newer tillstream"))
                && err.contains(&format!("reads formats up to {DATA_FORMAT}")),
            "{err}"
        );
        assert_eq!(files(dir.path())?, before, "the refused open changed files");
        Ok(())
    }

    #[test]
    fn a_store_from_before_the_file_opens_and_is_marked() -> TestResult {
        let dir = tempfile::tempdir()?;
        written(dir.path())?;
        fs::remove_file(dir.path().join(FILE))?;
        let store = EmbeddedStore::open(dir.path())?;
        assert_eq!(read(dir.path())?, Some(DATA_FORMAT));
        // What it held is still there: the commit and the journal record.
        assert_eq!(store.next_commit_id(), 2);
        let mut lsns = Vec::new();
        store.journal_replay(0, &mut |lsn, _| {
            lsns.push(lsn);
            Ok(())
        })?;
        assert_eq!(lsns, [1]);
        Ok(())
    }

    #[test]
    fn a_file_that_is_not_a_format_line_is_an_error() -> TestResult {
        for text in [
            &b"tillstream data format"[..],
            b"tillstream data format -1\n",
            b"tillstream data format 1 2\n",
            b"\xff\xfe",
            b"",
        ] {
            let dir = tempfile::tempdir()?;
            fs::write(dir.path().join(FILE), text)?;
            let err = EmbeddedStore::open(dir.path())
                .err()
                .ok_or("a bad format file opened")?
                .to_string();
            assert!(err.contains("is not a tillstream format file"), "{err}");
            assert_eq!(fs::read(dir.path().join(FILE))?, text);
        }
        Ok(())
    }
}
