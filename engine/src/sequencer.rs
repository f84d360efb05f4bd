//! The sequencer: the one order in which batches are applied, journaled
//! and materialized, and the journal writer that makes them durable.
//!
//! Under one short lock, [`Sequencer::submit`] gives a fresh batch the
//! next LSN, puts its parts in the shards' mailboxes and adds its frame
//! (shared, not copied) to the journal's pending records. So the LSN order is, at once, every
//! shard's apply order and the journal's order: replaying the journal in
//! order after a crash gives every entity its events in the order it first
//! saw them, and rebuilds the same rows (ARCHITECTURE.md, "write path").
//!
//! The writer thread takes whatever is pending, appends it with one write
//! and one `fdatasync` ([`Store::journal_append_records`]: the embedded
//! store encodes each frame once, straight into the buffer its write goes
//! out from; a store without such a buffer, ScyllaDB's, encodes them into
//! one first) and publishes the new
//! durable LSN; while it syncs, the next group gathers. While the journal
//! is busy (the last group held several batches), a group also waits up
//! to [`GROUP_WAIT`] for more, or until it holds [`GROUP_BYTES`]: an
//! fdatasync costs about as much CPU for 4 KiB as for 1 MiB. A lone
//! device's batch still waits one fsync and no more.
//!
//! Invariants:
//! - LSNs are dense: every LSN handed out is in the journal's pending
//!   records before the lock is released, and reaches the committer as one
//!   commit unit (or the engine fails);
//! - the durable LSN only rises, and only after `journal_append_records`
//!   returned Ok for every record up to it;
//! - after a failed append nothing more becomes durable: the error is
//!   published, the writer stops, and frames are no longer kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tillstream_engine_core::route::{Kinds, Scope};
use tillstream_engine_core::validate::{LEGACY_MAX_FUTURE_US, Rules};
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::journal::{JournalRecords, RECORD_HEADER};
use tillstream_storage::{Store, StoreError};
use tokio::sync::watch;

use crate::metrics as m;

/// Journal record kind of a device batch, before scopes were journaled.
pub(crate) const RECORD_BATCH: u8 = 1;
/// Journal record kind of a device batch with its credential's scope.
pub(crate) const RECORD_BATCH_SCOPED: u8 = 2;
/// Bytes of the engine's header of a `RECORD_BATCH` (before the frame).
pub(crate) const BATCH_HEADER: usize = 32;
/// Bytes of the engine's header of a `RECORD_BATCH_SCOPED`.
pub(crate) const BATCH_HEADER_SCOPED: usize = 40;

/// The engine's header of a journaled batch: what replay needs besides
/// the frame to rebuild exactly what the live path did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) device: u64,
    pub(crate) seq: u64,
    /// The time the live path planned and stamped the batch with.
    pub(crate) now_us: i64,
    /// The clock skew (`Rules::max_future_us`, in seconds) the live path
    /// validated it with: replay must decide the same.
    pub(crate) max_future_s: u32,
    /// What the device's credential allowed when the batch was admitted:
    /// replay refuses the same events, even if the credential has since
    /// been revoked or the server's authentication changed.
    pub(crate) scope: Scope,
}

impl BatchHeader {
    /// The rules the live path validated this batch with: `base` with the
    /// journaled clock-skew bound.
    pub(crate) fn rules(&self, base: Rules) -> Rules {
        Rules {
            max_future_us: i64::from(self.max_future_s) * 1_000_000,
            ..base
        }
    }

    /// `kind u8 | 3 reserved | max_future_s u32 | device u64 | seq u64 |
    /// now_us i64 | store u32 | kinds u8 | flags u8 | 2 reserved`, LE;
    /// flags bit 0: the store is bound. Kinds: 0 all, 1 sales, 2 stock.
    pub(crate) fn encode(&self) -> [u8; BATCH_HEADER_SCOPED] {
        let mut h = [0u8; BATCH_HEADER_SCOPED];
        h[0] = RECORD_BATCH_SCOPED;
        h[4..8].copy_from_slice(&self.max_future_s.to_le_bytes());
        h[8..16].copy_from_slice(&self.device.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.now_us.to_le_bytes());
        if let Some(store) = self.scope.store {
            h[32..36].copy_from_slice(&store.to_le_bytes());
            h[37] = 1;
        }
        h[36] = match self.scope.kinds {
            Kinds::All => 0,
            Kinds::Sales => 1,
            Kinds::Stock => 2,
        };
        h
    }

