//! Fault 5, bad networks: devices reach the server only through
//! `tillstream-chaos-relay` (a real process: this kernel has no netem),
//! which drops 5% of the datagrams, delays the rest by 100 ± 50 ms (so
//! they arrive out of order), and cuts the link entirely for 30 s. Every
//! event must still be acknowledged, and stored, exactly once.
//!
//! The timeline, from the relay's start (seconds, each overridable, see
//! [`Plan::from_env`]): lossy 0..10, partitioned 10..40, lossy again
//! 40..45 (devices reconnect through loss), clean from 45; each device
//! creates a batch every second until 55. A 30 s partition is six client
//! idle timeouts (5 s), so every connection dies and every device must
//! reconnect with backoff and resend.
//!
//! Ack latency is reported (not asserted: timing on a shared 2-core
//! machine is no verdict) per batch from the moment the device created it,
//! which counts the time it waited for a link, and from its first write to
//! a stream, as the loadgen measures it; grouped by the phase the batch was
//! created in.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tillstream_client::{ClientConfig, ClientEvent, ClientStats, DeviceClient, client_endpoint};
use tillstream_storage::verify::{ExpectedBatch, verify};
use tillstream_tests::relay::{Faults, Relay, RelayConfig, RelayStats};
use tillstream_tests::*;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The run's shape; every field can be set from the environment
/// (`TILLSTREAM_BADNET_<FIELD>`, seconds for times), for longer runs in
/// release (`tests/chaos/bad_network.sh`).
#[derive(Debug, Clone)]
struct Plan {
    devices: u64,
    /// Client QUIC endpoints (UDP sockets), so the relay and the server
    /// see several peers.
    endpoints: u64,
    every: Duration,
    events_per_batch: u32,
    partition_after: Duration,
    partition_for: Duration,
    faults_for: Duration,
    send_for: Duration,
    /// After the last batch is created, how long every ack may take.
    drain: Duration,
    loss: f64,
    seed: u64,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(format!("TILLSTREAM_BADNET_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Plan {
    fn from_env() -> Self {
        let s = |name: &str, d: f64| Duration::from_secs_f64(env_f64(name, d).max(0.0));
        let partition_after = s("PARTITION_AFTER_S", 10.0);
        let partition_for = s("PARTITION_FOR_S", 30.0);
        let faults_for = s(
            "FAULTS_FOR_S",
            (partition_after + partition_for).as_secs_f64() + 5.0,
        );
        let send_for = s("SEND_FOR_S", faults_for.as_secs_f64() + 10.0);
        Self {
            devices: env_f64("DEVICES", 100.0) as u64,
            endpoints: (env_f64("ENDPOINTS", 4.0) as u64).max(1),
            every: s("EVERY_S", 1.0).max(Duration::from_millis(10)),
            events_per_batch: (env_f64("EVENTS_PER_BATCH", 5.0) as u32).max(1),
            partition_after,
            partition_for,
            faults_for,
            send_for,
            drain: s("DRAIN_S", 30.0),
            loss: env_f64("LOSS", 0.05),
            seed: env_f64("SEED", 1.0) as u64,
        }
    }

    fn batches_per_device(&self) -> u64 {
        (self.send_for.as_secs_f64() / self.every.as_secs_f64()).ceil() as u64
    }

    /// When batch `i` (from 0) of device number `d` is created, after the
    /// relay's start: a first second for the handshakes, then devices
    /// spread evenly over each interval.
    fn created(&self, d: u64, i: u64) -> Duration {
        let spread = self.every.mul_f64(d as f64 / self.devices as f64);
        Duration::from_secs(1) + spread + self.every * u32::try_from(i).unwrap_or(u32::MAX)
    }

    /// Which phase a batch created at `t` belongs to.
    fn bucket(&self, t: Duration) -> usize {
        if t < self.partition_after {
            0
        } else if t < self.partition_after + self.partition_for {
            1
        } else if t < self.faults_for {
            2
        } else {
            3
        }
    }
}

const BUCKETS: [&str; 4] = [
    "lossy, before the partition",
    "partitioned",
    "lossy, after the partition",
    "clean, after the faults",
];

/// Kills the relay if the test ends without stopping it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The relay process and what it printed.
struct RelayProc {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// When its `listening` line was read: its schedule's origin, give or
    /// take a few milliseconds.
    started: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl RelayProc {
    async fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_tillstream-chaos-relay"))
                .args(args)
                .arg("--exit-on-stdin-close")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting tillstream-chaos-relay")?,
        );
        let stdout = child.0.stdout.take().context("relay stdout")?;
        let stdin = child.0.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reader = std::thread::spawn({
            let lines = lines.clone();
            move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("relay listening on ")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send((a.trim().to_owned(), Instant::now()));
                    }
                    eprintln!("[relay] {line}");
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }
        });
        let (addr, started) = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("the relay did not print its address")?
            .context("the relay exited before printing its address")?;
        Ok(Self {
            child,
            stdin,
            addr: addr.parse().context("the relay's address")?,
            started,
            lines,
            reader,
        })
    }

    /// Closes its standard input, which stops it, and reads its summary.
    async fn stop(mut self) -> anyhow::Result<RelayStats> {
        drop(self.stdin.take());
        let reader = self.reader;
        // Its output ends when it exits; a relay that hangs is killed when
        // `self.child` drops.
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || reader.join()),
        )
        .await
        .context("the relay did not stop when its stdin closed")??
        .map_err(|_| anyhow::anyhow!("the relay's reader panicked"))?;
        let status = self.child.0.wait()?;
        anyhow::ensure!(status.success(), "the relay exited with {status}");
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let summary = lines
            .iter()
            .find_map(|l| l.strip_prefix("relay summary "))
            .context("no relay summary")?;
        Ok(serde_json::from_str(summary)?)
    }
}

