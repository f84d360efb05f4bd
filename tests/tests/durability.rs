//! Acks mean durable: when the store cannot sync, acknowledgements stop,
//! devices are told why, and everything acknowledged before is intact.

use std::time::Duration;

use tillstream_engine::Server;
use tillstream_storage::verify::{ExpectedBatch, verify};
use tillstream_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_acks_and_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 2);
    cfg.faults.fail_sync_after = Some(4);
    let server = Server::start(cfg).await?;
    let endpoint = endpoint_for(&server)?;
    let s = script(300, 1, true, 40, 10, now_us() - 60_000_000);
    let dev = device(
        &endpoint,
        server.quic_addr(),
        s.device,
        Tokens::of(&server)?.script(&s)?,
    );
    for b in prepare(&s)? {
        // Sends stop once the window is full of batches never acked.
        if tokio::time::timeout(Duration::from_secs(2), dev.send(b))
            .await
            .is_err()
        {
            break;
        }
    }
    let acked_all = dev.wait_acked(40, Duration::from_secs(3)).await;
    assert!(acked_all.is_err(), "a poisoned store must not acknowledge");
    let acked = *dev.acks().borrow();
    assert!(acked < 40);
    let stats = dev.stats();
    assert!(
        stats
            .errors_by_code
            .contains_key(&tillstream_protocol::ErrorCode::StoreUnavailable.as_u16())
            || stats
                .rejects_by_code
                .contains_key(&tillstream_protocol::ErrorCode::StoreUnavailable.as_u16()),
        "the device is told the store is unavailable: {stats:?}"
    );
    dev.close().await;
    let store = server.store();
    assert!(store.check_writable().is_err(), "the store is poisoned");
    server.shutdown().await?;
    drop(store);

    // Reopened without the fault: every batch that was acknowledged is there.
    let store = open_recovered(dir.path())?;
    let expected: Vec<ExpectedBatch> = s
        .batches
        .iter()
        .take(usize::try_from(acked)?)
        .map(|b| ExpectedBatch {
            device: s.device,
            seq: b.seq,
            events: u32::try_from(b.events.len()).unwrap_or(u32::MAX),
        })
        .collect();
    let report = verify(&store, Some(&expected))?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.missing, 0);
    Ok(())
}