    /// The header and the frame of a journal record; `None` if it is not
    /// a batch record this version knows. Records from before the skew
    /// bound was journaled hold 0 there: they were validated with the 24 h
    /// of that time. Records from before scopes (kind 1) allowed all.
    pub(crate) fn decode(payload: &[u8]) -> Option<(BatchHeader, &[u8])> {
        let len = match *payload.first()? {
            RECORD_BATCH => BATCH_HEADER,
            RECORD_BATCH_SCOPED => BATCH_HEADER_SCOPED,
            _ => return None,
        };
        let (h, frame) = payload.split_at_checked(len)?;
        let word = |at: usize| -> Option<[u8; 8]> { h.get(at..at + 8)?.try_into().ok() };
        let skew = u32::from_le_bytes(h.get(4..8)?.try_into().ok()?);
        let legacy = u32::try_from(LEGACY_MAX_FUTURE_US / 1_000_000).unwrap_or(u32::MAX);
        let scope = if len == BATCH_HEADER_SCOPED {
            Scope {
                store: (h[37] & 1 == 1).then(|| u32::from_le_bytes([h[32], h[33], h[34], h[35]])),
                kinds: match h[36] {
                    0 => Kinds::All,
                    1 => Kinds::Sales,
                    2 => Kinds::Stock,
                    _ => return None,
                },
            }
        } else {
            Scope::default()
        };
        Some((
            BatchHeader {
                device: u64::from_le_bytes(word(8)?),
                seq: u64::from_le_bytes(word(16)?),
                now_us: i64::from_le_bytes(word(24)?),
                max_future_s: if skew == 0 { legacy } else { skew },
                scope,
            },
            frame,
        ))
    }
}

/// A group of at least this many bytes is written at once.
const GROUP_BYTES: usize = 1 << 20;

/// How long a group may wait for more records while the journal is busy.
/// An fdatasync costs ~100 us of CPU on this kind of machine (a VM: each
/// I/O submission exits to the host) whatever it writes: the engine was
/// spending 0.32 us of every event's CPU in the journal thread, 1,800
/// appends per million events. Waiting 1 ms made that 800 appends and
/// 0.22 us (3 interleaved runs), the ack a fraction of a millisecond later.
const GROUP_WAIT: Duration = Duration::from_millis(1);

/// Records the last group must have held for the next one to wait: a lone
/// device's batch (groups of one) is written at once, as before.
const BUSY_GROUP_RECORDS: u64 = 2;

/// Where the journal stands, as the writer publishes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct JournalState {
    /// Every record up to this LSN is durable.
    pub(crate) durable: u64,
    /// Set once an append failed: nothing after `durable` ever will be.
    pub(crate) error: Option<Arc<StoreError>>,
}

/// A frame the journal keeps until its record is written: the batch's own
/// buffer, shared with the shards that apply it.
pub(crate) trait JournaledFrame: Send + Sync {
    fn frame(&self) -> &[u8];
}

impl JournaledFrame for ValidatedBatch {
    fn frame(&self) -> &[u8] {
        self.bytes()
    }
}

#[cfg(test)]
impl JournaledFrame for Vec<u8> {
    fn frame(&self) -> &[u8] {
        self
    }
}

/// One batch's journal record, not yet encoded.
struct PendingRecord {
    lsn: u64,
    header: [u8; BATCH_HEADER_SCOPED],
    frame: Arc<dyn JournaledFrame>,
}

/// A group of records for one append.
#[derive(Default)]
struct Group {
    records: Vec<PendingRecord>,
    /// Their encoded size.
    bytes: usize,
}

impl Group {
    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}

impl JournalRecords for Group {
    fn count(&self) -> usize {
        self.records.len()
    }

