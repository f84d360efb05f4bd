//! The store contract (`tillstream_storage::testkit::conformance`) run
//! against the embedded store.

use tillstream_storage::StoreError;
use tillstream_storage::testkit::conformance::*;

/// The embedded store over a temporary directory.
struct Embedded(tempfile::TempDir);

impl Harness for Embedded {
    type S = crate::EmbeddedStore;
    fn open(&mut self) -> Result<Self::S, StoreError> {
        crate::EmbeddedStore::open(self.0.path())
    }
}

fn embedded() -> Result<Embedded, Box<dyn std::error::Error>> {
    Ok(Embedded(tempfile::tempdir()?))
}

#[test]
fn embedded_rows_round_trip() -> TestResult {
    rows_round_trip(&mut embedded()?)
}

#[test]
fn embedded_parts_store_what_their_concatenation_stores() -> TestResult {
    parts_store_what_their_concatenation_stores(&mut embedded()?)
}

#[test]
fn embedded_journal_replays_what_the_checkpoint_does_not_cover() -> TestResult {
    the_journal_replays_what_the_checkpoint_does_not_cover(&mut embedded()?)
}

#[test]
fn embedded_a_crash_between_rows_and_checkpoint_loses_and_doubles_nothing() -> TestResult {
    a_crash_between_rows_and_checkpoint_loses_and_doubles_nothing(&mut embedded()?)
}

#[test]
fn embedded_snapshot_rows_keep_the_newest() -> TestResult {
    snapshot_rows_keep_the_newest(&mut embedded()?)
}

#[test]
fn embedded_queries_answer_from_the_rows() -> TestResult {
    queries_answer_from_the_rows(&mut embedded()?)
}
