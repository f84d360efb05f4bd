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

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};
use tillstream_engine_core::route::{Kinds, Scope};
use tillstream_engine_core::validate::{LEGACY_MAX_FUTURE_US, Rules};
use tillstream_journal::{JournalRecords, RECORD_HEADER};
use tillstream_protocol::ValidatedBatch;
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
    /// Read by every submit, written by the flusher: on a cache line of
    /// its own, not one the sessions' allocations share.
    acked: CachePadded<AtomicU64>,
    moved_at_ms: AtomicU64,
}

impl AckProgress {
    fn new(acked: u64) -> Self {
        Self {
            epoch: Instant::now(),
            acked: CachePadded::new(AtomicU64::new(acked)),
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
    /// Taken by every submit and by the writer thread: padded, so that the
    /// fields read beside it are not invalidated with it.
    pending: CachePadded<Mutex<Pending>>,
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
            pending: CachePadded::new(Mutex::new(Pending {
                next_lsn: last_lsn + 1,
                group: Group::default(),
                since: None,
                closed: false,
                failed: false,
                halted: false,
            })),
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
mod tests;