    fn record(&self, i: usize) -> (u64, [&[u8]; 2]) {
        let r = &self.records[i];
        (r.lsn, [&r.header, r.frame.frame()])
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("records", &self.records.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[derive(Debug)]
struct Pending {
    next_lsn: u64,
    group: Group,
    /// When the oldest record in `group` was added (None when it is empty).
    since: Option<Instant>,
    closed: bool,
    /// An append failed: nothing will be written again, so frames are no
    /// longer kept (the flusher fails their batches).
    failed: bool,
    /// A dispatch failed part-way: some shards may hold parts of a batch
    /// that has no LSN. No batch is sequenced after it (`submit`).
    halted: bool,
}

/// Why `Sequencer::submit` sequenced nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unsequenced<E> {
    /// This batch's dispatch failed (`submit`'s docs).
    Dispatch(E),
    /// An earlier batch's dispatch failed: the engine has failed.
    Halted,
}

/// How far acknowledgements got and when they last moved, to tell a stall
/// (nothing acknowledged for a while although batches wait) from a quiet
/// server. Written by the flusher, and by the sequencer when a batch
/// arrives at an idle server (so an old quiet spell is not a stall).
#[derive(Debug)]
pub(crate) struct AckProgress {
    epoch: Instant,
    acked: AtomicU64,
    moved_at_ms: AtomicU64,
}

impl AckProgress {
    fn new(acked: u64) -> Self {
        Self {
            epoch: Instant::now(),
            acked: AtomicU64::new(acked),
            moved_at_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved_at_ms.store(ms, Ordering::Release);
    }

    /// Every batch up to `lsn` is acknowledged.
    pub(crate) fn acked(&self, lsn: u64) {
        self.acked.store(lsn, Ordering::Release);
        self.touch();
    }

    /// How long acknowledgements have not moved while batches up to
    /// `sequenced` wait; zero when none waits.
    pub(crate) fn stalled_for(&self, sequenced: u64) -> Duration {
        if sequenced <= self.acked.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.moved_at_ms.load(Ordering::Acquire),
        ))
    }
}

/// The sequencer (module docs). Shared by every session.
#[derive(Debug)]
pub(crate) struct Sequencer {
    pending: Mutex<Pending>,
    /// The last LSN handed out (read without the lock, for stall checks).
    sequenced: AtomicU64,
    progress: Arc<AckProgress>,
    wake: Condvar,
    state: watch::Sender<JournalState>,
    /// [`GROUP_WAIT`], or another in tests.
    group_wait: Duration,
}

impl Sequencer {
    /// A sequencer continuing after `last_lsn`, with its writer thread.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        last_lsn: u64,
    ) -> Result<(Arc<Sequencer>, JoinHandle<()>), std::io::Error> {
        Self::start_with_group_wait(store, last_lsn, GROUP_WAIT)
    }

    fn start_with_group_wait(
        store: Arc<dyn Store>,
        last_lsn: u64,
        group_wait: Duration,
    ) -> Result<(Arc<Sequencer>, JoinHandle<()>), std::io::Error> {
        let seq = Arc::new(Sequencer {
            group_wait,
            sequenced: AtomicU64::new(last_lsn),
            progress: Arc::new(AckProgress::new(last_lsn)),
            pending: Mutex::new(Pending {
                next_lsn: last_lsn + 1,
                group: Group::default(),
                since: None,
                closed: false,
                failed: false,
                halted: false,
            }),
            wake: Condvar::new(),
            state: watch::Sender::new(JournalState {
                durable: last_lsn,
                error: None,
            }),
        });
        let writer = seq.clone();
        let join = std::thread::Builder::new()
            .name("tillstream-journal".into())
            .spawn(move || writer.write_loop(&*store))?;
        Ok((seq, join))
    }

