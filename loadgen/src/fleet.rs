//! Runs a prepared workload against a server: one [`DeviceClient`] per
//! device on one shared QUIC endpoint, a task per device sending its
//! batches in order (paced to the overall target rate, if any), and one
//! collector that turns acknowledgements into latencies and progress.
//!
//! Ack latency is measured per batch, from the first time its frame was
//! written to a stream to the ack that first covered it (cumulative acks
//! cover many batches at once). Resends keep the first write time, so a
//! reconnect shows up in the tail.
//!
//! Every run's seqs start at 1, so a device id the server already holds
//! seqs of (an earlier run with the same `--run-id`) would have its batches
//! acknowledged as duplicates without being stored. The device clients run
//! without replays: they refuse such batches as stale (at `send`, or when
//! the `Welcome` that tells the server's watermark comes after they were
//! queued), and the run fails on the first one, whatever the timing of the
//! connections.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tillstream_client::{
    ClientConfig, ClientEndpoint, ClientError, ClientEvent, ClientStats, DeviceClient,
    EndpointOptions, client_endpoint_with,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::credentials::Credentials;
use crate::lag::LagProbe;
use crate::workload::{DevicePlan, Workload};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server's QUIC address (the first seed of every device).
    pub server: SocketAddr,
    /// More QUIC addresses of the same cluster, every device's seeds after
    /// `server` ([`ClientConfig::seeds`]); empty for a single server.
    pub seeds: Vec<SocketAddr>,
    /// The name its certificate carries.
    pub server_name: String,
    /// PEM of the certificate(s) to trust.
    pub ca_pem: Vec<u8>,
    /// What each device authenticates with.
    pub credentials: Credentials,
    /// Target events per second over the whole fleet; 0 for flat out.
    pub rate: f64,
    /// Stop and fail if not every event is acknowledged by then.
    pub give_up_after: Duration,
    /// Unacknowledged batches per device.
    pub max_inflight: usize,
    /// How long to wait for every device's first session before the clock
    /// starts anyway.
    pub connect_wait: Duration,
    /// The devices' transport settings. Where the loadgen starts the
    /// server itself with a smaller UDP payload limit, the devices get it
    /// too: a device's first congestion window has room for the probes
    /// up to its own bound (`tillstream_client` `initial_window`), and
    /// quinn probes no higher than the server's.
    pub endpoint: EndpointOptions,
}

impl RunConfig {
    /// The server's address, or the cluster's, comma-separated (as
    /// `--server` takes them), for messages.
    pub fn servers(&self) -> String {
        std::iter::once(&self.server)
            .chain(&self.seeds)
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Flat out against `server` (certificate name `localhost`), waiting
    /// up to 10 s for every device's first session: how a benchmark drives
    /// a server it started itself.
    pub fn flat_out(
        server: SocketAddr,
        ca_pem: Vec<u8>,
        credentials: Credentials,
        max_inflight: usize,
        give_up_after: Duration,
    ) -> Self {
        RunConfig {
            server,
            seeds: Vec::new(),
            server_name: "localhost".into(),
            ca_pem,
            credentials,
            rate: 0.0,
            give_up_after,
            max_inflight,
            connect_wait: Duration::from_secs(10),
            endpoint: EndpointOptions::default(),
        }
    }
}

/// A batch the server acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AckedRef {
    /// The device.
    #[serde(serialize_with = "tillstream_storage::json::id")]
    pub device: u64,
    /// The batch's seq.
    pub seq: u64,
    /// Events in it.
    pub events: u32,
}

/// What a run did.
#[derive(Debug)]
pub struct RunOutcome {
    /// Events handed to the device clients.
    pub events_sent: u64,
    /// Events in acknowledged batches.
    pub events_acked: u64,
    /// Events in batches the server refused for good.
    pub events_refused: u64,
    /// Events acknowledged but refused on semantic grounds.
    pub events_rejected: u64,
    /// From the first send to the last acknowledgement of a timed batch.
    pub elapsed: Duration,
    /// Events in the timed batches: all but the devices' last batches
    /// that waited for their timers past the run's last event (at
    /// `--rate`, up to `--batch-max-wait-ms`). That wait is the devices'
    /// idle time, not the server's: counted, an 8 s run at 550 k events/s
    /// reported 489 k.
    pub events_timed: u64,
    /// Ack latency per batch, µs.
    pub latency_us: Histogram<u64>,
    /// How late the devices' runtime ran its timers over the run, µs
    /// ([`crate::lag`]); `None` if the probe did not finish.
    pub runtime_lag_us: Option<Histogram<u64>>,
    /// The devices' counters, summed.
    pub stats: ClientStats,
    /// Every acknowledged batch.
    pub acked: Vec<AckedRef>,
    /// Why the run did not complete, if it did not.
    pub failures: Vec<String>,
}

