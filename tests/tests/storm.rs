//! Fault 8, reconnect storm: every device connection drops at once and the
//! whole fleet reconnects. Pass when every device is back, nothing it sent
//! is lost or stored twice, and memory stays bounded.
//!
//! The drop is the server process going away and coming back on the same
//! address and data directory while every device holds a batch in flight:
//! by default SIGKILL (a crash, an OOM kill), or SIGTERM, a graceful drain
//! as in a deploy (`TILLSTREAM_STORM_DROP=term`). Either way every
//! connection goes at once, the new process knows no session and must
//! read each device's watermark from the store while the whole fleet dials
//! in with jittered backoff, and the resend-and-dedupe path runs at fleet
//! scale. A real process rather than an in-process `Server`: after
//! `Server::shutdown` returns, quinn keeps the old UDP socket until every
//! closed connection has drained (3 PTO, inflated by the RTTs of a loaded
//! machine: ~15 s with 2000 connections), so an in-process restart cannot
//! rebind the port in time, which a real restart never meets.
//!
//! Size: `TILLSTREAM_STORM_DEVICES` devices (default 500 in a debug build,
//! whose unoptimised TLS handshakes cost ~20 ms each on 2 cores, and 2000
//! in release); `tests/chaos/reconnect_storm.sh` runs 10,000 in release.
//! `TILLSTREAM_STORM_STRICT=1` also asserts that everyone was back within
//! 10 s of the drop (off by default: timing on a shared CI machine must not
//! fail a correctness test). `TILLSTREAM_STORM_IDLE_S` sets the devices'
//! QUIC idle timeout (default 5 s), which also bounds a handshake. The
//! server sets up `--max-handshakes` connections at once and refuses one
//! that waited past `--handshake-max-wait-ms` (see `engine/src/accept.rs`):
//! without that, 10,000 handshakes on 2 cores all slowed down together,
//! some outlived the devices' idle timeout and were redone, and the storm
//! fed on itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_client::{
    ClientConfig, ClientStats, DeviceClient, EndpointOptions, client_endpoint_with,
};
use tillstream_storage::verify::verify;
use tillstream_tests::fleet_util::*;
use tillstream_tests::*;

use crate::process::{ServeOpts, ServerProcess, metric_sum};

/// Batches per device: two before the drop, one in flight across it, one
/// after.
const BATCHES: u64 = 4;
const PER_BATCH: u32 = 5;
/// Devices sharing one client UDP socket (a site's NAT or gateway).
const DEVICES_PER_ENDPOINT: usize = 500;
/// Generous bound on anything the fleet waits for; the figures are printed.
const WAIT: Duration = Duration::from_secs(240);
/// The fault's pass criterion, checked only in strict mode.
const RECONNECT_TARGET: Duration = Duration::from_secs(10);
/// How often the reconnect watcher looks at every device's counters.
const POLL: Duration = Duration::from_millis(25);
/// Longest wait, after queueing the in-flight batches, for half of them to
/// be acknowledged before the drop.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// How the connections are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropBy {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGTERM (drain), then a restart.
    Term,
}

impl DropBy {
    fn from_env() -> Self {
        match std::env::var("TILLSTREAM_STORM_DROP").as_deref() {
            Ok("term") => DropBy::Term,
            _ => DropBy::Kill,
        }
    }
}

fn client_config(server: std::net::SocketAddr, device: u64, token: Vec<u8>) -> ClientConfig {
    let mut cfg = ClientConfig::new(server, device);
    cfg.token = token;
    cfg.max_inflight = 8;
    // A real device's defaults: the first retry after 25-50 ms, then
    // doubling with equal jitter up to 5 s, so a fleet that lost its
    // server at once spreads out; a device that failed a few times while
    // the server was down still retries well within the 10 s target.
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(10);
    cfg
}

/// The devices' QUIC settings: the client defaults, with the idle timeout
/// from `TILLSTREAM_STORM_IDLE_S` if set.
fn endpoint_options() -> EndpointOptions {
    let mut o = EndpointOptions::default();
    if let Some(s) = std::env::var("TILLSTREAM_STORM_IDLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        o.idle_timeout = Duration::from_secs(s);
    }
    o
}

/// Waits until every device's batch `seq` is acknowledged.
async fn wait_all(clients: &[Arc<DeviceClient>], seq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    for c in clients {
        let left = deadline.saturating_duration_since(Instant::now());
        c.wait_acked(seq, left)
            .await
            .map_err(|e| anyhow::anyhow!("device {}: batch {seq}: {e}", c.device()))?;
    }
    Ok(())
}

/// When one device noticed the drop and when it was back, after the drop.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Its session was lost (or it was already back).
    lost: Option<Duration>,
    /// A new session reached `Welcome`.
    back: Option<Duration>,
}

