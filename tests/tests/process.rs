//! `tillstream serve` as a real child process: started on fixed ports so a
//! restart comes back where devices look for it, killed with SIGKILL or
//! stopped with SIGTERM, watched over its HTTP API and /proc.
//!
//! It lives among the tests (not in the library) because only a test
//! target is told where cargo put the package's binaries.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `tillstream` program built from this checkout.
pub(crate) const SERVER_BIN: &str = env!("CARGO_BIN_EXE_tillstream-under-test");

/// How to run the server; kept across restarts.
#[derive(Debug, Clone)]
pub(crate) struct ServeOpts {
    /// Its data directory.
    pub(crate) data_dir: PathBuf,
    /// QUIC address, the same on every restart.
    pub(crate) quic: SocketAddr,
    /// HTTP address, the same on every restart.
    pub(crate) http: SocketAddr,
    /// `--shards`.
    pub(crate) shards: u16,
    /// More `serve` flags.
    pub(crate) extra: Vec<String>,
    /// Where stderr goes (appended across restarts).
    pub(crate) log: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if not this
    /// process's (`tillstream_tests::netns`).
    pub(crate) netns: Option<String>,
}

/// A free loopback port of each kind.
pub(crate) fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    free_ports_on("127.0.0.1")
}

/// A port free for both UDP and TCP on `ip`, below Linux's ephemeral
/// range (32768-60999). A server restarted on its ports must find them
/// free: one from port 0 is an ephemeral port, which any outgoing
/// connection may take meanwhile (in CI, a node restarted on 127.0.0.1
/// found its HTTP port taken, most likely by a connection to the
/// Cassandra node on that address).
pub(crate) fn free_ports_on(ip: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 32_768 - 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries running at once start at different places.
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + start.wrapping_add(n) % SPAN;
        let (Ok(udp), Ok(tcp)) = (
            std::net::UdpSocket::bind(format!("{ip}:{port}")),
            std::net::TcpListener::bind(format!("{ip}:{port}")),
        ) else {
            continue;
        };
        return Ok((udp.local_addr()?, tcp.local_addr()?));
    }
    anyhow::bail!("no port below 32768 is free for both UDP and TCP on {ip}")
}