impl RunOutcome {
    /// Whether every event was acknowledged.
    pub fn complete(&self, total_events: u64) -> bool {
        self.events_acked == total_events
    }
}

/// How often a stats line is logged where no progress bar shows.
const STATS_EVERY: Duration = Duration::from_secs(5);

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events acked, {per_sec}, eta {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Sends `work` and collects the acknowledgements.
///
/// `cfg.give_up_after` counts from the first dial, the wait for the
/// devices' first sessions included, so a run gives up when it says it
/// did (issue 70: "gave up after 5 s" came after 17). A fleet of which no
/// device gets a session is an error, "cannot connect to ...", as soon as
/// a device's attempt has failed without an answer from the server, or at
/// that deadline.
pub async fn run(work: Workload, cfg: &RunConfig) -> anyhow::Result<RunOutcome> {
    let dialled = Instant::now();
    let deadline = tokio::time::Instant::from(dialled + cfg.give_up_after);
    let endpoint = client_endpoint_with(&cfg.ca_pem, cfg.server, &cfg.endpoint)
        .context("creating the QUIC endpoint")?;
    let (tx, mut rx) = mpsc::channel::<ClientEvent>(8192);
    let total = work.events;
    let plans: Vec<DevicePlan> = work
        .devices
        .into_iter()
        .filter(|p| !p.batches.is_empty())
        .collect();
    // The batches due after the run's last event (only at --rate: a
    // device's last one, on its timer, or both halves of it if it was
    // split): acknowledged and counted, not timed.
    let untimed: HashSet<(u64, u64)> = plans
        .iter()
        .flat_map(|p| {
            let late = p.batches.iter().rev().take_while(|b| b.due_event > total);
            late.map(|b| (p.device, b.batch.seq))
        })
        .collect();
    let clients: Vec<Arc<DeviceClient>> = plans
        .iter()
        .map(|p| {
            let mut c = ClientConfig::new(cfg.server, p.device);
            c.seeds.clone_from(&cfg.seeds);
            c.server_name.clone_from(&cfg.server_name);
            let cred = cfg
                .credentials
                .for_device(p.device, p.store, p.role, &cfg.endpoint)?;
            c.token = cred.token;
            c.tls = cred.tls;
            c.max_inflight = cfg.max_inflight;
            // Every batch of the run is new: a server watermark above one
            // means the device id was used before (refused as stale).
            c.replay = false;
            anyhow::Ok(Arc::new(DeviceClient::start_with_events(
                endpoint.clone(),
                c,
                tx.clone(),
            )))
        })
        .collect::<Result<_, _>>()?;
    drop(tx);
    // Only to keep the handshakes out of the measurement: a device that
    // is late is still checked for a used id by its client. A large fleet
    // gets longer (5 ms a device): 10,000 TLS handshakes take ~20 s of
    // these 2 cores, and starting the clock before they end measured the
    // handshakes, not the ingest.
    let limit = cfg
        .connect_wait
        .max(Duration::from_millis(5 * clients.len() as u64))
        .min(cfg.give_up_after);
    if let Err(why) = wait_connected(&clients, 1 + cfg.seeds.len(), limit).await {
        let why = format!("cannot connect to {}: {why}", cfg.servers());
        tracing::error!("{why}");
        close(clients, &endpoint, false).await;
        anyhow::bail!(why);
    }

    let start = Instant::now();
    let lag_probe = LagProbe::start().context("starting the runtime lag probe")?;
    let sent = Arc::new(AtomicU64::new(0));
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<String>();
    let mut tasks = JoinSet::new();
    for (plan, client) in plans.into_iter().zip(&clients) {
        let (client, sent, fail_tx, rate) =
            (client.clone(), sent.clone(), fail_tx.clone(), cfg.rate);
        tasks.spawn(async move {
            for b in plan.batches {
                if rate > 0.0 {
                    let due = Duration::from_secs_f64(b.due_event as f64 / rate);
                    tokio::time::sleep_until((start + due).into()).await;
                }
                let events = u64::from(b.batch.events);
                if let Err(e) = client.send(b.batch).await {
                    let hint = if matches!(e, ClientError::Stale { .. }) {
                        " (pass another --run-id)"
                    } else {
                        ""
                    };
                    let _ = fail_tx.send(format!("device {}: {e}{hint}", plan.device));
                    return;
                }
                sent.fetch_add(events, Ordering::Relaxed);
            }
        });
    }
    drop(fail_tx);

    let bar = progress(total);
    let mut c = Collector::new(untimed)?;
    // The last acknowledgement of a timed batch, and of any.
    let (mut last_timed, mut last_ack) = (start, start);
    // Where no progress bar shows (logs, CI), a stats line every 5 s.
    let stats_lines = !std::io::stderr().is_terminal();
    let mut stats = tokio::time::interval(STATS_EVERY);
    stats.tick().await;
    let mut since = (Instant::now(), 0u64);
    while c.acked + c.refused < total {
        tokio::select! {
            _ = stats.tick(), if stats_lines => {
                let secs = since.0.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    acked = c.acked,
                    total,
                    events_per_s = ((c.acked - since.1) as f64 / secs).round(),
                    p99_ms = c.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    refused = c.refused,
                    "progress"
                );
                since = (Instant::now(), c.acked);
            }
            ev = rx.recv() => match ev {
                Some(ev) => {
                    let before = c.acked;
                    if let Some((at, timed)) = c.record(ev) {
                        last_ack = last_ack.max(at);
                        if timed {
                            last_timed = last_timed.max(at);
                        }
                    }
                    bar.inc(c.acked - before);
                }
                None => {
                    c.failures.push("every device stopped".into());
                    break;
                }
            },
            Some(f) = fail_rx.recv() => {
                c.failures.push(f);
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                let given = secs(cfg.give_up_after);
                let why = match never_connected(&clients) {
                    Some(last) => format!(
                        "cannot connect to {}: no device had a session in {given} \
                         (--give-up-after){last}",
                        cfg.servers()
                    ),
                    None => format!(
                        "gave up after {given}: {} of {total} events acknowledged",
                        c.acked
                    ),
                };
                // Said now, not only in the report at the end.
                tracing::error!("{why}");
                c.failures.push(why);
                break;
            }
        }
        if !c.failures.is_empty() {
            break;
        }
    }
    bar.finish_and_clear();
    // A run whose every batch is untimed (a device's only batch on its
    // timer) is timed whole.
    let (elapsed, events_timed) = if c.timed > 0 {
        (last_timed.saturating_duration_since(start), c.timed)
    } else {
        (last_ack.saturating_duration_since(start), c.acked)
    };
    let runtime_lag_us = lag_probe.finish().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let mut stats = ClientStats::default();
    let mut used = Vec::new();
    for client in &clients {
        let s = client.stats();
        if s.stale_batches > 0 {
            used.push(format!(
                "device {} up to seq {}",
                client.device(),
                *client.acks().borrow()
            ));
        }
        stats.merge(&s);
    }
    let unreachable = stats.connects == 0 && stats.rejects_by_code.is_empty();
    if let Some(first) = used.first() {
        c.failures.push(format!(
            "the server already holds batches of {} of these devices ({first}{}) from an \
             earlier run: their batches would be acknowledged without being stored; a new \
             run must use fresh device ids: pass another --run-id",
            used.len(),
            if used.len() > 1 { ", ..." } else { "" }
        ));
    }
    close(clients, &endpoint, !unreachable).await;
    // A run the server answered no device of is not a run: an error, as
    // from `wait_connected`.
    if unreachable && !c.failures.is_empty() {
        anyhow::bail!(c.failures.join("; "));
    }
    Ok(RunOutcome {
        events_sent: sent.load(Ordering::Relaxed),
        events_acked: c.acked,
        events_refused: c.refused,
        events_rejected: c.rejected,
        elapsed,
        events_timed,
        latency_us: c.latency,
        runtime_lag_us,
        stats,
        acked: c.manifest,
        failures: c.failures,
    })
}

