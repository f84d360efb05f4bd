//! The flusher's tests: on the runtime's paused clock, against a real
//! store and journal.

use super::*;
use crate::sequencer::BatchHeader;
use tillstream_engine_core::route::Scope;
use tillstream_storage::embedded::EmbeddedStore;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store and a sequencer whose journal holds LSN 1 (waited for: the
/// journal thread runs on real time, so the unit is durable when it
/// comes), and a flusher with `settings` after checkpoint 0.
struct Rig {
    _dir: tempfile::TempDir,
    sequencer: Arc<Sequencer>,
    writer: std::thread::JoinHandle<()>,
    tx: FlushSender,
    flusher: tokio::task::JoinHandle<()>,
    written: watch::Receiver<u64>,
}

fn rig(settings: FlushSettings) -> Result<Rig, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store"))?);
    let (sequencer, writer) = Sequencer::start(store.clone(), 0)?;
    let header = BatchHeader {
        device: 1,
        seq: 1,
        now_us: 0,
        max_future_s: 300,
        scope: Scope::default(),
    };
    assert_eq!(
        sequencer.submit(header, Arc::new(b"frame".to_vec()), |_| Ok::<(), ()>(())),
        Ok(1)
    );
    let journal = sequencer.subscribe();
    while journal.borrow().durable < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (checkpoint, written) = watch::channel(0u64);
    // The engine's flag is dropped at once: the flusher must go on
    // without it (a closed watch channel once spun its loop).
    let (_, failed) = watch::channel(false);
    let pool = Arc::new(RowSetPool::new(4));
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
        let (done_tx, done) = oneshot::channel();
        self.tx
            .send(CommitUnit {
                lsn: Some(1),
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

/// Under load a write follows the one before; a slow fleet's few rows
/// wait for the interval, however many batches carried them.
#[test]
fn only_many_units_holding_a_share_of_the_budget_make_a_write_busy() {
    let max_permits = 8192;
    assert!(busy(64, 832, max_permits), "the default fleet's 64 units");
    assert!(busy(500, 6000, max_permits));
    assert!(
        !busy(200, 300, max_permits),
        "200 small batches of 10,000 devices: 300 KiB of a quarter budget of 8 MiB"
    );
    assert!(!busy(63, 4000, max_permits), "a few large batches wait too");
    assert!(
        !busy(1000, 1 << 20, usize::MAX),
        "no budget rule, no busy writes"
    );
    assert!(busy(64, 1, 4));
    assert!(!busy(64, 0, 4), "units that hold nothing are not load");
}