    /// Sequences one fresh batch: the next LSN, `dispatch` (which hands the
    /// batch's parts to the shards) and the journal record, all under the
    /// lock (module docs). If `dispatch` fails nothing is journaled and
    /// the error is returned; and since the shards it reached before it
    /// failed may have applied their parts under this LSN, nothing is
    /// sequenced after it either: every later batch is [`Unsequenced::Halted`],
    /// so no state those parts touched is ever acknowledged or
    /// materialized. The restart replays the journal, which never held
    /// the batch.
    pub(crate) fn submit<E>(
        &self,
        header: BatchHeader,
        frame: Arc<dyn JournaledFrame>,
        dispatch: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<u64, Unsequenced<E>> {
        let mut p = self.pending.lock();
        if p.halted {
            return Err(Unsequenced::Halted);
        }
        let lsn = p.next_lsn;
        if let Err(e) = dispatch(lsn) {
            p.halted = true;
            return Err(Unsequenced::Dispatch(e));
        }
        p.next_lsn += 1;
        self.sequenced.store(lsn, Ordering::Release);
        if self.progress.acked.load(Ordering::Acquire) + 1 == lsn {
            // Nothing was waiting: the stall clock starts now.
            self.progress.touch();
        }
        if !p.failed {
            let was_empty = p.group.records.is_empty();
            p.group.bytes += RECORD_HEADER + BATCH_HEADER_SCOPED + frame.frame().len();
            p.group.records.push(PendingRecord {
                lsn,
                header: header.encode(),
                frame,
            });
            if was_empty {
                p.since = Some(Instant::now());
            }
            // The writer waits for the first record of a group, then for
            // the group to fill or to grow old (GROUP_*): wake it for those.
            if was_empty || p.group.bytes >= GROUP_BYTES {
                drop(p);
                self.wake.notify_one();
            }
        }
        Ok(lsn)
    }

    /// The last LSN handed out.
    pub(crate) fn sequenced(&self) -> u64 {
        self.sequenced.load(Ordering::Acquire)
    }

    /// Where acknowledgements stand (the flusher moves it).
    pub(crate) fn progress(&self) -> Arc<AckProgress> {
        self.progress.clone()
    }

    /// How long acknowledgements have been stuck while batches wait.
    pub(crate) fn ack_stall(&self) -> Duration {
        self.progress.stalled_for(self.sequenced())
    }

    /// Watches the journal's durable LSN and its failure.
    pub(crate) fn subscribe(&self) -> watch::Receiver<JournalState> {
        self.state.subscribe()
    }

    /// Lets the writer finish what is pending and stop.
    pub(crate) fn close(&self) {
        self.pending.lock().closed = true;
        self.wake.notify_one();
    }

    fn write_loop(&self, store: &dyn Store) {
        let mut spare = Group::default();
        // Records of the group written last, and its last LSN.
        let (mut group_records, mut written) = (0u64, self.state.borrow().durable);
        loop {
            {
                let mut p = self.pending.lock();
                while p.group.records.is_empty() && !p.closed {
                    self.wake.wait(&mut p);
                }
                if p.group.records.is_empty() {
                    return;
                }
                // Group commit: while the journal is busy, a small group
                // waits a little for more (GROUP_WAIT).
                if let Some(since) = p.since.filter(|_| group_records >= BUSY_GROUP_RECORDS) {
                    let due = since + self.group_wait;
                    while p.group.bytes < GROUP_BYTES && !p.closed {
                        if self.wake.wait_until(&mut p, due).timed_out() {
                            break;
                        }
                    }
                }
                p.since = None;
                std::mem::swap(&mut p.group, &mut spare);
            }
            let last = spare.records.last().map_or(0, |r| r.lsn);
            let started = Instant::now();
            let result = store.journal_append_records(&spare, last);
            m::journal_append(started.elapsed(), spare.bytes);
            // The frames are let go here: the shards hold their own.
            spare.clear();
            match result {
                Ok(()) => {
                    group_records = last.saturating_sub(written);
                    written = last;
                    self.state.send_modify(|s| s.durable = last);
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal append failed: no more acknowledgements until restart");
                    let mut p = self.pending.lock();
                    p.failed = true;
                    p.group = Group::default();
                    drop(p);
                    self.state.send_modify(|s| s.error = Some(Arc::new(e)));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{CommitFault, FaultyStore};
    use tillstream_storage::embedded::EmbeddedStore;

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
}