/// Watches every device from the drop at `t0` until all are back (or
/// `WAIT` passes), comparing their counters with `at_drop`.
async fn watch_reconnects(
    clients: Arc<Vec<Arc<DeviceClient>>>,
    at_drop: Vec<ClientStats>,
    t0: Instant,
) -> Vec<Seen> {
    let mut seen = vec![Seen::default(); clients.len()];
    let mut waiting: Vec<usize> = (0..clients.len()).collect();
    while !waiting.is_empty() && t0.elapsed() < WAIT {
        let now = t0.elapsed();
        waiting.retain(|&i| {
            let st = clients[i].stats();
            let s = &mut seen[i];
            let back = st.connects > at_drop[i].connects;
            if s.lost.is_none() && (back || st.disconnects > at_drop[i].disconnects) {
                s.lost = Some(now);
            }
            if back {
                s.back = Some(now);
            }
            !back
        });
        tokio::time::sleep(POLL).await;
    }
    seen
}

/// Runs blocking process control off the runtime's workers, which the
/// fleet's tasks need meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn fleet_stats(clients: &[Arc<DeviceClient>]) -> ClientStats {
    let mut all = ClientStats::default();
    for c in clients {
        all.merge(&c.stats());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reconnects_after_every_connection_drops_at_once() -> anyhow::Result<()> {
    let n = env_count(
        "TILLSTREAM_STORM_DEVICES",
        if cfg!(debug_assertions) { 500 } else { 2000 },
    );
    let strict = std::env::var("TILLSTREAM_STORM_STRICT").is_ok_and(|v| v == "1");
    let drop_by = DropBy::from_env();
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    opts.extra = vec!["--drain-timeout-s=5".into()];
    let first = {
        let o = opts.clone();
        blocking(move || ServerProcess::start(&o)).await?
    };
    let addr = opts.quic;

    // Stores of 100 devices, three tills to a sensor; each till has its own
    // terminal number within its store.
    let t0 = now_us() - 600_000_000;
    let scripts: Vec<DeviceScript> = (0..n)
        .map(|i| {
            let id = 10_000 + i as u64;
            let store = 1 + u32::try_from(i / 100).unwrap_or(u32::MAX - 1);
            script(id, store, i % 4 != 0, BATCHES, PER_BATCH, t0)
        })
        .collect();
    let prepared: Vec<Vec<_>> = scripts.iter().map(prepare).collect::<Result<_, _>>()?;
    let ca = std::fs::read(opts.cert_path())?;
    let endpoints = (0..n.div_ceil(DEVICES_PER_ENDPOINT))
        .map(|_| client_endpoint_with(&ca, addr, &endpoint_options()))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = Tokens::of_data_dir(&opts.data_dir).await?;
    let clients: Vec<Arc<DeviceClient>> = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ep = endpoints[i / DEVICES_PER_ENDPOINT].clone();
            let cfg = client_config(addr, s.device, tokens.script(s)?);
            anyhow::Ok(Arc::new(DeviceClient::start(ep, cfg)))
        })
        .collect::<Result<_, _>>()?;

    // Cold start: the fleet connects and delivers two batches each.
    let cold = Instant::now();
    for (c, p) in clients.iter().zip(&prepared) {
        for b in &p[..2] {
            c.send(b.clone()).await?;
        }
    }
    wait_all(&clients, 2).await?;
    let cold = cold.elapsed();
    let warm = fleet_stats(&clients);
    let first_hwm = first.proc_status_kib("VmHWM").unwrap_or(0);
    eprintln!(
        "storm: {n} devices on {} client sockets connected and delivered 2 batches each in {:.2} s; connects {}, connect failures {}, disconnects {}",
        endpoints.len(),
        cold.as_secs_f64(),
        warm.connects,
        warm.connect_failures,
        warm.disconnects,
    );

    // The fault: one more batch each is queued, and the server goes away
    // while those are on the wire, being applied or being acknowledged.
    for (c, p) in clients.iter().zip(&prepared) {
        c.send(p[2].clone()).await?;
    }
    // The drop lands when about half of them are acknowledged: the rest
    // are caught on the wire, in a shard, or committed but unacknowledged.
    let half_acked = Instant::now() + DROP_WAIT;
    while clients.iter().filter(|c| *c.acks().borrow() >= 3).count() < n / 2
        && Instant::now() < half_acked
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let acked_at_drop = clients.iter().filter(|c| *c.acks().borrow() >= 3).count();
    let at_drop: Vec<ClientStats> = clients.iter().map(|c| c.stats()).collect();
    let clients = Arc::new(clients);
    let cpu_test_at_drop = cpu_seconds("self");
    let drop_at = Instant::now();
    let watcher = tokio::spawn(watch_reconnects(clients.clone(), at_drop.clone(), drop_at));
    match drop_by {
        DropBy::Kill => {
            blocking(move || first.kill9().map(|_| ())).await?;
        }
        DropBy::Term => {
            let (status, _) = blocking(move || first.terminate(Duration::from_secs(60))).await?;
            anyhow::ensure!(status.success(), "serve exited with {status} on SIGTERM");
        }
    }
    let down = drop_at.elapsed();
    let server = {
        let o = opts.clone();
        blocking(move || ServerProcess::start(&o)).await?
    };
    let up = drop_at.elapsed();
    let seen = watcher.await?;
    let mem_clients_back = Mem::now();
    let cpu_test = cpu_seconds("self") - cpu_test_at_drop;
    let cpu_server = cpu_seconds(&server.pid().to_string());

    let never: Vec<u64> = seen
        .iter()
        .zip(clients.iter())
        .filter(|(s, _)| s.back.is_none())
        .map(|(_, c)| c.device())
        .collect();
    if let Some(first_missing) = never.first() {
        let stats = clients
            .iter()
            .find(|c| c.device() == *first_missing)
            .map(|c| c.stats());
        anyhow::bail!(
            "{} of {n} devices never reconnected (first: {:?}); one's counters: {stats:?}",
            never.len(),
            &never[..never.len().min(10)],
        );
    }
    let sorted = |f: &dyn Fn(&Seen) -> Option<Duration>| {
        let mut v: Vec<Duration> = seen.iter().filter_map(f).collect();
        v.sort_unstable();
        v
    };
    let times = sorted(&|s| s.back);
    let noticed = sorted(&|s| s.lost);
    let redial = sorted(&|s| Some(s.back?.saturating_sub(s.lost?)));
    let last = times.last().copied().unwrap_or_default();
    let storm = fleet_stats(&clients);
    let mut failures = std::collections::BTreeMap::<String, u64>::new();
    for (c, before) in clients.iter().zip(&at_drop) {
        let now = c.stats();
        let more = now.connect_failures - before.connect_failures;
        if more > 0 {
            let full = now.last_error.as_deref().unwrap_or("?");
            let why = reason_label(full);
            if !failures.contains_key(&why) {
                eprintln!("storm: first failure of its kind: {full}");
            }
            *failures.entry(why).or_default() += more;
        }
    }
    let server_back_hwm = server.proc_status_kib("VmHWM").unwrap_or(0);
    let server_back_rss = server.proc_status_kib("VmRSS").unwrap_or(0);
    // (`Threads:` is a count; the parser only reads the number.)
    let server_back_threads = server.proc_status_kib("Threads").unwrap_or(0);

    // After the storm: the last batch of every device, then everything
    // must be acknowledged, stored once, and consistent.
    for (c, p) in clients.iter().zip(&prepared) {
        c.send(p[3].clone()).await?;
    }
    wait_all(&clients, BATCHES).await?;
    let fleet = fleet_stats(&clients);
    let metrics = server.get("/metrics")?.1;
    let server_rss = server.proc_status_kib("VmRSS").unwrap_or(0);
    let server_hwm = server.proc_status_kib("VmHWM").unwrap_or(0);
    let server_threads = server.proc_status_kib("Threads").unwrap_or(0);
    let mem_clients = Mem::now();
    // Devices go first, so the drain has nothing left to wait for.
    drop(clients);
    let data = opts.data_dir.clone();
    let (status, _) = blocking(move || server.terminate(Duration::from_secs(60))).await?;
    anyhow::ensure!(status.success(), "serve exited with {status}");
    let store = open_recovered(&data)?;
    let report = verify(&store, Some(&manifest(&scripts)))?;

    let events = total_events(&scripts);
    let after_up = last.saturating_sub(up);
    eprintln!(
        "storm: drop by {drop_by:?}: old server gone {:.2} s, new server healthy {:.2} s after the drop",
        down.as_secs_f64(),
        up.as_secs_f64(),
    );
    let pct = |v: &[Duration]| {
        format!(
            "p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
            percentile(v, 50).as_secs_f64(),
            percentile(v, 90).as_secs_f64(),
            percentile(v, 99).as_secs_f64(),
            percentile(v, 100).as_secs_f64()
        )
    };
    eprintln!(
        "storm: devices noticed the drop after {}; were back {} after noticing",
        pct(&noticed),
        pct(&redial)
    );
    eprintln!(
        "storm: reconnected after the drop: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, last {:.2} s (all within 10 s: {})",
        percentile(&times, 50).as_secs_f64(),
        percentile(&times, 90).as_secs_f64(),
        percentile(&times, 99).as_secs_f64(),
        last.as_secs_f64(),
        last <= RECONNECT_TARGET,
    );
    eprintln!(
        "storm: {:.0} connections/s from the drop to the last reconnect; {:.0} connections/s from the new server being healthy",
        n as f64 / last.as_secs_f64().max(1e-3),
        n as f64 / after_up.as_secs_f64().max(1e-3),
    );
    eprintln!(
        "storm: during the storm: connect failures {} (by the device's last error: {failures:?}), retryable rejects {:?}, errors {:?}",
        storm.connect_failures - warm.connect_failures,
        storm.rejects_by_code,
        storm.errors_by_code,
    );
    eprintln!(
        "storm: CPU from the drop until all were back: new server process {cpu_server:.1} s, test process (clients) {cpu_test:.1} s",
    );
    // Each device had one batch in flight: acknowledged before the drop,
    // committed but unacknowledged (settled by the new `Welcome`), or lost
    // with the old process and resent.
    let resent = storm.resent_batches - at_drop.iter().map(|s| s.resent_batches).sum::<u64>();
    eprintln!(
        "storm: in-flight batches: {acked_at_drop} acknowledged before the drop, {} settled by the new server's Welcome, {resent} resent",
        (n - acked_at_drop) as u64 - resent.min((n - acked_at_drop) as u64),
    );
    eprintln!(
        "storm: client totals: connects {}, reconnects {}, resent batches {}, acked batches {}, acked events {} of {events}, stale {}, refused {}, watermark regressions {}",
        fleet.connects,
        fleet.reconnects,
        fleet.resent_batches,
        fleet.acked_batches,
        fleet.acked_events,
        fleet.stale_batches,
        fleet.refused_batches,
        fleet.watermark_regressions,
    );
    eprintln!(
        "storm: new server: batches received {}, of which duplicates {}, sessions refused {}",
        metric_sum(&metrics, "tillstream_batches_received_total"),
        metric_sum(&metrics, "tillstream_batches_duplicate_total"),
        metric_sum(&metrics, "tillstream_sessions_refused_total"),
    );
    eprintln!(
        "storm: verify ok {}, events {} of {events}, batches {}, missing {}, duplicates {}",
        report.ok, report.events, report.batches, report.missing, report.duplicates
    );
    eprintln!(
        "storm: server RSS MiB: first process peak {:.0}; new process {:.0} (peak {:.0}, {server_back_threads} threads) when all were back, {:.0} (peak {:.0}, {server_threads} threads) at the end",
        mib(first_hwm),
        mib(server_back_rss),
        mib(server_back_hwm),
        mib(server_rss),
        mib(server_hwm),
    );
    eprintln!(
        "storm: test process (the {n} clients) RSS MiB: {:.0} when all were back, {:.0} at the end; peak {:.0}",
        mib(mem_clients_back.rss_kib),
        mib(mem_clients.rss_kib),
        mib(mem_clients.hwm_kib),
    );

    // One line for tests/chaos/reconnect_storm.sh to collect.
    eprintln!(
        "storm-summary devices={n} drop={drop_by:?} reconnect_p50_s={:.2} reconnect_p99_s={:.2} reconnect_last_s={:.2} conn_per_s={:.0} connect_failures={} server_peak_mib={:.0} clients_peak_mib={:.0} acked_events={} missing={} duplicates={} verify_ok={}",
        percentile(&times, 50).as_secs_f64(),
        percentile(&times, 99).as_secs_f64(),
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-3),
        storm.connect_failures - warm.connect_failures,
        mib(first_hwm.max(server_hwm)),
        mib(mem_clients.hwm_kib),
        fleet.acked_events,
        report.missing,
        report.duplicates,
        report.ok,
    );

    assert!(report.ok, "verify failed: {report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.events, events, "every event stored exactly once");
    assert_eq!(report.batches, n as u64 * BATCHES);
    assert_eq!(fleet.acked_batches, n as u64 * BATCHES);
    assert_eq!(fleet.acked_events, events);
    assert_eq!(fleet.stale_batches + fleet.refused_batches, 0, "{fleet:?}");
    assert_eq!(fleet.watermark_regressions, 0, "{fleet:?}");
    assert!(fleet.reconnects >= n as u64, "{fleet:?}");
    // Bounded memory: each server process stays within a fixed base plus
    // an allowance per device, several times what a run uses (~100 KiB per
    // device at 10,000, with transparent huge pages) so it cannot flake,
    // yet far below what an unbounded queue or a leak per reconnect would
    // need. The test process holds every client, so it is only reported.
    let bound_kib = 1024 * 1024 + n as u64 * 256;
    let peak = first_hwm.max(server_hwm);
    assert!(
        peak < bound_kib,
        "server peak RSS {:.0} MiB above the bound {:.0} MiB",
        mib(peak),
        mib(bound_kib)
    );
    if strict {
        assert!(
            last <= RECONNECT_TARGET,
            "the last device reconnected {:.2} s after the drop",
            last.as_secs_f64()
        );
    }
    Ok(())
}
