//! `tillstream serve --store scylla` against a real 3-node Apache
//! Cassandra 5.0 cluster (`deploy/cassandra/run.sh`, started by
//! `.ci/run`), with faults in both: the server SIGKILLed, Cassandra nodes
//! SIGKILLed, frozen and restarted, a second server under the same node
//! id. Each test ends with `tillstream verify --store scylla --expected`:
//! every acknowledged batch stored exactly once.
//!
//! Compiled as ignored unless `TILLSTREAM_SCYLLA_NODES` and
//! `TILLSTREAM_CASSANDRA_DIR` (the cluster's `--dir`) are set when this
//! crate is built. The tests share the cluster and kill its nodes, so
//! they run one at a time, and each leaves every node up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use parking_lot::Mutex;

use tillstream_tests::machine;

use crate::process::{SERVER_BIN, ServeOpts, ServerProcess, tail};

/// One test at a time on the shared cluster.
static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster of `deploy/cassandra/run.sh`, and its nodes' control.
pub(crate) struct Cluster {
    dir: PathBuf,
    pub(crate) nodes: String,
    script: PathBuf,
}

impl Cluster {
    pub(crate) fn from_env() -> anyhow::Result<Cluster> {
        let nodes = std::env::var("TILLSTREAM_SCYLLA_NODES")
            .context("TILLSTREAM_SCYLLA_NODES names no cluster")?;
        let dir = std::env::var("TILLSTREAM_CASSANDRA_DIR")
            .context("TILLSTREAM_CASSANDRA_DIR names no run.sh cluster directory")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cassandra/run.sh");
        Ok(Cluster {
            dir: dir.into(),
            nodes,
            script,
        })
    }

