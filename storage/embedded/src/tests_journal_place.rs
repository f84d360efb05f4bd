use super::*;
use crate::EmbeddedStore;
use tillstream_storage::store::Store;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn record(lsn: u64) -> Vec<u8> {
    let mut out = Vec::new();
    tillstream_journal::encode_record(lsn, &[b"a batch"], &mut out);
    out
}

fn refused(r: Result<impl std::fmt::Debug, StoreError>, says: &str) -> TestResult {
    match r {
        Ok(v) => Err(format!("accepted ({v:?}) where it should say {says:?}").into()),
        Err(e) if e.to_string().contains(says) => Ok(()),
        Err(e) => Err(format!("refused, but with {e}, not {says:?}").into()),
    }
}

/// Places the journal of the store at `store_dir` in `journal` and
/// appends one record through the store.
fn placed_with_a_record(
    store_dir: &Path,
    journal: &Path,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let placed = place_journal(store_dir, journal)?;
    EmbeddedStore::open(store_dir)?.journal_append(&record(1), 1)?;
    Ok(placed)
}

/// What the refusal to move a journal says to do: every file of
/// `store_dir/wal` into `target`, then `store_dir/wal` removed.
fn move_journal_files(store_dir: &Path, target: &Path) -> io::Result<()> {
    fs::create_dir(target)?;
    for entry in fs::read_dir(store_dir.join("wal"))? {
        let entry = entry?;
        fs::rename(entry.path(), target.join(entry.file_name()))?;
    }
    fs::remove_dir(store_dir.join("wal"))
}

#[test]
fn a_new_store_journals_where_it_is_told_and_keeps_it_there() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    let journal = elsewhere.path().join("disk/wal");
    let placed = place_journal(&store_dir, &journal)?;
    assert_eq!(placed, fs::canonicalize(&journal)?);
    assert!(
        fs::symlink_metadata(store_dir.join("wal"))?
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(journal.join(MARK))?,
        fs::read(store_dir.join(MARK))?
    );
    // The store opened as every tool opens it writes its journal there.
    EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
    let segments = fs::read_dir(&journal)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension() == Some("wal".as_ref()))
        })
        .count();
    assert_eq!(segments, 1, "the segment is in the journal directory");
    // Again with the same directory: nothing to do.
    assert_eq!(place_journal(&store_dir, &journal)?, placed);
    let store = EmbeddedStore::open(&store_dir)?;
    assert_eq!(store.journal_last_lsn(), 1, "read back through the link");
    Ok(())
}

/// An unmounted disk leaves an empty mount point, or no directory at all.
/// Either would read as a journal with nothing to replay: every batch
/// acknowledged since the checkpoint would be gone. Both are refused,
/// and nothing is created where the journal was.
#[test]
fn a_journal_whose_disk_is_gone_is_refused_not_replayed_empty() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    let journal = elsewhere.path().join("mnt/wal");
    placed_with_a_record(&store_dir, &journal)?;

    let unmounted = elsewhere.path().join("unmounted");
    fs::rename(elsewhere.path().join("mnt"), &unmounted)?;
    fs::create_dir_all(&journal)?;
    refused(
        place_journal(&store_dir, &journal),
        "has no JOURNAL_OF file",
    )?;
    refused(EmbeddedStore::open(&store_dir), "is its disk mounted")?;

    fs::remove_dir_all(elsewhere.path().join("mnt"))?;
    refused(place_journal(&store_dir, &journal), "cannot be reached")?;
    assert!(
        !journal.exists(),
        "a journal directory is never created again"
    );
    refused(EmbeddedStore::open(&store_dir), "cannot be reached")?;

    // Mounted again: the record is there.
    fs::rename(&unmounted, elsewhere.path().join("mnt"))?;
    place_journal(&store_dir, &journal)?;
    assert_eq!(EmbeddedStore::open(&store_dir)?.journal_last_lsn(), 1);
    Ok(())
}