impl ServeOpts {
    /// A server over `data_dir`, logging to `log`, on fresh ports.
    pub(crate) fn new(data_dir: &Path, log: &Path, shards: u16) -> anyhow::Result<Self> {
        let (quic, http) = free_ports()?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            quic,
            http,
            shards,
            extra: Vec::new(),
            log: log.to_path_buf(),
            netns: None,
        })
    }

    /// The certificate devices must trust (created by the first start).
    pub(crate) fn cert_path(&self) -> PathBuf {
        self.data_dir.join("tls/cert.pem")
    }

    /// Base URL of the HTTP API.
    pub(crate) fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// A running `tillstream serve`; SIGKILLed when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// How it was started.
    pub(crate) opts: ServeOpts,
    child: Child,
    /// When the process was spawned.
    pub(crate) started: Instant,
    /// From spawning to a healthy HTTP API (store open, sockets bound).
    pub(crate) healthy_after: Duration,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url`: the status and the body.
pub(crate) fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let mut resp = agent().get(url).call()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body))
}

impl ServerProcess {
    /// Spawns the server and waits until its HTTP API answers /healthz
    /// (a server may be alive but not ready: a full disk, say).
    pub(crate) fn start(opts: &ServeOpts) -> anyhow::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log)
            .with_context(|| format!("opening {}", opts.log.display()))?;
        let started = Instant::now();
        // `ip netns exec` execs the server: the child is the server.
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SERVER_BIN]);
                c
            }
            None => Command::new(SERVER_BIN),
        };
        let child = cmd
            .arg("serve")
            .arg("--listen")
            .arg(opts.quic.to_string())
            .arg("--http")
            .arg(opts.http.to_string())
            .arg("--shards")
            .arg(opts.shards.to_string())
            .arg("--data-dir")
            .arg(&opts.data_dir)
            .args(&opts.extra)
            // Warnings only, unless a debugging run asks for more.
            .env(
                "RUST_LOG",
                std::env::var("TILLSTREAM_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning tillstream serve")?;
        let mut server = Self {
            opts: opts.clone(),
            child,
            started,
            healthy_after: Duration::ZERO,
        };
        server.wait_healthy(Duration::from_secs(60))?;
        server.healthy_after = started.elapsed();
        Ok(server)
    }

    fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.opts.http_url());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tillstream serve exited with {status} while starting; its log: {}",
                    tail(&self.opts.log)
                );
            }
            if let Ok((200, _)) = http_get(&url) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tillstream serve not healthy after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill9(mut self) -> anyhow::Result<ServeOpts> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping the killed server")?;
        Ok(self.opts.clone())
    }

    /// SIGTERM, then wait up to `limit` for the exit; the exit status and
    /// how long the drain took. SIGKILLs it if the limit passes.
    pub(crate) fn terminate(mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let t0 = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        while t0.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("the server did not exit within {limit:?} of SIGTERM")
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A value of /proc/PID/status in KiB (`VmHWM`: peak resident memory).
    pub(crate) fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// GET a path of the HTTP API, as an admin (a token signed with the
    /// server's key) when the server authenticates.
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.opts.http_url());
        let key = self.opts.data_dir.join(tillstream_auth::token::SIGNING_KEY);
        if !key.exists() {
            return http_get(&url);
        }
        let admin = tillstream_tests::Tokens::from_key(&key)?.api(tillstream_auth::Role::Admin)?;
        let mut resp = agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {admin}"))
            .call()?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string()?;
        Ok((status, body))
    }

    /// The sum of a metric's samples on /metrics (0 when absent).
    pub(crate) fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = self.get("/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(metric_sum(&body, name))
    }

    /// Waits until `tillstream_batches_acked_total` is above zero: the
    /// first acknowledgement of this process. None if `limit` passes.
    pub(crate) fn wait_first_ack(&self, limit: Duration) -> Option<Duration> {
        self.wait_acked(1, limit)
    }

    /// Waits until this process has acknowledged at least `batches`
    /// batches (mid-stream, whatever the speed of the build); how long
    /// since it was spawned, or None if `limit` passes.
    pub(crate) fn wait_acked(&self, batches: u64, limit: Duration) -> Option<Duration> {
        self.wait_metric("tillstream_batches_acked_total", batches as f64, limit)
    }

    /// Waits until the metric `name` (summed over its labels) reaches
    /// `at_least`; how long since the process was spawned, or None if
    /// `limit` passes.
    pub(crate) fn wait_metric(
        &self,
        name: &str,
        at_least: f64,
        limit: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.metric(name).is_ok_and(|n| n >= at_least) {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sums the samples of `name` (any labels) in Prometheus text.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    tillstream_engine::scrape::Scrape::parse(text).sum(name)
}

/// The last lines of a log, for failure messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A loaded machine logs a late timer every few hundred milliseconds;
    // those lines would crowd out the cause of a failure.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("runtime_lag"))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `tillstream verify --data-dir DIR [--expected FILE]` as a process: its
/// exit code and the JSON report.
pub(crate) fn verify_offline(
    data_dir: &Path,
    expected: Option<&Path>,
) -> anyhow::Result<(i32, serde_json::Value)> {
    let mut cmd = Command::new(SERVER_BIN);
    cmd.arg("verify").arg("--data-dir").arg(data_dir);
    if let Some(e) = expected {
        cmd.arg("--expected").arg(e);
    }
    let out = cmd.output().context("running tillstream verify")?;
    let report = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tillstream verify printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), report))
}

#[test]
fn metric_sum_adds_labelled_samples_and_skips_others() {
    let text = "# TYPE a counter\na_total{x=\"1\"} 2\na_total{x=\"2\"} 3.5\na_total_other 9\nb 1\n";
    assert!((metric_sum(text, "a_total") - 5.5).abs() < 1e-9);
    assert!((metric_sum(text, "b") - 1.0).abs() < 1e-9);
    assert!(metric_sum(text, "c").abs() < 1e-9);
}