    fn run_sh(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .context("running deploy/cassandra/run.sh")?;
        ensure!(
            out.status.success(),
            "run.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// SIGKILLs node `k` at once: the test flushed the schema before its
    /// stream (`flush_schema`), as a kill under load would wait seconds
    /// for a nodetool JVM to start.
    fn kill(&self, k: u32) -> anyhow::Result<()> {
        self.run_sh(&["kill", &k.to_string(), "--no-flush"])
    }

    /// Every node's schema on disk (`run.sh flush-schema`): a node
    /// SIGKILLed afterwards keeps its rows of the tables made before.
    fn flush_schema(&self) -> anyhow::Result<()> {
        self.run_sh(&["flush-schema"])
    }

    fn start_node(&self, k: u32) -> anyhow::Result<()> {
        self.run_sh(&["start-node", &k.to_string()])
    }

    fn pid(&self, k: u32) -> anyhow::Result<String> {
        let f = self.dir.join(format!("node{k}/pid"));
        Ok(std::fs::read_to_string(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string())
    }

    fn signal(&self, k: u32, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([sig, &self.pid(k)?]).status()?;
        ensure!(status.success(), "kill {sig} node {k}");
        Ok(())
    }

    /// Every node up again, whatever a test did to them: the ones down
    /// start together, after the seed.
    fn heal(&self) -> anyhow::Result<()> {
        for k in 1..=3 {
            let _ = self.signal(k, "-CONT");
        }
        self.run_sh(&["start", "--nodes", "3"])
    }

    /// A fresh keyspace at replication factor 3, made by `tillstream
    /// schema apply`.
    pub(crate) fn keyspace(&self, tag: &str) -> anyhow::Result<String> {
        let ks = format!("tillstream_{tag}_{}", tillstream_tests::now_us());
        let out = Command::new(SERVER_BIN)
            .args(["schema", "apply", "--replication", "datacenter1=3"])
            .arg(format!("--scylla-nodes={}", self.nodes))
            .arg(format!("--scylla-keyspace={ks}"))
            .output()?;
        ensure!(
            out.status.success(),
            "schema apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(ks)
    }

    pub(crate) fn scylla_flags(&self, ks: &str, node_id: &str) -> Vec<String> {
        vec![
            "--store=scylla".into(),
            format!("--scylla-nodes={}", self.nodes),
            format!("--scylla-keyspace={ks}"),
            format!("--scylla-node-id={node_id}"),
            // Faults stall acks for seconds; say so on /readyz soon.
            "--ack-stall-not-ready-s=3".into(),
            // Acks need only the journal; the tables follow at what three
            // JVMs on 2 shared cores take, up to the shards' budgets
            // behind. The last drain must end with them caught up, or
            // verify has no verdict (it refuses while a journal trails).
            "--drain-timeout-s=180".into(),
        ]
    }

    /// `tillstream verify --store scylla --expected manifest`: asserts
    /// nothing acknowledged is missing or doubled.
    pub(crate) fn verify(&self, ks: &str, manifest: &Path) -> anyhow::Result<()> {
        let out = Command::new(SERVER_BIN)
            .args(["verify", "--store=scylla"])
            .arg(format!("--scylla-nodes={}", self.nodes))
            .arg(format!("--scylla-keyspace={ks}"))
            .arg("--expected")
            .arg(manifest)
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tillstream verify printed no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        eprintln!("tillstream verify --store scylla: {report}");
        ensure!(report["missing"] == 0, "lost: {report}");
        ensure!(report["duplicates"] == 0, "doubled: {report}");
        ensure!(out.status.success(), "verify failed: {report}");
        Ok(())
    }
}

/// Holds the cluster for one test, and heals it when the test ends; and
/// the machine, which its nodes' restarts load past what the tests with
/// deadlines bear (`tillstream_tests::machine`).
pub(crate) struct Hold<'a> {
    pub(crate) cluster: Cluster,
    _guard: parking_lot::MutexGuard<'a, ()>,
    _machine: machine::Held,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.heal() {
            eprintln!("could not bring the cluster's nodes back: {e}");
        }
    }
}

pub(crate) fn hold() -> anyhow::Result<Hold<'static>> {
    let guard = CLUSTER.lock();
    let machine = machine::whole();
    let cluster = Cluster::from_env()?;
    cluster.heal()?;
    Ok(Hold {
        cluster,
        _guard: guard,
        _machine: machine,
    })
}

/// A server on the cluster under `node_id`, its data directory (TLS, keys)
/// in `dir`.
pub(crate) fn serve_opts(
    c: &Cluster,
    dir: &Path,
    ks: &str,
    node_id: &str,
) -> anyhow::Result<ServeOpts> {
    std::fs::create_dir_all(dir)?;
    let mut opts = ServeOpts::new(&dir.join("data"), &dir.join("serve.log"), 2)?;
    opts.extra = c.scylla_flags(ks, node_id);
    Ok(opts)
}

/// A stream under way: a fresh keyspace, a server on it, and the loadgen
/// sending `events` at `rate` from 104 devices, writing the manifest of
/// what was acknowledged.
struct Stream {
    /// The server's data directory and the manifest, removed at the end.
    _dir: tempfile::TempDir,
    ks: String,
    server: ServerProcess,
    manifest: PathBuf,
    run: tokio::task::JoinHandle<anyhow::Result<tillstream_loadgen::report::Report>>,
}

impl Stream {
    fn start(c: &Cluster, tag: &str, events: u64, rate: u64) -> anyhow::Result<Stream> {
        Self::start_with(c, tag, events, rate, false)
    }

    /// With `kills`, the keyspace's schema is flushed first, for a test
    /// that SIGKILLs Cassandra nodes (`Cluster::kill`).
    fn start_with(
        c: &Cluster,
        tag: &str,
        events: u64,
        rate: u64,
        kills: bool,
    ) -> anyhow::Result<Stream> {
        let dir = tempfile::tempdir()?;
        let ks = c.keyspace(tag)?;
        if kills {
            c.flush_schema()?;
        }
        let opts = serve_opts(c, dir.path(), &ks, tag)?;
        let server = ServerProcess::start(&opts)?;
        let manifest = dir.path().join("acked.json");
        let args = crate::crash::loadgen_args(&opts, &manifest, events, rate, 11)?;
        let run = tokio::spawn(tillstream_loadgen::run::run(args));
        Ok(Stream {
            _dir: dir,
            ks,
            server,
            manifest,
            run,
        })
    }

    /// Whether the loadgen has finished, for a blocking fault loop.
    fn done_flag(&self) -> impl Fn() -> bool + Send + 'static {
        let abort = self.run.abort_handle();
        move || abort.is_finished()
    }
}

