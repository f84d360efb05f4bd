//! Several `tillstream serve --cluster` processes over one keyspace of the
//! real 3-node Cassandra cluster (`cluster.rs`), each node on its own
//! loopback address (127.0.0.k), sharing one signing key and certificate.
//! A fleet over 30 stores streams through them while nodes join, die,
//! restart one by one, or freeze past their lease; each test ends with
//! `tillstream verify --store scylla --expected`: nothing acknowledged is
//! lost or doubled, whichever node wrote it.
//!
//! Compiled as ignored without the cluster (see `cluster.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tillstream_loadgen::cli::Args;
use tillstream_loadgen::report::Report;
use tillstream_tests::netns::NetNs;

use crate::cluster::{Cluster, hold};
use crate::process::{ServeOpts, ServerProcess, tail};

mod partition;

/// The stores of the fleet: enough that each of 3-4 nodes serves several.
const STORES: u32 = 30;

/// Node `k`'s settings: its own loopback address and data directory, the
/// keyspace's flags, `--cluster`.
fn node_opts(c: &Cluster, dir: &Path, ks: &str, k: u8) -> anyhow::Result<ServeOpts> {
    let ip = format!("127.0.0.{k}");
    let (quic, http) = crate::process::free_ports_on(&ip)?;
    let home = dir.join(format!("node{k}"));
    std::fs::create_dir_all(&home)?;
    let mut opts = ServeOpts::new(&home.join("data"), &home.join("serve.log"), 1)?;
    opts.quic = quic;
    opts.http = http;
    opts.extra = c.scylla_flags(ks, &format!("node-{k}"));
    opts.extra.push("--cluster".into());
    Ok(opts)
}

/// The cluster's one identity: node 1's certificate and signing key, in
/// the data directory of `to` (what a deployment gives every node from
/// one secret).
fn share_identity(from: &ServeOpts, to: &ServeOpts) -> anyhow::Result<()> {
    let key = tillstream_auth::token::SIGNING_KEY;
    for rel in ["tls/cert.pem", "tls/key.pem", key] {
        let dst = to.data_dir.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from.data_dir.join(rel), &dst)
            .with_context(|| format!("copying {rel} to node {}", to.data_dir.display()))?;
    }
    Ok(())
}

/// Nodes over one fresh keyspace, and a stream through them.
struct Fleet {
    dir: tempfile::TempDir,
    ks: String,
    /// Node k is `nodes[k - 1]`; `None` while it is down.
    nodes: Vec<Option<ServerProcess>>,
    opts: Vec<ServeOpts>,
    manifest: PathBuf,
}

