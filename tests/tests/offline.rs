//! Fault 9, a long offline device: a till (and the shelf sensor next to
//! it) buffered a day of batches; half of them were acknowledged before the
//! outage, and the device comes back having lost its acknowledgement state
//! (a reboot), so it replays every batch from seq 1. Pass when nothing is
//! stored twice, nothing is missing, and the stock and rollup invariants
//! hold.
//!
//! The store had a live sensor all along, so the day-old shelf counts land
//! far behind their SKUs' newest events: the late-window rule refuses them
//! (`count_too_late`), which is allowed, but each must be kept as a
//! rejected row, never dropped.
//!
//! Size: `TILLSTREAM_OFFLINE_BATCHES` till batches (default 960, one every
//! 90 s over the day) of 20 events; the sensor has a quarter as many.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tillstream_storage::query::RowRef;
use tillstream_storage::verify::verify;
use tillstream_storage::{Store, Table};
use tillstream_tests::fleet_util::*;
use tillstream_tests::*;

const PER_BATCH: u32 = 20;
const STORE: u32 = 7;
const HOUR_US: i64 = 3_600_000_000;
/// Batches the device had written but not seen acknowledged when it went
/// dark: the server may or may not hold them.
const IN_FLIGHT_AT_OUTAGE: usize = 8;
const WAIT: Duration = Duration::from_secs(300);

/// One device's first life: the first half of its day sent and
/// acknowledged, a few more on the wire when it goes dark. Returns the
/// durable seq it had seen and the events it was told were rejected.
async fn first_life(
    endpoint: &tillstream_client::ClientEndpoint,
    server: std::net::SocketAddr,
    tokens: &Tokens,
    s: &DeviceScript,
) -> anyhow::Result<(u64, u64)> {
    let prepared = prepare(s)?;
    let half = prepared.len() / 2;
    let dev = device(endpoint, server, s.device, tokens.script(s)?);
    for b in &prepared[..half] {
        dev.send(b.clone()).await?;
    }
    dev.wait_acked(half as u64, WAIT).await?;
    for b in prepared.iter().skip(half).take(IN_FLIGHT_AT_OUTAGE) {
        dev.send(b.clone()).await?;
    }
    let acked = *dev.acks().borrow();
    let rejected = dev.stats().rejected_events;
    dev.close().await;
    Ok((acked, rejected))
}

/// What one device's replay took.
#[derive(Debug)]
struct Replay {
    device: u64,
    batches: u64,
    events: u64,
    /// From the first send to the last ack.
    total: Duration,
    stats: tillstream_client::ClientStats,
}