/// The end of every stream: the loadgen acknowledged everything, `server`
/// (the last process) drains on SIGTERM, and the cluster holds every
/// acknowledged batch once.
async fn finish(
    c: &Cluster,
    ks: &str,
    manifest: &Path,
    run: tokio::task::JoinHandle<anyhow::Result<tillstream_loadgen::report::Report>>,
    server: ServerProcess,
) -> anyhow::Result<tillstream_loadgen::report::Report> {
    let report = run.await??;
    ensure!(report.ok, "the run failed: {:?}", report.failures);
    ensure!(report.events_acked == report.events_total);
    let (status, _) = server.terminate(Duration::from_secs(240))?;
    ensure!(status.success(), "serve exited with {status}");
    c.verify(ks, manifest)?;
    Ok(report)
}

/// Acks this server process made so far.
pub(crate) fn acked(server: &ServerProcess) -> f64 {
    server
        .metric("tillstream_batches_acked_total")
        .unwrap_or(-1.0)
}

/// Waits until the server has acknowledged more batches than `than`.
fn acks_go_on(server: &ServerProcess, than: f64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if acked(server) > than {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "no ack past {than} within {limit:?}; server log: {}",
        tail(&server.opts.log)
    )
}

fn readyz(server: &ServerProcess) -> (u16, String) {
    server
        .get("/readyz")
        .unwrap_or((0, "unreachable".to_string()))
}

/// `tillstream serve --store scylla` SIGKILLed three times mid-stream: the
/// loadgen rides through, and the cluster holds every acknowledged batch
/// once. Each restart takes the node id's lease over from the dead
/// process (it waits one lease period for the dead one to renew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(cassandra_cluster),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh: build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set"
)]
async fn sigkill_of_the_server_three_times_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let stream = Stream::start(c, "kill9", 9_000, 600)?;
    let done = stream.done_flag();
    let server = stream.server;
    let (server, kills) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(ServerProcess, u32)> {
            let mut server = server;
            let mut kills = 0;
            while kills < 3 && !done() {
                server
                    .wait_acked(20, Duration::from_secs(60))
                    .context("no acks before a kill")?;
                let opts = server.kill9()?;
                kills += 1;
                server = ServerProcess::start(&opts)?;
            }
            Ok((server, kills))
        })
        .await??;
    let report = finish(c, &stream.ks, &stream.manifest, stream.run, server).await?;
    eprintln!(
        "kill -9 on the cluster: {kills} kills, {} events acked, {} reconnects, ack p99 {:.0} ms",
        report.events_acked, report.reconnects, report.ack_latency_ms.p99
    );
    ensure!(kills == 3, "the stream ended after {kills} kills");
    Ok(())
}

