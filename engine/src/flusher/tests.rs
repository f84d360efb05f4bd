//! The flusher's tests: on the runtime's paused clock, against a real
//! store and journal.

use super::*;
use crate::sequencer::BatchHeader;
use tillstream_embedded::EmbeddedStore;
use tillstream_engine_core::route::Scope;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store and a sequencer whose journal holds the units' LSNs (waited
/// for: the journal thread runs on real time, so a unit is durable when
/// it comes), and a flusher after checkpoint 0.
struct Rig {
    _dir: tempfile::TempDir,
    sequencer: Arc<Sequencer>,
    writer: std::thread::JoinHandle<()>,
    tx: FlushSender,
    flusher: tokio::task::JoinHandle<()>,
    written: watch::Receiver<u64>,
}

/// A [`Rig`] whose journal holds LSN 1, its flusher with `settings`.
fn rig(settings: FlushSettings) -> Result<Rig, Box<dyn std::error::Error>> {
    rig_with(settings, 1, |store| store)
}

/// [`rig`] with LSNs 1 to `lsns` in the journal, the flusher writing
/// through `wrap` of the store.
fn rig_with(
    settings: FlushSettings,
    lsns: u64,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> Result<Rig, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store"))?);
    let (sequencer, writer) = Sequencer::start(store.clone(), 0)?;
    for seq in 1..=lsns {
        let header = BatchHeader {
            device: 1,
            seq,
            now_us: 0,
            max_future_s: 300,
            scope: Scope::default(),
        };
        assert_eq!(
            sequencer.submit(header, Arc::new(b"frame".to_vec()), |_| Ok::<(), ()>(())),
            Ok(seq)
        );
    }
    let journal = sequencer.subscribe();
    while journal.borrow().durable < lsns {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (checkpoint, written) = watch::channel(0u64);
    // The engine's flag is dropped at once: the flusher must go on
    // without it (a closed watch channel once spun its loop).
    let (_, failed) = watch::channel(false);
    let pool = Arc::new(RowSetPool::new(4));
    let store = wrap(store);
    let (tx, flusher) = spawn(store, 0, &sequencer, failed, checkpoint, settings, pool);
    Ok(Rig {
        _dir: dir,
        sequencer,
        writer,
        tx,
        flusher,
        written,
    })
}

impl Rig {
    /// Sends the unit of LSN 1, holding `budget`; waits for its ack.
    async fn send(&self, budget: Vec<OwnedSemaphorePermit>) -> TestResult {
        self.send_lsn(1, budget).await
    }

    /// Sends the unit of `lsn`, holding `budget`; waits for its ack.
    async fn send_lsn(&self, lsn: u64, budget: Vec<OwnedSemaphorePermit>) -> TestResult {
        let (done_tx, done) = oneshot::channel();
        self.tx
            .send(CommitUnit {
                lsn: Some(lsn),
                rows: Vec::new(),
                durable: None,
                done: Some(done_tx),
                budget,
            })
            .await?;
        assert!(
            done.await?.is_ok(),
            "a durable unit is acknowledged at once"
        );
        Ok(())
    }

    async fn stop(self) -> TestResult {
        drop(self.tx);
        self.flusher.await?;
        self.sequencer.close();
        self.writer
            .join()
            .map_err(|_| "the journal writer panicked")?;
        Ok(())
    }
}

fn settings(interval: Duration, max_permits: usize) -> FlushSettings {
    FlushSettings {
        interval,
        max_rows: usize::MAX,
        max_permits,
        sync_every: Duration::from_secs(3600),
        queue: 16,
    }
}

/// On the runtime's paused clock: a write waits one interval after its
/// first rows, not until the next tick after that (up to two).
#[tokio::test(start_paused = true)]
async fn rows_are_written_one_interval_after_they_came() -> TestResult {
    let interval = Duration::from_secs(1);
    let mut rig = rig(settings(interval, usize::MAX))?;
    let started = tokio::time::Instant::now();
    // The rows come between two of a periodic tick's checks.
    tokio::time::advance(interval * 6 / 10).await;
    rig.send(Vec::new()).await?;
    let came = tokio::time::Instant::now();
    tokio::time::advance(interval * 9 / 10).await;
    assert_eq!(*rig.written.borrow(), 0, "written before its interval");
    // The clock runs on only for timers while the write's blocking
    // task is idle: with no write due, the timeout ends this.
    tokio::time::timeout(interval * 10, rig.written.changed()).await??;
    assert_eq!(*rig.written.borrow(), 1);
    let waited = tokio::time::Instant::now() - came;
    assert!(
        waited < interval * 11 / 10,
        "rows waited {waited:?} for an interval of {interval:?} (since start {:?})",
        started.elapsed()
    );
    rig.stop().await
}

/// Rows that hold a share of the shards' budgets are written at once,
/// long before the interval: readers must not stop on a full budget.
#[tokio::test(start_paused = true)]
async fn rows_holding_enough_budget_are_written_before_the_interval() -> TestResult {
    let interval = Duration::from_secs(3600);
    let mut rig = rig(settings(interval, 8))?;
    let budget = Arc::new(tokio::sync::Semaphore::new(16));
    rig.send(vec![budget.clone().acquire_many_owned(8).await?])
        .await?;
    tokio::time::timeout(Duration::from_secs(5), rig.written.changed()).await??;
    assert_eq!(*rig.written.borrow(), 1);
    // Written: the budget is free again.
    let all = tokio::time::timeout(Duration::from_secs(5), budget.acquire_many(16)).await??;
    drop(all);
    rig.stop().await
}

/// Writes the flusher starts, each held at its start until let through.
#[derive(Debug, Default)]
struct HeldWrites {
    /// (writes started, writes that may go on).
    state: parking_lot::Mutex<(usize, usize)>,
    changed: parking_lot::Condvar,
}

impl HeldWrites {
    fn let_through(&self, writes: usize) {
        let mut s = self.state.lock();
        s.1 = s.1.saturating_add(writes);
        self.changed.notify_all();
    }

    fn started(&self) -> usize {
        self.state.lock().0
    }
}

/// Lets every write through when dropped: a failed assertion must not
/// leave a write held, which the runtime's shutdown would wait for.
struct LetAllThrough(Arc<HeldWrites>);

impl Drop for LetAllThrough {
    fn drop(&mut self) {
        self.0.let_through(usize::MAX);
    }
}

/// Waits (on real time, up to 10 s) until `held` has seen `writes` start.
async fn writes_started(held: &HeldWrites, writes: usize, what: &str) {
    let since = Instant::now();
    while held.started() < writes {
        assert!(since.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl crate::faults::CommitFault for Arc<HeldWrites> {
    /// A materialization (the only write here: the journal's appends go
    /// their own way) waits at its start for a write to be let through.
    fn check_writable(&self) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        s.0 += 1;
        while s.1 == 0 {
            self.changed.wait(&mut s);
        }
        s.1 -= 1;
        Ok(())
    }
}

/// Under load the next write waits for a quarter budget's rows (or the
/// interval), not for the last write to end: every write costs per store
/// and SKU it touches, so writing at once what gathered during the last
/// one wrote smaller writes, more of them. The rows that come during a
/// write here are 100 units holding half of `max_permits`: a rule that
/// took 64 units holding a sixteenth of it for load wrote them at once.
///
/// On real time (a paused clock would run on to the interval while the
/// write's blocking task works): an interval of a minute is the margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_gathered_during_a_write_wait_for_their_budget_share() -> TestResult {
    let held = Arc::new(HeldWrites::default());
    let _unheld = LetAllThrough(held.clone());
    let max_permits = 1000;
    let rig = rig_with(
        settings(Duration::from_secs(60), max_permits),
        102,
        |store| Arc::new(crate::faults::FaultyStore::new(store, held.clone())),
    )?;
    let budget = Arc::new(tokio::sync::Semaphore::new(4 * max_permits));
    let permits = |n: u32| budget.clone().try_acquire_many_owned(n);
    rig.send_lsn(1, vec![permits(1000)?]).await?;
    writes_started(&held, 1, "a unit holding max_permits is written at once").await;
    for lsn in 2..=101 {
        rig.send_lsn(lsn, vec![permits(5)?]).await?;
    }
    let mut written = rig.written.clone();
    held.let_through(1);
    tokio::time::timeout(Duration::from_secs(10), written.wait_for(|&lsn| lsn == 1)).await??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        held.started(),
        1,
        "100 units holding half of max_permits were written right after the write they came during"
    );
    // With the rest of max_permits, they are, at once.
    rig.send_lsn(102, vec![permits(500)?]).await?;
    writes_started(&held, 2, "rows holding max_permits waited for the interval").await;
    held.let_through(usize::MAX);
    tokio::time::timeout(Duration::from_secs(10), written.wait_for(|&lsn| lsn == 102)).await??;
    rig.stop().await
}
