//! What every session, the accept loop and the HTTP API share: the store,
//! the shards, the sequencer and the flusher's queue, the limits, and the
//! engine's failed and draining flags. It imports none of its users, so
//! `server` (which builds it) and the sessions (which use it) do not import
//! each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tillstream_engine_core::validate::Rules;
use tillstream_protocol::Limits;
use tillstream_storage::Store;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::devices::Devices;
use crate::flusher::FlushSender;
use crate::live_limits::LiveLimits;
use crate::sequencer::Sequencer;
use crate::shards::ShardHandle;
use crate::wire::FrameBudget;

/// What every session shares.
#[derive(Debug)]
pub(crate) struct EngineCtx {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) devices: Devices,
    pub(crate) shards: Vec<ShardHandle>,
    pub(crate) shard_count: u16,
    /// Gives every fresh batch its LSN and journals it (see `sequencer`).
    pub(crate) sequencer: Arc<Sequencer>,
    pub(crate) flush: FlushSender,
    pub(crate) limits: Limits,
    pub(crate) rules: Rules,
    /// Set on shutdown: new sessions are refused, readers stop.
    pub(crate) draining: AtomicBool,
    /// How long a device has, once its handshake is done, to open its
    /// stream, and then to say Hello (see `ServerConfig::hello_timeout`).
    pub(crate) hello_timeout: Duration,
    /// The connection cap and the per-device caps and rate, which SIGHUP
    /// may change while the server runs.
    pub(crate) live: LiveLimits,
    /// Acknowledgements stuck this long while batches wait make `/readyz`
    /// fail (see `ServerConfig::ack_stall_not_ready`).
    pub(crate) ack_stall_not_ready: Duration,
    /// See `ServerConfig::ack_write_deadline`.
    pub(crate) ack_write_deadline: Duration,
    /// What the frames being read may hold, across connections, and how
    /// long one may take (see `ServerConfig::max_frame_buffer_bytes`).
    pub(crate) frame_budget: FrameBudget,
    /// Credentials, revocation, the audit log.
    pub(crate) auth: Arc<Auth>,
    /// Set when a batch could not be applied on all its shards: nothing
    /// more can be committed consistently, the engine needs a restart.
    pub(crate) failed: watch::Sender<bool>,
    /// Connections being served: the memory soft limit grows with them
    /// (`memory_limit::limit_with`).
    pub(crate) connections: AtomicUsize,
    /// This node's part in a cluster of nodes (`cluster`), set once the
    /// QUIC address is bound, before the first device is served; unset
    /// without `--cluster`.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl EngineCtx {
    /// Marks the engine failed: the flusher fails every pending and later
    /// unit, new sessions are refused, waiting ackers give up.
    pub(crate) fn fail(&self, why: &str) {
        if !self.failed.send_replace(true) {
            tracing::error!(
                reason = why,
                "engine failed: no more commits or acknowledgements until restart"
            );
        }
    }

    /// Whether [`EngineCtx::fail`] was called.
    pub(crate) fn is_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// Waits until the tables hold everything the journal held when
    /// called (rows are materialized off the ack path): readers of the
    /// tables, such as verify, see every batch acknowledged before they
    /// asked. Gives up after `limit`, or at once if the engine failed.
    pub(crate) async fn tables_caught_up(&self, limit: Duration) -> bool {
        let target = self.sequencer.subscribe().borrow().durable;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.store.materialized_lsn() {
                Ok(lsn) if lsn >= target => return true,
                Ok(_) if !self.is_failed() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                _ => return false,
            }
        }
    }

    /// Why the server is not ready, if it is not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining".into());
        }
        if self.is_failed() {
            return Some("a batch could not be applied; restart the server".into());
        }
        // The store's reason first: it says why acks stall (a fenced node
        // id, a cluster without a quorum), where the stall only says that.
        if let Err(e) = self.store.check_writable() {
            return Some(e.to_string());
        }
        let stall = self.sequencer.ack_stall();
        (stall >= self.ack_stall_not_ready).then(|| {
            format!(
                "no batch acknowledged for {} s although batches wait",
                stall.as_secs()
            )
        })
    }
}