/// One acknowledged batch, as the device client reported it.
struct AckRecord {
    device: u64,
    seq: u64,
    at: Instant,
    first_sent: Option<Instant>,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn line(name: &str, mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    format!(
        "{name:<30} {:>6} batches  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        pct(&v, 50.0).as_secs_f64() * 1e3,
        pct(&v, 99.0).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

/// Prints the ack latencies by the phase each batch was created in.
fn report_latency(plan: &Plan, origin: Instant, acks: &[AckRecord]) {
    // [bucket][from creation, from first write]. Two more than the
    // phases: 4, created once the clean link had 2 s to settle (QUIC's RTT
    // estimate and the retransmissions of what was lost just before still
    // count at first); 5, created over 2 s before the partition, so loss
    // and delay alone.
    let mut by: Vec<[Vec<Duration>; 2]> = (0..6).map(|_| Default::default()).collect();
    let settled = plan.faults_for + Duration::from_secs(2);
    let lossy_only = plan.partition_after.saturating_sub(Duration::from_secs(2));
    for a in acks {
        let created = plan.created(a.device - DEVICE_BASE, a.seq - 1);
        let mut buckets = vec![plan.bucket(created)];
        if created >= settled {
            buckets.push(4);
        }
        if created < lossy_only && !plan.partition_for.is_zero() {
            buckets.push(5);
        }
        for b in buckets {
            by[b][0].push(a.at.saturating_duration_since(origin + created));
            if let Some(t) = a.first_sent {
                by[b][1].push(a.at.saturating_duration_since(t));
            }
        }
    }
    for (k, title) in ["from creation", "from first write"].iter().enumerate() {
        eprintln!("ack latency {title} (by the phase the batch was created in):");
        let mut during = Vec::new();
        for (b, name) in BUCKETS.iter().enumerate() {
            eprintln!("  {}", line(name, by[b][k].clone()));
            if b < 3 {
                during.extend_from_slice(&by[b][k]);
            }
        }
        eprintln!("  {}", line("DURING the faults", during));
        eprintln!(
            "  {}",
            line("  lossy only, >2 s before cut", by[5][k].clone())
        );
        eprintln!("  {}", line("AFTER the faults", by[3][k].clone()));
        eprintln!(
            "  {}",
            line("AFTER the faults, from +2 s", by[4][k].clone())
        );
    }
}

const DEVICE_BASE: u64 = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_acked_exactly_once_through_loss_delay_and_partition() -> anyhow::Result<()>
{
    let plan = Plan::from_env();
    let wall = Instant::now();
    eprintln!("plan: {plan:?}");
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), 2).await?;
    let tokens = Tokens::of(&server)?;
    let ca = std::fs::read(server.cert_path())?;

    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let mut args = vec![
        "--server".to_owned(),
        server.quic_addr().to_string(),
        "--loss".to_owned(),
        plan.loss.to_string(),
        "--seed".to_owned(),
        plan.seed.to_string(),
        "--faults-for-s".to_owned(),
        secs(plan.faults_for),
        "--stats-every-s".to_owned(),
        "10".to_owned(),
    ];
    if !plan.partition_for.is_zero() {
        args.extend([
            "--partition-after-s".to_owned(),
            secs(plan.partition_after),
            "--partition-for-s".to_owned(),
            secs(plan.partition_for),
        ]);
    }
    let relay = RelayProc::spawn(&args).await?;
    let origin = relay.started;

    // The devices, as a real fleet would run them: default backoff (50 ms
    // to 5 s) and window, all through the relay.
    let endpoints = (0..plan.endpoints)
        .map(|_| client_endpoint(&ca, relay.addr))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, mut rx) = mpsc::channel::<ClientEvent>(8192);
    let n = plan.batches_per_device();
    let t0 = now_us() - 3_600_000_000;
    let mut expected = Vec::new();
    let mut clients = Vec::new();
    let mut senders = JoinSet::new();
    for d in 0..plan.devices {
        let id = DEVICE_BASE + d;
        let s = script(
            id,
            1 + (d % 10) as u32,
            d % 3 != 0,
            n,
            plan.events_per_batch,
            t0,
        );
        expected.extend(s.batches.iter().map(|b| ExpectedBatch {
            device: id,
            seq: b.seq,
            events: u32::try_from(b.events.len()).unwrap_or(u32::MAX),
        }));
        let prepared = prepare(&s)?;
        let endpoint = endpoints[usize::try_from(d % plan.endpoints)?].clone();
        let mut cfg = ClientConfig::new(relay.addr, id);
        cfg.token = tokens.script(&s)?;
        let client = Arc::new(DeviceClient::start_with_events(endpoint, cfg, tx.clone()));
        clients.push(client.clone());
        let plan = plan.clone();
        senders.spawn(async move {
            for (i, b) in prepared.into_iter().enumerate() {
                let due = origin + plan.created(d, i as u64);
                tokio::time::sleep_until(due.into()).await;
                client
                    .send(b)
                    .await
                    .with_context(|| format!("device {id}"))?;
            }
            anyhow::Ok(())
        });
    }
    drop(tx);
    let total = expected.len();
    let total_events: u64 = expected.iter().map(|b| u64::from(b.events)).sum();