/// Waits until every device has had a session (or gave up for good), at
/// most `limit`, so the handshakes stay out of the measurement. An error,
/// why the first attempts failed, once a device's attempts have failed at
/// each of its `seeds` and the server has answered none: no session and
/// no `Reject` (a server that is busy or draining answers, and is waited
/// for).
async fn wait_connected(
    clients: &[Arc<DeviceClient>],
    seeds: usize,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let stats: Vec<ClientStats> = clients.iter().map(|c| c.stats()).collect();
        let waiting = stats
            .iter()
            .filter(|s| s.connects == 0 && s.rejects_by_code.is_empty())
            .count();
        if waiting == 0 {
            return Ok(());
        }
        // A device tries its seeds in turn: one has failed when it failed
        // at each of them.
        if waiting == clients.len()
            && let Some(failed) = stats.iter().find(|s| s.connect_failures >= seeds as u64)
        {
            return Err(failed
                .last_error
                .clone()
                .unwrap_or_else(|| "the connection failed".into()));
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                waiting,
                "not every device connected in time; starting anyway"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `Some` (the devices' last error, as `: why`, or nothing) if the server
/// answered none of the devices: no session, no `Reject`.
fn never_connected(clients: &[Arc<DeviceClient>]) -> Option<String> {
    let stats: Vec<ClientStats> = clients.iter().map(|c| c.stats()).collect();
    let answered = stats
        .iter()
        .any(|s| s.connects > 0 || !s.rejects_by_code.is_empty());
    (!answered).then(|| {
        stats
            .iter()
            .find_map(|s| s.last_error.as_ref())
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    })
}

/// Closes the devices and the endpoint; where the server answered, waits
/// (2 s at most) for the closes to reach it.
async fn close(clients: Vec<Arc<DeviceClient>>, endpoint: &ClientEndpoint, answered: bool) {
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    endpoint.close(0u32.into(), b"run over");
    if answered {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}

/// A duration as people read it: `3 s`, `2.5 s`.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Folds client events into counts, latencies and the manifest.
struct Collector {
    acked: u64,
    /// Events of the timed batches (`RunOutcome::events_timed`).
    timed: u64,
    /// The untimed batches: device, seq.
    untimed: HashSet<(u64, u64)>,
    refused: u64,
    rejected: u64,
    latency: Histogram<u64>,
    manifest: Vec<AckedRef>,
    failures: Vec<String>,
}

impl Collector {
    fn new(untimed: HashSet<(u64, u64)>) -> anyhow::Result<Self> {
        Ok(Self {
            acked: 0,
            timed: 0,
            untimed,
            refused: 0,
            rejected: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .context("latency histogram")?,
            manifest: Vec::new(),
            failures: Vec::new(),
        })
    }

    /// Returns the time of an acknowledgement, and whether it acknowledged
    /// a timed batch.
    fn record(&mut self, ev: ClientEvent) -> Option<(Instant, bool)> {
        match ev {
            ClientEvent::Acked(a) => {
                let mut timed = false;
                for b in &a.batches {
                    self.acked += u64::from(b.events);
                    if !self.untimed.contains(&(a.device, b.seq)) {
                        self.timed += u64::from(b.events);
                        timed = true;
                    }
                    // Always written first: without replays, a batch the
                    // server had before it was sent is refused as stale.
                    if let Some(t) = b.first_sent {
                        let us = a.at.saturating_duration_since(t).as_micros();
                        self.latency
                            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                    }
                    self.manifest.push(AckedRef {
                        device: a.device,
                        seq: b.seq,
                        events: b.events,
                    });
                }
                self.rejected += a.rejected.len() as u64;
                Some((a.at, timed))
            }
            ClientEvent::Refused(r) => {
                self.refused += u64::from(r.events);
                // The run goes on; the report counts the refused events.
                tracing::warn!(device = r.device, seq = r.seq, code = r.code, reason = %r.reason, "batch refused by the server");
                None
            }
            ClientEvent::Stale(s) => {
                // Not stored by the server: the run cannot succeed.
                self.failures.push(format!(
                    "device {}: batch {} refused as stale: the server already holds this \
                     device id's seqs up to {} (pass another --run-id)",
                    s.device, s.seq, s.durable
                ));
                None
            }
            ClientEvent::Fatal {
                device,
                code,
                reason,
            } => {
                self.failures.push(format!(
                    "device {device} rejected by the server (code {code}): {reason}"
                ));
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_client::{AckEvent, AckedBatch};

    fn ack(device: u64, seqs: &[u64], at: Instant) -> ClientEvent {
        ClientEvent::Acked(AckEvent {
            device,
            durable_seq: seqs.iter().copied().max().unwrap_or(0),
            at,
            batches: seqs
                .iter()
                .map(|&seq| AckedBatch {
                    seq,
                    events: 10,
                    first_sent: Some(at),
                })
                .collect(),
            rejected: Vec::new(),
        })
    }

    #[test]
    fn a_last_batch_on_its_timer_is_counted_but_not_timed() -> anyhow::Result<()> {
        let mut c = Collector::new(HashSet::from([(7, 3)]))?;
        let at = Instant::now();
        assert_eq!(c.record(ack(7, &[1, 2], at)), Some((at, true)));
        // Device 7's seq 3 waited for its timer after the run's events.
        assert_eq!(c.record(ack(7, &[3], at)), Some((at, false)));
        // Another device's seq 3 is timed.
        assert_eq!(c.record(ack(8, &[3], at)), Some((at, true)));
        // Acknowledged with a timed batch, the ack is timed.
        assert_eq!(c.record(ack(7, &[3, 4], at)), Some((at, true)));
        assert_eq!((c.acked, c.timed), (60, 40));
        Ok(())
    }
}
