//! The sequencer's grouping, halting and stall accounting.
use super::*;
use crate::faults::{CommitFault, FaultyStore};
use tillstream_embedded::EmbeddedStore;

/// Records the last LSN of every append, and holds the first one
/// until it is let go.
#[derive(Debug, Default)]
struct Groups {
    lasts: Mutex<Vec<u64>>,
    held: Mutex<bool>,
    let_go: Condvar,
}

impl CommitFault for Arc<Groups> {
    fn journal_append(
        &self,
        inner: &Arc<dyn Store>,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        self.lasts.lock().push(last_lsn);
        let mut held = self.held.lock();
        while *held {
            self.let_go.wait(&mut held);
        }
        drop(held);
        inner.journal_append_records(records, last_lsn)
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_busy_journal_gathers_a_group_and_a_lone_batch_is_written_at_once()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store"))?);
    let groups = Arc::new(Groups::default());
    *groups.held.lock() = true;
    let store = Arc::new(FaultyStore::new(inner, groups.clone()));
    // A wait far longer than the test: only a full group or close ends it.
    let (seq, writer) = Sequencer::start_with_group_wait(store, 0, Duration::from_secs(600))?;
    let header = |seq: u64| BatchHeader {
        device: 1,
        seq,
        now_us: 0,
        max_future_s: 300,
        scope: Scope::default(),
    };
    let submit = |n: u64| {
        let frame: Arc<dyn JournaledFrame> = Arc::new(b"frame".to_vec());
        seq.submit(header(n), frame, |_| Ok::<(), ()>(()))
    };
    let lasts = || groups.lasts.lock().clone();
    // A lone batch on an idle journal does not wait.
    assert_eq!(submit(1), Ok(1));
    wait_for("the first append", || lasts() == [1]);
    // Two more gather behind it while it syncs, and go at once after.
    assert_eq!((submit(2), submit(3)), (Ok(2), Ok(3)));
    *groups.held.lock() = false;
    groups.let_go.notify_all();
    let state = seq.subscribe();
    wait_for("LSN 3 durable", || state.borrow().durable == 3);
    assert_eq!(lasts(), [1, 3]);
    // The journal is busy now (a group of two): the next group waits.
    assert_eq!((submit(4), submit(5)), (Ok(4), Ok(5)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(lasts(), [1, 3], "a group waits while the journal is busy");
    // Closing writes what waits, as one group.
    seq.close();
    writer.join().map_err(|_| "the writer panicked")?;
    assert_eq!(lasts(), [1, 3, 5]);
    assert_eq!(state.borrow().durable, 5);
    Ok(())
}

#[test]
fn after_a_dispatch_that_failed_part_way_nothing_more_is_sequenced()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store"))?);
    let (seq, writer) = Sequencer::start(store, 0)?;
    let header = BatchHeader {
        device: 1,
        seq: 1,
        now_us: 0,
        max_future_s: 300,
        scope: Scope::default(),
    };
    let frame = || -> Arc<dyn JournaledFrame> { Arc::new(b"frame".to_vec()) };
    assert_eq!(seq.submit(header, frame(), |_| Ok::<(), u16>(())), Ok(1));
    // The second shard's actor is gone: the first one has its part.
    assert_eq!(
        seq.submit(header, frame(), |_| Err::<(), u16>(1)),
        Err(Unsequenced::Dispatch(1))
    );
    let mut dispatched = false;
    let later = seq.submit(header, frame(), |_| {
        dispatched = true;
        Ok::<(), u16>(())
    });
    assert_eq!(later, Err(Unsequenced::Halted));
    assert!(!dispatched, "no shard is handed a batch after the failure");
    seq.close();
    writer.join().map_err(|_| "the writer panicked")?;
    assert_eq!(
        seq.subscribe().borrow().durable,
        1,
        "only the first batch is journaled"
    );
    Ok(())
}

#[test]
fn a_stall_is_counted_only_while_batches_wait() {
    let p = AckProgress::new(10);
    assert_eq!(p.stalled_for(10), Duration::ZERO, "nothing waits");
    std::thread::sleep(Duration::from_millis(20));
    assert!(p.stalled_for(11) >= Duration::from_millis(20));
    p.acked(11);
    assert_eq!(p.stalled_for(11), Duration::ZERO);
    assert!(
        p.stalled_for(12) < Duration::from_millis(20),
        "the clock restarts at each ack"
    );
}

#[test]
fn batch_headers_round_trip_and_refuse_other_kinds() {
    let h = BatchHeader {
        device: 7,
        seq: u64::MAX,
        now_us: -5,
        max_future_s: 300,
        scope: Scope {
            store: Some(u32::MAX),
            kinds: Kinds::Stock,
        },
    };
    let mut rec = h.encode().to_vec();
    rec.extend_from_slice(b"frame");
    assert_eq!(BatchHeader::decode(&rec), Some((h, &b"frame"[..])));
    assert_eq!(h.rules(Rules::default()).max_future_us, 300_000_000);
    // A record from before the bound was journaled replays with 24 h.
    rec[4..8].fill(0);
    let old = BatchHeader::decode(&rec).map(|(h, _)| h.rules(Rules::default()));
    assert_eq!(old.map(|r| r.max_future_us), Some(LEGACY_MAX_FUTURE_US));
    // A record from before scopes: 32 bytes of header, everything allowed.
    let mut v1 = rec[..BATCH_HEADER].to_vec();
    v1[0] = RECORD_BATCH;
    v1.extend_from_slice(b"frame");
    assert_eq!(
        BatchHeader::decode(&v1).map(|(h, f)| (h.scope, f)),
        Some((Scope::default(), &b"frame"[..]))
    );
    rec[36] = 7;
    assert_eq!(BatchHeader::decode(&rec), None, "unknown kinds");
    rec[0] = 9;
    assert_eq!(BatchHeader::decode(&rec), None);
    assert_eq!(BatchHeader::decode(&rec[..10]), None);
}