    // Collect acks until every batch is acknowledged or the deadline.
    let deadline = origin + Duration::from_secs(1) + plan.send_for + plan.every + plan.drain;
    let mut acks = Vec::with_capacity(total);
    let mut failures = Vec::new();
    while acks.len() < total {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = tokio::time::sleep_until(deadline.into()) => {
                failures.push(format!("deadline: {} of {total} batches acknowledged", acks.len()));
                break;
            }
        };
        match ev {
            Some(ClientEvent::Acked(a)) => acks.extend(a.batches.iter().map(|b| AckRecord {
                device: a.device,
                seq: b.seq,
                at: a.at,
                first_sent: b.first_sent,
            })),
            Some(other) => failures.push(format!("{other:?}")),
            None => {
                failures.push("every device stopped".into());
                break;
            }
        }
    }
    let done = Instant::now();
    // All are done once every batch is acknowledged; the rest are stuck.
    senders.abort_all();
    while let Some(r) = senders.join_next().await {
        if let Ok(Err(e)) = r {
            failures.push(format!("{e:#}"));
        }
    }

    let mut stats = ClientStats::default();
    let mut behind = BTreeMap::new();
    let mut disconnects = BTreeMap::new();
    for c in &clients {
        stats.merge(&c.stats());
        disconnects.insert(c.device(), c.stats().disconnects);
        let durable = *c.acks().borrow();
        if durable < n {
            behind.insert(c.device(), (durable, c.unacked(), c.stats().last_error));
        }
    }
    let mut closing = JoinSet::new();
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            closing.spawn(c.close());
        }
    }
    while closing.join_next().await.is_some() {}
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    let relay_stats = relay.stop().await?;

    // What the server stored, against every batch the devices sent.
    let store = server.store();
    server.shutdown().await?;
    let report = verify(&*store, Some(&expected))?;

    let mut seen = HashSet::new();
    let duplicated_acks = acks
        .iter()
        .filter(|a| !seen.insert((a.device, a.seq)))
        .count();
    eprintln!(
        "events {total_events} in {total} batches of {} devices; acked {} batches \
         ({} acked twice); stored {} events, missing {}, duplicates {}; \
         all acked {:.1} s after the relay started; wall {:.1} s",
        plan.devices,
        seen.len(),
        duplicated_acks,
        report.events,
        report.missing,
        report.duplicates,
        done.duration_since(origin).as_secs_f64(),
        wall.elapsed().as_secs_f64(),
    );
    eprintln!("relay: {relay_stats:?}");
    eprintln!(
        "clients: connects {} reconnects {} disconnects {} connect failures {} \
         resent {} recoveries {} (max {:?}) errors {:?} rejects {:?}; QUIC packets sent {} lost {}",
        stats.connects,
        stats.reconnects,
        stats.disconnects,
        stats.connect_failures,
        stats.resent_batches,
        stats.recoveries,
        stats.recovery_max,
        stats.errors_by_code,
        stats.rejects_by_code,
        stats.quic_sent_packets,
        stats.quic_lost_packets,
    );
    report_latency(&plan, origin, &acks);
    for (device, why) in behind.iter().take(10) {
        eprintln!("behind: device {device}: (durable, unacked, last error) {why:?}");
    }

    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        behind.is_empty(),
        "{} devices not fully acked",
        behind.len()
    );
    assert_eq!(seen.len(), total, "every batch acknowledged");
    assert_eq!(duplicated_acks, 0, "no batch acknowledged twice");
    assert_eq!(stats.watermark_regressions, 0);
    assert!(report.ok, "verify: {report:?}");
    assert_eq!(report.missing, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.events, total_events, "every event stored once");

    // The faults did happen.
    assert_eq!(relay_stats.flows, plan.endpoints);
    if plan.loss > 0.0 {
        assert!(relay_stats.to_server.lost > 0 && relay_stats.to_client.lost > 0);
        // And the devices' QUIC counted what the relay dropped on their way.
        assert!(
            stats.quic_lost_packets > 0 && stats.quic_lost_packets < stats.quic_sent_packets,
            "QUIC packets sent {}, lost {}",
            stats.quic_sent_packets,
            stats.quic_lost_packets
        );
        let reordered = relay_stats.to_server.reordered + relay_stats.to_client.reordered;
        assert!(reordered > 0, "100 ± 50 ms over a busy link reorders");
    }
    if !plan.partition_for.is_zero() {
        assert!(relay_stats.to_server.partitioned > 0 && relay_stats.to_client.partitioned > 0);
    }
    if plan.partition_for >= Duration::from_secs(10) {
        // Twice the client's 5 s idle timeout: every session dies. Those
        // are the sessions of the devices acknowledged before the cut (on
        // a loaded machine some are still connecting through the loss).
        let cut = origin + plan.partition_after;
        let connected: HashSet<u64> = acks
            .iter()
            .filter(|a| a.at < cut)
            .map(|a| a.device)
            .collect();
        assert!(
            connected.len() as u64 > plan.devices / 2,
            "{} devices acknowledged before the cut",
            connected.len()
        );
        let survived: Vec<u64> = connected
            .into_iter()
            .filter(|d| disconnects.get(d).copied().unwrap_or(0) == 0)
            .collect();
        assert!(
            survived.is_empty(),
            "these devices kept their connection through the partition: {survived:?}"
        );
    }
    Ok(())
}

