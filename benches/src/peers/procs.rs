//! The peers' servers as child processes: found or installed with apt,
//! started on loopback on a free port over a temporary directory, waited
//! for, and stopped (SIGTERM, then SIGKILL) when their guard drops, on
//! error too.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Whether `apt-get update` ran already in this process.
static APT_UPDATED: Mutex<bool> = Mutex::new(false);

/// The executable `name` on `PATH` or in the sbin folders (root's tools).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Installs Debian package `package` (after one `apt-get update`).
pub(crate) fn apt_install(package: &str) -> anyhow::Result<()> {
    let mut updated = APT_UPDATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*updated {
        eprintln!("[peers] apt-get update");
        run_quiet(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
        *updated = true;
    }
    eprintln!("[peers] apt-get install -y {package}");
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install -y {package}"))
}

/// Runs `cmd` to completion; on failure the error carries its output's tail.
fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        bail!("{} ({})", tail(&text, 6), out.status);
    }
    Ok(())
}

/// The executable `name`, installing `package` if it is missing (unless
/// `install` is false).
pub(crate) fn find_or_install(name: &str, package: &str, install: bool) -> anyhow::Result<PathBuf> {
    if let Some(p) = which(name) {
        return Ok(p);
    }
    if !install {
        bail!("{name} not found (and --no-install was given)");
    }
    apt_install(package)?;
    which(name).with_context(|| format!("{name} still not found after installing {package}"))
}

/// The first line a binary prints for `args` (its version), if any.
pub(crate) fn version_line(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last `n` non-empty lines of `text`, joined with " / ".
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub(crate) struct ServerProc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ServerProc {
    /// Starts `cmd` with its output going to `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The tail of its log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        std::fs::read_to_string(&self.log)
            .map(|t| tail(&t, n))
            .unwrap_or_default()
    }

    /// Waits until `addr` accepts TCP connections (or the server exits, or
    /// `limit` passes).
    pub(crate) async fn wait_accepting(
        &mut self,
        addr: SocketAddr,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_tail(4));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} does not accept connections on {addr} after {limit:?}: {}",
                    self.name,
                    self.log_tail(4)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Once the server accepts on `port` (within `ready_within`), runs
    /// `measure`, giving up after `limit`; stops the server whatever
    /// happened.
    pub(crate) async fn measure<T>(
        mut self,
        port: u16,
        ready_within: Duration,
        limit: Duration,
        measure: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)), ready_within)
            .await?;
        let result = tokio::time::timeout(limit, measure)
            .await
            .unwrap_or_else(|_| bail!("gave up after {limit:?}"));
        self.stop();
        result
    }

    /// Stops it: SIGTERM, up to 15 s for a clean stop, then SIGKILL.
    pub(crate) fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("[peers] {} did not stop on SIGTERM: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b / c");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("x", 3), "x");
    }

    #[test]
    fn a_stopped_guard_leaves_no_process() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sleep.log");
        let mut p = ServerProc::spawn("sleep", Command::new("sleep").arg("30"), &log)?;
        let pid = p.child.id();
        p.stop();
        assert!(
            matches!(p.child.try_wait(), Ok(Some(_))),
            "pid {pid} still runs"
        );
        Ok(())
    }
}
