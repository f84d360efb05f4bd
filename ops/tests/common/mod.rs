//! What the tests of the `tillstream` binary share.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};

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
