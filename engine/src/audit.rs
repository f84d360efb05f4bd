//! The audit log: one JSON line per security-relevant decision
//! (authentication failures, revocations, authorization refusals, limit
//! decisions), with its reason and the peer's address.
//!
//! Lines go through a bounded queue to a writer thread, so a flood of
//! refusals never blocks a session; what the queue cannot take is counted
//! in `tillstream_audit_lines_dropped_total` instead of stalling the server.
//! Records about peers not yet authenticated (failed handshakes and
//! credentials, connection limits, refused API calls) share a rate, so a
//! flood of them can neither fill the disk nor crowd out revocations and
//! refusals of known devices; the file is rotated once (`.1`) past a size.

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
/// Lines a second about unauthenticated peers (a burst of as many).
const UNAUTHENTICATED_PER_S: u32 = 200;
/// Size past which the file moves to `<name>.1` (replacing an older one)
/// and a new one starts: at most twice this on disk.
const ROTATE_BYTES: u64 = 256 << 20;

/// The writer's end; cheap to share.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    tx: Option<SyncSender<String>>,
    unauthenticated: Option<std::sync::Arc<governor::DefaultDirectRateLimiter>>,
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
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "tillstream_storage::json::opt_id"
    )]
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
            AuditTarget::Off => {
                return Ok(Self {
                    tx: None,
                    unauthenticated: None,
                });
            }
            AuditTarget::Stderr => Box::new(std::io::stderr()),
            AuditTarget::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
                        what: "creating the audit log's directory",
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                Box::new(
                    RotatingFile::open(path.clone()).map_err(|source| EngineError::Io {
                        what: "opening the audit log",
                        path: path.clone(),
                        source,
                    })?,
                )
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
                        m::audit_dropped("write");
                    }
                }
            })
            .map_err(|source| EngineError::Io {
                what: "starting the audit writer",
                path: PathBuf::from("tillstream-audit"),
                source,
            })?;
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(UNAUTHENTICATED_PER_S).unwrap_or(std::num::NonZeroU32::MIN),
        );
        Ok(Self {
            tx: Some(tx),
            unauthenticated: Some(std::sync::Arc::new(governor::RateLimiter::direct(quota))),
        })
    }

    /// [`Audit::log`] for a record about a peer not authenticated yet: kept
    /// within a shared rate (past it, counted and dropped).
    pub(crate) fn log_unauthenticated(&self, record: Record<'_>) {
        if let Some(limit) = &self.unauthenticated
            && limit.check().is_err()
        {
            m::audit_dropped("rate");
            return;
        }
        self.log(record);
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
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => m::audit_dropped("queue"),
        }
    }
}

/// An append-only file that moves to `<name>.1` past [`ROTATE_BYTES`].
struct RotatingFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl RotatingFile {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = f.metadata()?.len();
        Ok(Self {
            path,
            file: std::io::BufWriter::new(f),
            written,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        *self = Self::open(self.path.clone())?;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written >= ROTATE_BYTES {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