/// The rebooted device: a new client that replays every batch from seq 1.
async fn replay(
    endpoint: tillstream_client::ClientEndpoint,
    server: std::net::SocketAddr,
    tokens: Tokens,
    s: DeviceScript,
) -> anyhow::Result<Replay> {
    let prepared = prepare(&s)?;
    let last = prepared.len() as u64;
    let mut cfg = tillstream_client::ClientConfig::new(server, s.device);
    cfg.token = tokens.script(&s)?;
    cfg.replay = true;
    cfg.max_inflight = 64;
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(500);
    let t0 = Instant::now();
    let dev = tillstream_client::DeviceClient::start(endpoint, cfg);
    for b in prepared {
        dev.send(b).await?;
    }
    dev.wait_acked(last, WAIT).await?;
    let total = t0.elapsed();
    let stats = dev.stats();
    dev.close().await;
    Ok(Replay {
        device: s.device,
        batches: last,
        events: total_events(std::slice::from_ref(&s)),
        total,
        stats,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_for_a_day_replays_everything_and_nothing_is_stored_twice()
-> anyhow::Result<()> {
    day_offline(false).await
}

/// The same, with a server restart during the outage: the devices'
/// ledgers come from the store, not from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_offline_across_a_server_restart_is_deduplicated_from_the_store() -> anyhow::Result<()>
{
    day_offline(true).await
}

async fn day_offline(restart: bool) -> anyhow::Result<()> {
    let label = if restart {
        "offline+restart"
    } else {
        "offline"
    };
    let till_batches = env_count("TILLSTREAM_OFFLINE_BATCHES", 960) as u64;
    let dir = tempfile::tempdir()?;
    let mut server = start_server(dir.path(), 2).await?;
    // The key lives in the data directory: the same after the restart.
    let tokens = Tokens::of(&server)?;
    let mut endpoint = endpoint_for(&server)?;
    let mut addr = server.quic_addr();
    let now = now_us();

    // The store's live sensor, reporting in the last ten minutes: every
    // SKU's newest event is recent.
    let live = script(7001, STORE, false, 20, PER_BATCH, now - HOUR_US / 6);
    {
        let dev = device(&endpoint, addr, live.device, tokens.script(&live)?);
        for b in prepare(&live)? {
            dev.send(b).await?;
        }
        dev.wait_acked(live.batches.len() as u64, WAIT).await?;
        dev.close().await;
    }

    // The offline pair: a day of events, the newest 20 minutes old.
    let start = now - 24 * HOUR_US;
    let span = 24 * HOUR_US - HOUR_US / 3;
    let mut till = script(7100, STORE, true, till_batches, PER_BATCH, start);
    spread(&mut till, start, span, 1_000_000);
    let mut sensor = script(
        7101,
        STORE,
        false,
        (till_batches / 4).max(2),
        PER_BATCH,
        start,
    );
    spread(&mut sensor, start, span, 1_000_000);
    let offline = [till, sensor];

    let mut acked_before = BTreeMap::new();
    let mut told_rejected = 0;
    for s in &offline {
        let (acked, rejected) = first_life(&endpoint, addr, &tokens, s).await?;
        acked_before.insert(s.device, acked);
        told_rejected += rejected;
    }
    if restart {
        // Graceful: what was on the wire is committed or dropped first.
        server.shutdown().await?;
        server = start_server(dir.path(), 2).await?;
        endpoint = endpoint_for(&server)?;
        addr = server.quic_addr();
    }
    // What the server holds when the devices come back: what they saw
    // acknowledged, and maybe some of what was on the wire.
    caught_up(&server).await?;
    let store = server.store();
    let mut held = BTreeMap::new();
    for s in &offline {
        held.insert(s.device, settled_watermark(&*store, s.device).await?);
    }

    let t0 = Instant::now();
    let mut replays = tokio::task::JoinSet::new();
    for s in &offline {
        replays.spawn(replay(endpoint.clone(), addr, tokens.clone(), s.clone()));
    }
    let mut done = Vec::new();
    while let Some(r) = replays.join_next().await {
        done.push(r??);
    }
    let replay_all = t0.elapsed();
    done.sort_by_key(|r| r.device);

    let mut scripts = vec![live];
    scripts.extend(offline);
    let expected = manifest(&scripts);
    caught_up(&server).await?;
    let report = verify(&*store, Some(&expected))?;
    let mut rejected_rows = BTreeMap::<String, u64>::new();
    store.scan(Table::RejectedEvents, &mut |row| {
        if let RowRef::Rejected(r) = row {
            *rejected_rows.entry(r.reason.clone()).or_default() += 1;
        }
    })?;

    for r in &done {
        let held = held[&r.device];
        // Held batches queued before the `Welcome` are settled by its
        // watermark without being sent; the rest go over the wire again and
        // the server must recognise each as a duplicate.
        let fresh = r.batches - held;
        eprintln!(
            "{label}: device {}: {} batches, {} events; acknowledged before the outage {}, held by the server {}; replay: {} batches written, {} of them duplicates deduplicated by the server; all acknowledged after {:.3} s: {:.0} batches/s, {:.0} events/s",
            r.device,
            r.batches,
            r.events,
            acked_before[&r.device],
            held,
            r.stats.batches_written,
            r.stats.batches_written.saturating_sub(fresh),
            r.total.as_secs_f64(),
            r.batches as f64 / r.total.as_secs_f64(),
            r.events as f64 / r.total.as_secs_f64(),
        );
        eprintln!(
            "{label}: device {}: client: acked batches {}, acked events {}, stale {}, refused {}, reconnects {}",
            r.device,
            r.stats.acked_batches,
            r.stats.acked_events,
            r.stats.stale_batches,
            r.stats.refused_batches,
            r.stats.reconnects,
        );
    }
    let replayed_batches: u64 = done.iter().map(|r| r.batches).sum();
    let replayed_events: u64 = done.iter().map(|r| r.events).sum();
    told_rejected += done.iter().map(|r| r.stats.rejected_events).sum::<u64>();
    eprintln!(
        "{label}: both replays: {replayed_batches} batches, {replayed_events} events in {:.3} s: {:.0} batches/s, {:.0} events/s",
        replay_all.as_secs_f64(),
        replayed_batches as f64 / replay_all.as_secs_f64(),
        replayed_events as f64 / replay_all.as_secs_f64(),
    );
    eprintln!(
        "{label}: rejected rows stored by reason {rejected_rows:?}; rejections the devices were told of in acks: {told_rejected}"
    );
    eprintln!(
        "{label}: verify ok {}, events {} of {}, batches {} of {}, missing {}, duplicates {}, stock mismatches {}, rollup mismatches {}",
        report.ok,
        report.events,
        total_events(&scripts),
        report.batches,
        expected.len(),
        report.missing,
        report.duplicates,
        report.stock_mismatches,
        report.rollup_mismatches,
    );

    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.missing, 0);
    assert_eq!(
        report.events,
        total_events(&scripts),
        "every event stored exactly once, as a row or as a rejected row"
    );
    assert_eq!(report.batches, expected.len() as u64);
    for r in &done {
        assert!(
            held[&r.device] >= r.batches / 2,
            "half of the day was acknowledged before the outage"
        );
        assert_eq!(r.stats.acked_batches, r.batches, "{:?}", r.stats);
        assert_eq!(r.stats.stale_batches + r.stats.refused_batches, 0);
        assert_eq!(r.stats.watermark_regressions, 0);
    }
    // The late-window rule was exercised, and kept what it refused.
    assert!(
        rejected_rows.get("count_too_late").is_some_and(|&n| n > 0),
        "{rejected_rows:?}"
    );
    // And told the devices: refusals decided by a shard at apply time are
    // in the acks too. Not all of them: a batch stored before the outage
    // whose ack never arrived is settled by `Welcome`, which names no
    // events.
    let stored_rejected: u64 = rejected_rows.values().sum();
    assert!(
        told_rejected > 0 && told_rejected <= stored_rejected,
        "told {told_rejected} of {stored_rejected} refusals"
    );
    assert_eq!(
        rejected_rows.keys().collect::<Vec<_>>(),
        ["count_too_late"],
        "only day-old shelf counts may be refused"
    );
    drop(store);
    server.shutdown().await?;
    Ok(())
}

/// The device's durable seq once the batches it had on the wire have
/// settled (committed or dropped with their connection).
async fn settled_watermark(store: &dyn Store, device: u64) -> anyhow::Result<u64> {
    let mut last = store.watermark(device)?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = store.watermark(device)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}