/// One Cassandra node of three SIGKILLed mid-stream: LOCAL_QUORUM still
/// has two replicas, so acks go on. Then a second: no quorum, so acks
/// stop and /readyz says 503; when that node returns, ingest resumes by
/// itself and nothing is lost. (Both returning at once, two JVMs starting
/// beside the suite on 2 cores took writes again only after minutes in
/// CI; the next test's `hold` brings the third back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(cassandra_cluster),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh: build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set"
)]
async fn one_node_of_three_down_acks_go_on_two_down_they_stop_and_resume() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    // 20 s of stream: batches must still be coming once both nodes are
    // gone, or no ack is left to resume.
    let stream = Stream::start_with(c, "nodes_down", 20_000, 1_000, true)?;
    let server = stream.server;
    let server = tokio::task::spawn_blocking(move || -> anyhow::Result<ServerProcess> {
        server
            .wait_acked(20, Duration::from_secs(60))
            .context("no acks")?;
        let c = Cluster::from_env()?;
        let before = acked(&server);
        c.kill(3)?;
        acks_go_on(&server, before + 50.0, Duration::from_secs(30))
            .context("acks stopped with one node of three down")?;
        c.kill(2)?;
        // In-flight writes drain or fail; then nothing more is acked.
        std::thread::sleep(Duration::from_secs(4));
        let stalled = acked(&server);
        std::thread::sleep(Duration::from_secs(3));
        ensure!(
            acked(&server) == stalled,
            "acks went on without a quorum: {stalled} then {}",
            acked(&server)
        );
        // A write the cluster cannot take fails only after the driver's
        // retries (12 s each at most); until then no batch may wait for
        // its ack, the sessions waiting on the shards' budget instead.
        let deadline = Instant::now() + Duration::from_secs(40);
        let (status, body) = loop {
            let (status, body) = readyz(&server);
            if status == 503 || Instant::now() > deadline {
                break (status, body);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        ensure!(status == 503, "/readyz answered {status}: {body}");
        ensure!(
            acked(&server) == stalled,
            "acks went on without a quorum: {stalled} then {}",
            acked(&server)
        );
        eprintln!("two of three down, /readyz: {status} {}", body.trim());
        c.start_node(2)?;
        acks_go_on(&server, stalled, Duration::from_secs(60))?;
        Ok(server)
    })
    .await??;
    let report = stream.run.await??;
    let (status, body) = readyz(&server);
    ensure!(
        status == 200,
        "/readyz after a node came back: {status} {body}"
    );
    let done = tokio::spawn(async move { Ok(report) });
    finish(c, &stream.ks, &stream.manifest, done, server).await?;
    Ok(())
}

/// One node frozen with SIGSTOP for 10 s, then the whole cluster stopped
/// and started again, under a running server: the stream ends complete
/// and exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(cassandra_cluster),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh: build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set"
)]
async fn a_frozen_node_and_a_whole_cluster_restart_lose_nothing() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let stream = Stream::start(c, "restart", 12_000, 300)?;
    let done = stream.done_flag();
    let server = stream.server;
    let server = tokio::task::spawn_blocking(move || -> anyhow::Result<ServerProcess> {
        server
            .wait_acked(20, Duration::from_secs(60))
            .context("no acks")?;
        let c = Cluster::from_env()?;
        c.signal(2, "-STOP")?;
        std::thread::sleep(Duration::from_secs(10));
        c.signal(2, "-CONT")?;
        let before = acked(&server);
        acks_go_on(&server, before, Duration::from_secs(60))?;
        ensure!(!done(), "the stream ended before the cluster restart");
        c.run_sh(&["stop"])?;
        let stopped = acked(&server);
        c.heal()?;
        acks_go_on(&server, stopped, Duration::from_secs(90))?;
        Ok(server)
    })
    .await??;
    finish(c, &stream.ks, &stream.manifest, stream.run, server).await?;
    Ok(())
}

/// A second server under a live one's node id is refused; a second one
/// started while the first is frozen (SIGSTOP, as in a partition) takes
/// the id over, and the first, thawed, finds itself fenced: /readyz says
/// so, and it acknowledges nothing more. Every batch the first
/// acknowledged is in the cluster once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(cassandra_cluster),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh: build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set"
)]
async fn a_second_server_with_the_same_node_id_is_fenced_not_interleaved() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let dir = tempfile::tempdir()?;
    let ks = c.keyspace("fence")?;
    let first = ServerProcess::start(&serve_opts(c, &dir.path().join("a"), &ks, "shared")?)?;
    let manifest = dir.path().join("acked.json");
    let report = tillstream_loadgen::run::run(crate::crash::loadgen_args(
        &first.opts,
        &manifest,
        3_000,
        1_000,
        11,
    )?)
    .await?;
    ensure!(report.ok, "the run failed: {:?}", report.failures);

    let second_opts = serve_opts(c, &dir.path().join("b"), &ks, "shared")?;
    let refused = ServerProcess::start(&second_opts);
    let why = format!("{:?}", refused.as_ref().err());
    ensure!(
        refused.is_err() && why.contains("another live tillstream"),
        "a second server under a live node id: {why}"
    );

    let stop = Command::new("kill")
        .args(["-STOP", &first.pid().to_string()])
        .status()?;
    ensure!(stop.success());
    let second = ServerProcess::start(&second_opts);
    let cont = Command::new("kill")
        .args(["-CONT", &first.pid().to_string()])
        .status()?;
    ensure!(cont.success());
    let second = second?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = readyz(&first);
        if status == 503 && body.contains("fenced") || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("the fenced server's /readyz: {status} {}", body.trim());
    ensure!(status == 503 && body.contains("fenced"), "{status} {body}");
    drop(first);
    let (status, _) = second.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "serve exited with {status}");
    c.verify(&ks, &manifest)
}