impl Fleet {
    fn start(c: &Cluster, tag: &str, n: u8) -> anyhow::Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let ks = c.keyspace(tag)?;
        let mut fleet = Fleet {
            manifest: dir.path().join("acked.json"),
            ks,
            nodes: Vec::new(),
            opts: Vec::new(),
            dir,
        };
        for _ in 0..n {
            fleet.add(c)?;
        }
        Ok(fleet)
    }

    /// Starts one more node (the first makes the identity the others share).
    fn add(&mut self, c: &Cluster) -> anyhow::Result<u8> {
        let k = self.opts.len() as u8 + 1;
        let opts = node_opts(c, self.dir.path(), &self.ks, k)?;
        self.push(opts)
    }

    /// Starts one more node inside `ns`, listening on its device link: a
    /// node the test can cut off from the cluster and not its devices.
    fn add_in(&mut self, c: &Cluster, ns: &NetNs) -> anyhow::Result<u8> {
        let k = self.opts.len() as u8 + 1;
        let mut opts = node_opts(c, self.dir.path(), &self.ks, k)?;
        // Nothing else listens in the namespace.
        opts.quic = SocketAddr::from((ns.device_ip(), 7443));
        opts.http = SocketAddr::from((ns.device_ip(), 7480));
        opts.netns = Some(ns.name().to_string());
        self.push(opts)
    }

    fn push(&mut self, opts: ServeOpts) -> anyhow::Result<u8> {
        if let Some(first) = self.opts.first() {
            share_identity(first, &opts)?;
        }
        let server = ServerProcess::start(&opts)?;
        self.opts.push(opts);
        self.nodes.push(Some(server));
        Ok(self.opts.len() as u8)
    }

    fn node(&self, k: u8) -> anyhow::Result<&ServerProcess> {
        self.nodes[usize::from(k) - 1]
            .as_ref()
            .with_context(|| format!("node {k} is down"))
    }

    fn take(&mut self, k: u8) -> anyhow::Result<ServerProcess> {
        self.nodes[usize::from(k) - 1]
            .take()
            .with_context(|| format!("node {k} is down"))
    }

    fn restart(&mut self, k: u8) -> anyhow::Result<()> {
        let server = ServerProcess::start(&self.opts[usize::from(k) - 1])?;
        self.nodes[usize::from(k) - 1] = Some(server);
        Ok(())
    }

    /// The loadgen over every node as a seed: `events` at `rate` from 30
    /// stores' tills and sensors, the manifest of what was acknowledged.
    fn stream(
        &self,
        events: u64,
        rate: u64,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Report>>> {
        let seeds: Vec<String> = self.opts.iter().map(|o| o.quic.to_string()).collect();
        let first = &self.opts[0];
        let args = Args::try_parse_from([
            "tillstream-loadgen".to_string(),
            format!("--server={}", seeds.join(",")),
            format!("--ca={}", first.cert_path().display()),
            format!(
                "--token-key={}",
                first
                    .data_dir
                    .join(tillstream_auth::token::SIGNING_KEY)
                    .display()
            ),
            format!("--events={events}"),
            format!("--stores={STORES}"),
            "--terminals-per-store=3".into(),
            "--sensors-per-store=1".into(),
            "--skus=400".into(),
            "--batch-size=32".into(),
            format!("--rate={rate}"),
            "--seed=21".into(),
            "--run-id=1".into(),
            format!("--manifest={}", self.manifest.display()),
            "--give-up-after=300".into(),
        ])?;
        Ok(tokio::spawn(tillstream_loadgen::run::run(args)))
    }

    /// `/v1/cluster` as node `k` answers it.
    fn status(&self, k: u8) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.node(k)?.get("/v1/cluster")?;
        ensure!(code == 200, "/v1/cluster answered {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Polls node `via`'s `/v1/cluster` until `done` holds of the status
    /// and `node`'s member row; how long it took.
    fn wait_status(
        &self,
        via: u8,
        node: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let mut last = serde_json::Value::Null;
        while t0.elapsed() < limit {
            if let Ok(s) = self.status(via) {
                let member = s["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["node"] == node).cloned());
                if let Some(m) = member
                    && done(&s, &m)
                {
                    return Ok(t0.elapsed());
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{node}: not {what} within {limit:?}: last {last}")
    }

    /// Waits until `node` is in `state` and holds `stores` stores as the
    /// owners table says (`None`: any number).
    fn wait_member(
        &self,
        via: u8,
        node: &str,
        state: &str,
        stores: Option<u64>,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let what = format!("{state} with {stores:?} stores");
        self.wait_status(via, node, &what, limit, |_, m| {
            let held = m["stores"].as_u64().unwrap_or(0);
            m["state"] == state && stores.is_none_or(|n| held == n)
        })
    }

    /// Waits until node `k`'s `/readyz` answers 503 with `why` in its body.
    fn wait_readyz(&self, k: u8, why: &str, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let (code, body) = self.node(k)?.get("/readyz")?;
            if code == 503 && body.contains(why) {
                return Ok(());
            }
            ensure!(
                t0.elapsed() < limit,
                "node {k}'s /readyz, {limit:?} on: {code} {body} (waiting for 503 with {why:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `node` is live and holds a store, or the others have
    /// released one for it (taken at its devices' next Hello, which a
    /// stream near its end may not bring).
    fn wait_handed_over(&self, via: u8, node: &str, limit: Duration) -> anyhow::Result<Duration> {
        self.wait_status(via, node, "handed a store", limit, |s, m| {
            let held = m["stores"].as_u64().unwrap_or(0);
            let released = s["stores_released"].as_u64().unwrap_or(0);
            m["state"] == "live" && (held > 0 || released > 0)
        })
    }

    /// The end: the run acknowledged everything, every node left drains on
    /// SIGTERM, and the keyspace holds every acknowledged batch once.
    async fn finish(
        mut self,
        c: &Cluster,
        run: tokio::task::JoinHandle<anyhow::Result<Report>>,
    ) -> anyhow::Result<Report> {
        let report = run.await??;
        if !report.ok {
            // The whole logs outlive the temporary directory, for a look.
            let keep = std::env::temp_dir().join(format!("tillstream-{}", self.ks));
            std::fs::create_dir_all(&keep)?;
            for (k, o) in self.opts.iter().enumerate() {
                eprintln!("--- {}:\n{}", o.log.display(), tail(&o.log));
                std::fs::copy(&o.log, keep.join(format!("node{}.log", k + 1)))?;
            }
            eprintln!("the nodes' logs are in {}", keep.display());
            bail!("the run failed: {:?}", report.failures);
        }
        ensure!(report.events_acked == report.events_total);
        for k in 1..=self.nodes.len() as u8 {
            if let Some(server) = self.nodes[usize::from(k) - 1].take() {
                let log = server.opts.log.clone();
                let (status, _) = server.terminate(Duration::from_secs(240))?;
                ensure!(
                    status.success(),
                    "node {k} exited with {status}: {}",
                    tail(&log)
                );
            }
        }
        c.verify(&self.ks, &self.manifest)?;
        Ok(report)
    }
}

/// Three nodes serve one fleet; a fourth joins mid-stream and takes its
/// share; one is SIGKILLed mid-stream and its stores move to the others
/// once its journal is replayed; the other two restart one at a time
/// (SIGTERM hands their stores over first). The stream rides through
/// all of it, and nothing acknowledged is lost or doubled.
///
/// At 100 events/s: four debug-built nodes and three Cassandra JVMs share
/// these 2 cores, and at 150 the tables fell so far behind the journals
/// that hand-offs waited minutes for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by hand with the cluster up (about 4 minutes, and the machine to itself): cargo test -p tillstream-tests --test e2e -- --ignored nodes::nodes_join. The suite's budget on 2 cores leaves no room for it; the frozen-node test covers a leave and a rejoin. 2026-11-29: of 5 runs while it was fixed, 3 passed; 2 ran out of the loadgen's 300 s (once at the earlier 150 events/s, once with a build beside it)"]
async fn nodes_join_die_and_restart_under_a_stream_and_nothing_is_lost() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let mut fleet = Fleet::start(c, "nodes", 3)?;
    let run = fleet.stream(16_000, 100)?;
    let c2 = Cluster::from_env()?;
    let fleet = tokio::task::spawn_blocking(move || -> anyhow::Result<Fleet> {
        fleet
            .node(2)?
            .wait_acked(30, Duration::from_secs(120))
            .context("node 2 acknowledged nothing")?;
        // A fourth node joins: the others hand it its share (released
        // rows it takes at its devices' next Hello).
        fleet.add(&c2)?;
        let joined = fleet.wait_handed_over(1, "node-4", Duration::from_secs(180))?;
        eprintln!("node-4's share handed over {joined:?} after it started");
        // Node 2 dies without a word.
        let killed_at = Instant::now();
        fleet.take(2)?.kill9()?;
        let replayed = fleet.wait_member(1, "node-2", "fenced", None, Duration::from_secs(180))?;
        eprintln!(
            "node-2 SIGKILLed: fenced (its journal replayed) {:?} after",
            killed_at.elapsed().max(replayed)
        );
        // Rolling restart of the others, one at a time.
        for k in [1, 3, 4] {
            let server = fleet.take(k)?;
            let log = server.opts.log.clone();
            let (status, took) = server.terminate(Duration::from_secs(120))?;
            ensure!(
                status.success(),
                "node {k} exited with {status}: {}",
                tail(&log)
            );
            eprintln!("node-{k} left in {took:?}");
            fleet.restart(k)?;
        }
        fleet.restart(2)?;
        Ok(fleet)
    })
    .await??;
    let report = fleet.finish(c, run).await?;
    eprintln!(
        "several nodes: {} events acked, {} reconnects, {} redirects, ack p99 {:.0} ms",
        report.events_acked, report.reconnects, report.redirects, report.ack_latency_ms.p99
    );
    Ok(())
}

/// A node frozen (SIGSTOP) past its lease: another node replays its
/// journal, which fences it, and takes its stores. Thawed, it must not
/// acknowledge or write: `/readyz` says it is fenced, the members table
/// shows it fenced, and verify finds nothing lost or doubled. Then a
/// step of a rolling restart: node 1 leaves on SIGTERM (handing its
/// stores over) and rejoins, and the others hand its share back.
///
/// The CI suite's test of leaving and joining: the full one below (a
/// fourth node, a kill, every node restarted) takes four minutes more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(cassandra_cluster),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh: build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set"
)]
async fn a_node_frozen_past_its_lease_is_fenced_and_its_late_writes_do_not_land()
-> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let fleet = Fleet::start(c, "frozen", 3)?;
    let run = fleet.stream(12_000, 150)?;
    let fleet = tokio::task::spawn_blocking(move || -> anyhow::Result<Fleet> {
        let mut fleet = fleet;
        let pid = fleet.node(3)?.pid().to_string();
        fleet
            .node(3)?
            .wait_acked(20, Duration::from_secs(120))
            .context("node 3 acknowledged nothing")?;
        let signal = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
        };
        ensure!(signal("-STOP")?.success());
        let moved = fleet.wait_member(1, "node-3", "fenced", Some(0), Duration::from_secs(120));
        ensure!(signal("-CONT")?.success());
        eprintln!(
            "node-3 frozen: fenced and its stores taken after {:?}",
            moved?
        );
        // Thawed, it knows it was fenced and serves nobody.
        fleet.wait_readyz(3, "another", Duration::from_secs(30))?;
        // Its process stays up, fenced; it is replaced by a restart.
        let server = fleet.take(3)?;
        server.kill9()?;
        fleet.restart(3)?;
        // Node 1 leaves and comes back.
        let server = fleet.take(1)?;
        let log = server.opts.log.clone();
        let (status, took) = server.terminate(Duration::from_secs(120))?;
        ensure!(
            status.success(),
            "node 1 exited with {status}: {}",
            tail(&log)
        );
        eprintln!("node-1 left in {took:?}");
        fleet.restart(1)?;
        let back = fleet.wait_handed_over(2, "node-1", Duration::from_secs(120))?;
        eprintln!("node-1 back: its share handed over {back:?} after it started");
        Ok(fleet)
    })
    .await??;
    fleet.finish(c, run).await?;
    Ok(())
}