/// The relay itself, in process: both directions, the delay spread
/// reorders, and the counters add up.
#[tokio::test]
async fn the_relay_forwards_both_ways_and_reorders() -> anyhow::Result<()> {
    // An echo server behind the relay.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let server = echo.local_addr()?;
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let cfg = RelayConfig {
        server,
        faults: Faults {
            loss: 0.0,
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(15),
            ..Faults::default()
        },
        seed: 1,
        max_queued: 1000,
        flow_idle: Duration::from_secs(60),
    };
    let relay = Relay::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?, cfg);
    let addr = relay.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(
        async {
            let _ = stop_rx.await;
        },
        |_, _| {},
        None,
        |_| {},
    ));
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for i in 0..50u8 {
        client.send_to(&[i], addr).await?;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 50 {
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf)).await??;
        got.extend_from_slice(&buf[..n]);
    }
    let _ = stop_tx.send(());
    let stats = task.await?;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<u8>>());
    assert_ne!(
        got, sorted,
        "a 30 ms spread over back-to-back sends reorders"
    );
    assert_eq!(stats.to_server.forwarded, 50);
    assert_eq!(stats.to_client.forwarded, 50);
    assert!(stats.to_server.reordered > 0);
    assert_eq!(stats.flows, 1);
    Ok(())
}
