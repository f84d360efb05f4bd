//! The audit log: one JSON line per security-relevant decision
//! (authentication failures, revocations, authorization refusals, limit
//! decisions), with its reason and the peer's address.
//!
//! Lines go through a bounded queue to a writer thread, so a flood of
//! refusals never blocks a session; what the queue cannot take is counted
//! in `tillstream_audit_lines_dropped_total` instead of stalling the server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use crate::EngineError;
use crate::metrics as m;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Appended to this file (created if missing).
    File(PathBuf),
    /// Written to standard error.
    Stderr,
    /// Not written.
    Off,
}

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;

/// The writer's end; cheap to share.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    tx: Option<SyncSender<String>>,
}

/// One audit record.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Record<'a> {
    /// What happened: `auth_failed`, `revoked`, `connection_revoked`,
    /// `authz_refused`, `limit`, `api_denied`.
    pub(crate) event: &'a str,
    /// Why, in words.
    pub(crate) reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) device: Option<u64>,
    /// The credential's id (token jti or certificate serial), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credential: Option<&'a str>,
    /// Anything else worth keeping (a batch seq, counts, a path).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub(crate) detail: serde_json::Value,
}

impl<'a> Record<'a> {
    pub(crate) fn new(event: &'a str, reason: &'a str) -> Self {
        Self {
            event,
            reason,
            peer: None,
            device: None,
            credential: None,
            detail: serde_json::Value::Null,
        }
    }
    pub(crate) fn peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }
    pub(crate) fn device(mut self, device: u64) -> Self {
        self.device = Some(device);
        self
    }
    pub(crate) fn credential(mut self, id: &'a str) -> Self {
        self.credential = Some(id);
        self
    }
    pub(crate) fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

impl Audit {
    /// Opens the target and starts its writer thread.
    pub(crate) fn open(target: &AuditTarget) -> Result<Self, EngineError> {
        let mut out: Box<dyn Write + Send> = match target {
            AuditTarget::Off => return Ok(Self { tx: None }),
            AuditTarget::Stderr => Box::new(std::io::stderr()),
            AuditTarget::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
                        what: "creating the audit log's directory",
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| EngineError::Io {
                        what: "opening the audit log",
                        path: path.clone(),
                        source,
                    })?;
                Box::new(std::io::BufWriter::new(f))
            }
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("tillstream-audit".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut ok = out.write_all(line.as_bytes()).is_ok();
                    // Whatever else is queued goes in the same write.
                    while let Ok(more) = rx.try_recv() {
                        ok &= out.write_all(more.as_bytes()).is_ok();
                    }
                    if !(ok && out.flush().is_ok()) {
                        m::audit_dropped();
                    }
                }
            })
            .map_err(|source| EngineError::Io {
                what: "starting the audit writer",
                path: PathBuf::from("tillstream-audit"),
                source,
            })?;
        Ok(Self { tx: Some(tx) })
    }

    /// Queues one line stamped with the time; never blocks.
    pub(crate) fn log(&self, record: Record<'_>) {
        let Some(tx) = &self.tx else { return };
        #[derive(serde::Serialize)]
        struct Stamped<'a> {
            ts_ms: u128,
            #[serde(flatten)]
            record: Record<'a>,
        }
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let Ok(mut line) = serde_json::to_string(&Stamped { ts_ms, record }) else {
            return;
        };
        line.push('\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => m::audit_dropped(),
        }
    }
}