#[test]
fn a_journal_is_not_moved_or_shared_by_a_flag() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
    let other = elsewhere.path().join("wal");
    refused(place_journal(&store_dir, &other), "itself; to move it")?;
    assert!(
        fs::symlink_metadata(store_dir.join("wal"))?.is_dir(),
        "left as it was"
    );
    // Naming the store's own journal directory changes nothing.
    place_journal(&store_dir, &store_dir.join("wal"))?;
    assert!(fs::symlink_metadata(store_dir.join("wal"))?.is_dir());

    // A second store may not take a directory that holds a journal.
    let second = tmp.path().join("second");
    place_journal(&second, &other)?;
    EmbeddedStore::open(&second)?.journal_append(&record(1), 1)?;
    let third = tmp.path().join("third");
    refused(place_journal(&third, &other), "another store's journal")?;
    assert!(!third.join("wal").exists());
    // Nor may the second store's journal be pointed somewhere else.
    let new = elsewhere.path().join("new");
    fs::create_dir(&new)?;
    refused(place_journal(&second, &new), "links there")?;
    // Nor may a new store take a directory of files that are not its own.
    let fourth = tmp.path().join("fourth");
    fs::write(new.join("notes.txt"), b"x")?;
    refused(place_journal(&fourth, &new), "holds files already")?;
    Ok(())
}

/// What the refusal tells an operator to do, done step by step, moves
/// the journal: the store then reads its records from the new place.
#[test]
fn a_journal_moved_as_the_refusal_says_is_adopted() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    {
        let store = EmbeddedStore::open(&store_dir)?;
        for lsn in 1..=3 {
            store.journal_append(&record(lsn), lsn)?;
        }
    }
    let target = elsewhere.path().join("wal");
    refused(place_journal(&store_dir, &target), "move all the files")?;
    move_journal_files(&store_dir, &target)?;
    place_journal(&store_dir, &target)?;
    assert_eq!(EmbeddedStore::open(&store_dir)?.journal_last_lsn(), 3);
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

/// A placed store whose link is gone (removed, or not copied) must not
/// open a new, empty journal in its place; given its directory again, it
/// links it and reads its records; a directory that is gone as well is
/// not created again.
#[test]
fn a_placed_store_without_its_link_does_not_open_empty() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    let journal = elsewhere.path().join("mnt/wal");
    placed_with_a_record(&store_dir, &journal)?;
    fs::remove_file(store_dir.join("wal"))?;
    refused(EmbeddedStore::open(&store_dir), "start with --journal-dir")?;
    assert!(!store_dir.join("wal").exists(), "no empty journal was made");
    place_journal(&store_dir, &journal)?;
    assert_eq!(EmbeddedStore::open(&store_dir)?.journal_last_lsn(), 1);

    fs::remove_file(store_dir.join("wal"))?;
    fs::rename(elsewhere.path().join("mnt"), elsewhere.path().join("away"))?;
    refused(place_journal(&store_dir, &journal), "is its disk mounted")?;
    assert!(!journal.exists(), "not created again");
    fs::create_dir_all(&journal)?;
    refused(place_journal(&store_dir, &journal), "has no JOURNAL_OF")?;
    Ok(())
}

/// Half moved (the files gone from `store/wal`, the link not made yet),
/// a store refuses to open rather than start a new journal.
#[test]
fn a_half_moved_journal_is_refused() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
    let target = elsewhere.path().join("wal");
    refused(place_journal(&store_dir, &target), "move all the files")?;
    move_journal_files(&store_dir, &target)?;
    refused(EmbeddedStore::open(&store_dir), "start with --journal-dir")?;
    // And another store may not adopt the moved journal.
    let other = tmp.path().join("other");
    EmbeddedStore::open(&other)?;
    fs::remove_dir_all(other.join("wal"))?;
    refused(place_journal(&other, &target), "another store's journal")?;
    place_journal(&store_dir, &target)?;
    assert_eq!(EmbeddedStore::open(&store_dir)?.journal_last_lsn(), 1);
    Ok(())
}

#[test]
fn a_link_pointed_at_another_stores_journal_is_refused() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    place_journal(&a, &elsewhere.path().join("a"))?;
    let b_journal = place_journal(&b, &elsewhere.path().join("b"))?;
    fs::remove_file(a.join("wal"))?;
    std::os::unix::fs::symlink(&b_journal, a.join("wal"))?;
    refused(EmbeddedStore::open(&a), "is another store's")?;
    Ok(())
}

/// Cut off between the two marks (the journal directory's written, the
/// store's not), a placement is done again; a mount point's `lost+found`
/// does not count as files.
#[test]
fn a_placement_cut_off_between_its_marks_completes() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    let journal = elsewhere.path().join("wal");
    fs::create_dir_all(journal.join("lost+found"))?;
    let placed = place_journal(&store_dir, &journal)?;
    fs::remove_file(store_dir.join("wal"))?;
    fs::remove_file(store_dir.join(MARK))?;
    assert_eq!(place_journal(&store_dir, &journal)?, placed);
    EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
    Ok(())
}

