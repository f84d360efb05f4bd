//! What the tests of the `tillstream` binary share.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[allow(dead_code)] // not every test binary starts it itself
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tillstream");

/// Runs `tillstream ARGS --data-dir DATA`: its exit code, stdout, stderr.
pub(crate) fn run(args: &[&str], data: &Path) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A `tillstream serve` child, killed if the test fails half-way.
#[allow(dead_code)] // not every test binary starts a server
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) quic: SocketAddr,
    pub(crate) http: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code)] // not every test binary uses each
impl Serve {
    /// Its HTTP API's base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGTERM, and its exit: the drain leaves the tables whole.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exit = self.child.wait()?;
        anyhow::ensure!(exit.success(), "serve exited with {exit}");
        Ok(())
    }
}

/// `tillstream serve ARGS --data-dir DATA`, with `envs` set, until its
/// banner names the QUIC and HTTP addresses: the running child and every
/// line it printed so far (its stderr is drained after, so the child
/// never blocks on a full pipe).
#[allow(dead_code)] // not every test binary starts a server
pub(crate) fn serve_banner(
    data: &Path,
    args: &[&str],
    envs: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<(Serve, Vec<String>)> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let (mut quic, mut http) = (None, None);
    while quic.is_none() || http.is_none() {
        let Some(line) = lines.next().transpose()? else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("serve exited early:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("tillstream listening on ") {
            quic = rest.split_whitespace().next().map(str::parse).transpose()?;
        }
        if let Some(rest) = line.strip_prefix("HTTP API on http://") {
            http = rest.split_whitespace().next().map(str::parse).transpose()?;
        }
        seen.push(line);
    }
    std::thread::spawn(move || for _ in lines {});
    let server = Serve {
        child,
        quic: quic.ok_or_else(|| anyhow::anyhow!("no QUIC address"))?,
        http: http.ok_or_else(|| anyhow::anyhow!("no HTTP address"))?,
    };
    Ok((server, seen))
}
