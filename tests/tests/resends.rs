//! Resends: a batch sent again under a seq already admitted is
//! acknowledged only if it is the batch stored under that seq (its digest,
//! in the device's recent batches or in the batch ledger); otherwise it is
//! refused, for good or (when the ledger cannot be read) for now.

use std::time::Duration;

use tillstream_protocol::frame::decode;
use tillstream_protocol::*;
use tillstream_tests::*;

use crate::bad_clients::{Raw, dead_letters, expect_error, good_batch, other_batch, read};

/// A resend was recognised by its seq alone: a batch with a seq already
/// used but other bytes (a device that lost its counter, or another one
/// saying Hello with its id) was acknowledged and dropped, and so was a
/// seq below the watermark that was never stored (after an impostor leapt
/// ahead). Both are now refused with `seq_conflict` and kept as dead
/// letters; a true resend is still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_seq_with_other_content_is_refused_not_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let mut raw = Raw::open(&server, 90).await?;
    let ack = |payload: &frame::PayloadBuf| decode::<Ack>(payload).map(|a| a.durable_seq);

    let first = good_batch(1)?;
    raw.send.write_all(&first).await?;
    let (t, p) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Ack && ack(&p)? == 1, "batch 1 acked");

    // Same seq, other events (other timestamps): refused.
    let other = other_batch(&first, 1).await?;
    raw.send.write_all(&other).await?;
    expect_error(&mut raw.recv, ErrorCode::SeqConflict).await?;

    // The very same bytes again: a true resend, acknowledged.
    raw.send.write_all(&first).await?;
    let (t, p) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Ack && ack(&p)? == 1, "a true resend is acked");

    // An impostor leaps ahead; a seq between that was never stored is
    // refused instead of acknowledged and lost.
    raw.send.write_all(&good_batch(1000)?).await?;
    let (t, p) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Ack && ack(&p)? == 1000, "batch 1000 acked");
    caught_up(&server).await?;
    raw.send.write_all(&good_batch(500)?).await?;
    expect_error(&mut raw.recv, ErrorCode::SeqConflict).await?;

    let codes = dead_letters(&server, 2).await?;
    assert_eq!(
        codes
            .iter()
            .filter(|&&c| c == ErrorCode::SeqConflict.as_u16())
            .count(),
        2,
        "{codes:?}"
    );
    server.shutdown().await?;
    Ok(())
}

/// Sends more fresh batches than the recent digests keep, and waits for
/// their acks: a resend of batch 1 (returned) is then checked against the
/// ledger.
async fn send_past_recent_digests(raw: &mut Raw) -> anyhow::Result<Vec<u8>> {
    let n = tillstream_engine_core::ledger::RecentDigests::CAPACITY as u64 + 10;
    let first = good_batch(1)?;
    let mut frames = first.clone();
    for seq in 2..=n {
        frames.extend(good_batch(seq)?);
    }
    raw.send.write_all(&frames).await?;
    let mut durable = 0;
    while durable < n {
        let (t, p) = read(&mut raw.recv).await?;
        anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
        durable = decode::<Ack>(&p)?.durable_seq;
    }
    Ok(first)
}

/// A batch under an old seq that the device's recent digests no longer
/// hold (after a restart, or past their 128) was checked against the
/// ledger by its seq alone: a device that lost its counter had a new
/// batch acknowledged as a resend, and dropped. The ledger keeps each
/// batch's digest now: other bytes are refused, the same acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_seq_with_other_content_is_refused_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 1).await?;
    let mut raw = Raw::open(&server, 94).await?;
    let first = good_batch(1)?;
    raw.send.write_all(&first).await?;
    let (t, _) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Ack, "batch 1 acked");
    server.shutdown().await?;

    // The restarted server knows batch 1 from its ledger alone.
    let server = start_server(dir.path(), 1).await?;
    let mut raw = Raw::open_at(&server, 94, 1).await?;
    let other = other_batch(&first, 1).await?;
    raw.send.write_all(&other).await?;
    expect_error(&mut raw.recv, ErrorCode::SeqConflict).await?;
    raw.send.write_all(&first).await?;
    let (t, p) = read(&mut raw.recv).await?;
    anyhow::ensure!(
        t == MsgType::Ack && decode::<Ack>(&p)?.durable_seq == 1,
        "the true resend is acknowledged"
    );
    server.shutdown().await?;
    Ok(())
}

/// A batch ledger that cannot be read, as a cluster without a quorum.
#[derive(Debug)]
struct LedgerUnreadable;

impl tillstream_engine::faults::CommitFault for LedgerUnreadable {
    fn ledger_digest(&self, _device: u64, _seq: u64) -> Result<(), tillstream_storage::StoreError> {
        Err(tillstream_storage::StoreError::Backend {
            op: "reading the batch ledger",
            source: "injected: no quorum".into(),
        })
    }
}

/// An old resend whose ledger row cannot be read was acknowledged
/// unchecked: a batch never stored would have been taken for stored. It
/// now gets a retryable `store_unavailable` naming its seq, so the device
/// keeps it and sends it again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_resend_that_cannot_be_checked_is_refused_for_now() -> anyhow::Result<()> {
    use tillstream_engine::faults::{FaultyStore, StoreLayer};
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.faults.store_layer = Some(StoreLayer(std::sync::Arc::new(|inner| {
        std::sync::Arc::new(FaultyStore::new(inner, LedgerUnreadable))
    })));
    let server = tillstream_engine::Server::start(cfg).await?;
    let mut raw = Raw::open(&server, 93).await?;
    let first = send_past_recent_digests(&mut raw).await?;
    raw.send.write_all(&first).await?;
    let (t, p) = read(&mut raw.recv).await?;
    anyhow::ensure!(t == MsgType::Error, "an unchecked resend got {t:?}");
    let e = decode::<Error>(&p)?;
    assert_eq!(
        e.code,
        ErrorCode::StoreUnavailable.as_u16(),
        "{:?}",
        e.reason
    );
    assert_eq!(e.batch_seq, 1);
    assert!(ErrorCode::StoreUnavailable.is_retryable());
    server.shutdown().await?;
    Ok(())
}

/// A resend older than the device's recent digests is checked against the
/// batch ledger in the tables, which trail the journal: right after its
/// ack the tables may not hold it yet, and it must still be acknowledged,
/// not refused as a seq that was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_resend_is_acked_even_before_the_tables_hold_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    // The tables trail the journal by seconds.
    cfg.flush_interval = Duration::from_secs(3);
    let server = tillstream_engine::Server::start(cfg).await?;
    let mut raw = Raw::open(&server, 92).await?;
    let first = send_past_recent_digests(&mut raw).await?;
    // Batch 1 again, at once: acked, not refused.
    raw.send.write_all(&first).await?;
    let (t, p) = read(&mut raw.recv).await?;
    if t == MsgType::Error {
        anyhow::bail!(
            "an old resend was refused: {:?}",
            decode::<Error>(&p)?.reason
        );
    }
    anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
    server.shutdown().await?;
    Ok(())
}