/// A journal moved by hand, without asking, is not replaced by a new one:
/// the store refuses to open until it is named, then reads its records.
#[test]
fn a_journal_moved_by_hand_is_refused_until_named() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store_dir = tmp.path().join("store");
    EmbeddedStore::open(&store_dir)?.journal_append(&record(1), 1)?;
    let moved = elsewhere.path().join("wal");
    fs::rename(store_dir.join("wal"), &moved)?;
    refused(EmbeddedStore::open(&store_dir), "is missing")?;
    assert!(!store_dir.join("wal").exists());
    place_journal(&store_dir, &moved)?;
    assert_eq!(EmbeddedStore::open(&store_dir)?.journal_last_lsn(), 1);
    Ok(())
}

/// A store from before marks is marked at its next open; one that lost
/// its own copy of the mark gets it back from its journal's.
#[test]
fn marks_are_made_for_old_stores_and_healed() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let old = tmp.path().join("old");
    EmbeddedStore::open(&old)?;
    fs::remove_file(old.join(MARK))?;
    fs::remove_file(old.join("wal").join(MARK))?;
    EmbeddedStore::open(&old)?;
    assert_eq!(
        fs::read(old.join(MARK))?,
        fs::read(old.join("wal").join(MARK))?
    );

    let placed = tmp.path().join("placed");
    let journal = place_journal(&placed, &elsewhere.path().join("wal"))?;
    fs::remove_file(placed.join(MARK))?;
    refused(
        EmbeddedStore::open(&placed),
        "this store's copy of the mark",
    )?;
    assert_eq!(place_journal(&placed, &journal)?, journal);
    EmbeddedStore::open(&placed)?;
    Ok(())
}

/// A copy of a placed store that kept its link (`cp -a`) would append to
/// the original's journal: refused by name while the original is there;
/// two stores may not hold one journal open at once.
#[test]
fn a_copy_that_kept_the_link_is_refused() -> TestResult {
    let (tmp, elsewhere) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let original = tmp.path().join("original");
    let journal = place_journal(&original, &elsewhere.path().join("wal"))?;
    EmbeddedStore::open(&original)?.journal_append(&record(1), 1)?;
    let copy = tmp.path().join("copy");
    fs::create_dir(&copy)?;
    fs::copy(original.join(MARK), copy.join(MARK))?;
    std::os::unix::fs::symlink(&journal, copy.join("wal"))?;
    refused(EmbeddedStore::open(&copy), "is a copy of the store at")?;
    // The original moved whole (its old directory gone): it opens.
    fs::rename(&original, tmp.path().join("gone"))?;
    fs::remove_dir_all(tmp.path().join("gone"))?;
    assert_eq!(EmbeddedStore::open(&copy)?.journal_last_lsn(), 1);
    Ok(())
}

/// The placement happens under the store's lock: asked for while the store
/// is open (a server running on it), the open is refused before anything
/// is placed or marked; once it is closed, the same open places it.
#[test]
fn a_store_open_elsewhere_is_not_placed_under_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (store_dir, journal) = (tmp.path().join("store"), tmp.path().join("fast/wal"));
    let running = EmbeddedStore::open(&store_dir)?;
    running.journal_append(&record(1), 1)?;
    let marks = fs::read(store_dir.join(MARK))?;
    refused(
        EmbeddedStore::open_placed(&store_dir, Some(&journal)),
        "another process has it open",
    )?;
    assert!(!journal.exists(), "nothing placed");
    assert!(fs::symlink_metadata(store_dir.join("wal"))?.is_dir());
    assert_eq!(fs::read(store_dir.join(MARK))?, marks, "its mark untouched");
    running.journal_append(&record(2), 2)?;
    drop(running);
    // Stopped, its journal is in store/wal: the refusal says how to move it.
    refused(
        EmbeddedStore::open_placed(&store_dir, Some(&journal)),
        "wal itself; to move it",
    )?;
    // A new store is placed by the open itself.
    let fresh = tmp.path().join("fresh");
    let store = EmbeddedStore::open_placed(&fresh, Some(&journal))?;
    store.journal_append(&record(1), 1)?;
    assert_eq!(
        fs::read_link(fresh.join("wal"))?,
        fs::canonicalize(&journal)?
    );
    Ok(())
}
