//! Credentials withdrawn before they expire: one JSON line per revocation
//! in `auth/revoked.jsonl` below the data directory, appended and fsynced
//! by `tillstream token revoke` / `ca revoke` (or `POST /v1/revoke`). The
//! server reads it at start and whenever it changes, and closes live
//! connections that a new line names. A list that only grows survives
//! restarts with nothing else to keep.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::files::io;
use crate::{AuthError, Method, now_s};

/// The list below the data directory.
pub const REVOKED: &str = "auth/revoked.jsonl";

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// The token's `jti` or the certificate's serial (lower-case hex).
    pub id: String,
    /// What it revokes: `token` or `certificate`.
    pub kind: String,
    /// When, seconds since the epoch.
    pub at_s: u64,
    /// Why, as the operator said.
    #[serde(default)]
    pub reason: String,
}

/// The list's path below `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(REVOKED)
}

/// The ids on the list (empty if there is none yet). A line that does
/// not parse (a torn append at a crash) is skipped; it was never reported
/// as done, so the operator's command failed and is run again.
pub fn load(data_dir: &Path) -> Result<HashSet<String>, AuthError> {
    let p = path(data_dir);
    // Bytes, line by line: a torn append may cut a character of a reason
    // in half, and that must cost its own line, not the whole list.
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(io("reading the revocation list", &p)(e)),
    };
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Revocation>(l).ok())
        .map(|r| r.id)
        .collect())
}

/// Adds `id` to the list, durably, unless it is there already; returns
/// whether it was added.
pub fn revoke(data_dir: &Path, id: &str, kind: Method, reason: &str) -> Result<bool, AuthError> {
    let mut id = id.trim().to_ascii_lowercase();
    if id.is_empty() || !id.len().is_multiple_of(2) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Invalid(format!(
            "{id:?} is not a credential id (the token's jti or the certificate's serial, in hex)"
        )));
    }
    if kind == Method::Certificate {
        // As the server reads serials: without leading zero bytes.
        while id.len() > 2 && id.starts_with("00") {
            id.drain(..2);
        }
    }
    if load(data_dir)?.contains(&id) {
        return Ok(false);
    }
    let p = path(data_dir);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let line = Revocation {
        id,
        kind: match kind {
            Method::Token => "token",
            Method::Certificate => "certificate",
        }
        .into(),
        at_s: now_s(),
        reason: reason.to_owned(),
    };
    let mut bytes = serde_json::to_vec(&line).map_err(|e| AuthError::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(io("opening the revocation list", &p))?;
    // A line that follows a torn one starts on its own line.
    let len = f.metadata().map_err(io("reading", &p))?.len();
    if len > 0 && !ends_with_newline(&p)? {
        f.write_all(b"\n").map_err(io("appending to", &p))?;
    }
    f.write_all(&bytes).map_err(io("appending to", &p))?;
    f.sync_all().map_err(io("syncing", &p))?;
    Ok(true)
}

fn ends_with_newline(p: &Path) -> Result<bool, AuthError> {
    let bytes = std::fs::read(p).map_err(io("reading", p))?;
    Ok(bytes.last() == Some(&b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_are_kept_once_and_a_torn_line_is_skipped() -> Result<(), AuthError> {
        let dir = tempfile::tempdir().map_err(|e| AuthError::Crypto(e.to_string()))?;
        assert!(load(dir.path())?.is_empty());
        assert!(revoke(dir.path(), "ABCD", Method::Token, "lost till")?);
        assert!(!revoke(dir.path(), "abcd", Method::Token, "again")?);
        assert!(revoke(dir.path(), "not hex", Method::Token, "").is_err());
        // A crash mid-append leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        // ... even inside a character of its reason.
        f.write_all(b"{\"id\":\"ee\",\"kind\":\"token\",\"at_s\":1,\"reason\":\"caf\xc3")
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        // A certificate serial is named without leading zero bytes.
        assert!(revoke(dir.path(), "0012", Method::Certificate, "")?);
        let ids = load(dir.path())?;
        assert_eq!(ids, HashSet::from(["abcd".to_string(), "12".to_string()]));
        Ok(())
    }
}
