//! One device connection: a reader that validates and routes batches, an
//! assembler that turns each batch's shard replies into one commit unit,
//! and an acker that sends cumulative acks once units are durable.
//!
//! ```text
//! reader --Pending--> assembler --Acking--> acker --Ack frames--> device
//!   |  (bounded: max_inflight_batches)   |
//!   +--ApplyWork--> shard actors ---------+ (rows back through oneshots)
//!                    assembler --CommitUnit--> flusher
//! ```
//!
//! Invariants:
//! - batches pass every stage in seq order, so a device's commit units
//!   reach the flusher in seq order;
//! - once a batch is admitted its unit is always submitted, even if the
//!   connection dies, so the device's ledger becomes quiescent again: the
//!   reader takes the batch's budgets and its place in the pipeline
//!   before admitting it, and awaits nothing from admission to hand-off,
//!   so no LSN is handed out that never reaches the flusher;
//! - an ack is only written after the flusher resolved the unit Ok (or,
//!   for a replayed batch, once the device's durable seq covers it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tillstream_protocol::frame::decode;
use tillstream_protocol::{
    ErrorCode, FrameError, Hello, MIN_PROTOCOL_VERSION, MsgType, REDIRECT_VERSION, Redirect,
    Reject, RejectedRef, Welcome,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::Instrument;

use crate::audit::Record;
use crate::auth;
use crate::cluster::Admit;
use crate::ctx::EngineCtx;
use crate::flusher::CommitResult;
use crate::metrics as m;
use crate::sequencer::BatchHeader;
use crate::shards::PartResult;
use crate::wire::{ReadError, read_frame, write_msg};

mod ack;
mod assemble;
mod read;

use ack::{AckStream, ack};
use assemble::assemble;
use read::read_batches;

/// Why a session ended, when not because the device finished its stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    /// The connection or its stream failed.
    #[error("connection lost: {0}")]
    Conn(String),
    /// No stream was opened within the Hello timeout.
    #[error("no stream opened in time")]
    NoStream,
    /// The stream was opened but no Hello came in time.
    #[error("no Hello in time")]
    NoHello,
    /// The first frame was not a valid Hello.
    #[error("bad Hello: {0}")]
    BadHello(FrameError),
    /// The device was refused (draining, store or engine failed, busy).
    #[error("refused: {0}")]
    Refused(String),
    /// A frame broke the framing: nothing after it can be read.
    #[error("closed after a bad frame: {0}")]
    BadFrame(FrameError),
    /// A started frame did not arrive within the frame deadline.
    #[error("a frame took longer than {0:?} to arrive ({1} of {2} bytes)")]
    TooSlow(Duration, usize, usize),
    /// More than `MAX_BAD_FRAMES` bad frames.
    #[error("too many bad frames")]
    TooManyBadFrames,
    /// A newer connection of the same device took over.
    #[error("superseded by a newer connection of this device")]
    Superseded,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// A shard actor stopped; the engine has failed.
    #[error("shard {0} is gone")]
    ShardGone(u16),
    /// The session's own pipeline stopped.
    #[error("session pipeline stopped")]
    PipelineStopped,
    /// The engine failed before this batch: a batch reached only some of
    /// its shards, and nothing is sequenced after it.
    #[error("the engine has failed; restart the server")]
    EngineFailed,
}

/// Bad frames tolerated on one connection before it is closed.
const MAX_BAD_FRAMES: u32 = 16;
/// Largest Hello payload: before a device is known, it may not make the
/// server allocate a full batch frame.
const HELLO_MAX_BYTES: u32 = 16 * 1024;
/// How long a Hello waits for an older session's batches to become durable.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Acks are coalesced over at most this many durable batches.
const ACK_EVERY: u32 = 32;

pub(super) enum Pending {
    Fresh {
        lsn: u64,
        header: BatchHeader,
        events: u32,
        /// For the ledger row (`recovery::batch_digest`).
        digest: u64,
        parts: Vec<oneshot::Receiver<PartResult>>,
        /// The shards' in-flight budget, held until durable.
        permits: Vec<OwnedSemaphorePermit>,
        received: Instant,
    },
    Duplicate {
        seq: u64,
        received: Instant,
    },
    Error(tillstream_protocol::Error),
}

pub(super) enum Acking {
    Unit {
        seq: u64,
        done: oneshot::Receiver<CommitResult>,
        rejected: Vec<RejectedRef>,
        received: Instant,
    },
    Duplicate {
        seq: u64,
        received: Instant,
    },
    Error(tillstream_protocol::Error),
    Failed {
        seq: u64,
    },
}

/// Serves one connection until it ends.
/// `admitted` is the connection's set-up slot (see `accept`): it is given
/// back once the device's Hello is read (or the connection ends first).
pub(crate) async fn serve(
    conn: quinn::Connection,
    ctx: Arc<EngineCtx>,
    stop: tokio::sync::watch::Receiver<bool>,
    admitted: Option<OwnedSemaphorePermit>,
) {
    let peer = conn.remote_address();
    let span = tracing::info_span!("session", %peer, device = tracing::field::Empty);
    async move {
        let counted = Counted::new(&ctx.connections);
        let result = session(&conn, &ctx, stop, admitted).await;
        drop(counted);
        let routine = routine_end(&result, conn.close_reason().as_ref());
        match result {
            Ok(()) => tracing::debug!("session ended"),
            Err(reason) if routine => tracing::debug!(%reason, "session ended"),
            Err(reason) => tracing::info!(%reason, "session ended"),
        }
    }
    .instrument(span)
    .await;
}

/// Whether a session ended as sessions do all day: the device finished
/// its stream or closed its connection with code 0 (what
/// tillstream-client sends, and quinn when a device drops its last
/// handle), a newer connection of the device took over, or the server is
/// stopping. Those log at DEBUG: a fleet's reconnects at INFO, one line
/// each, buried the ends worth a look (a device gone silent, a protocol
/// fault, a refusal), which stay at INFO. A connection the server closed
/// itself (`LocallyClosed`) is not routine: revocation, too many errors and
/// a failed store close it so, and quinn does not say which.
fn routine_end(result: &Result<(), SessionEnd>, closed: Option<&quinn::ConnectionError>) -> bool {
    match result {
        Ok(()) | Err(SessionEnd::Superseded | SessionEnd::ShuttingDown) => true,
        Err(SessionEnd::Conn(_)) => matches!(
            closed,
            Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == 0
        ),
        Err(_) => false,
    }
}

/// One connection in `EngineCtx::connections` and in
/// `tillstream_connections_active` while it lives, however its session
/// ends (an aborted task included).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        m::connections(1.0);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        m::connections(-1.0);
    }
}

async fn session(
    conn: &quinn::Connection,
    ctx: &Arc<EngineCtx>,
    stop: tokio::sync::watch::Receiver<bool>,
    admitted: Option<OwnedSemaphorePermit>,
) -> Result<(), SessionEnd> {
    let (mut send, mut recv) = tokio::time::timeout(ctx.hello_timeout, conn.accept_bi())
        .await
        .map_err(|_| SessionEnd::NoStream)?
        .map_err(|e| SessionEnd::Conn(e.to_string()))?;

    // Hello.
    // A Hello is small (16 KiB at most) and only a set-up slot's holder
    // reads one: it is not counted in the frame budget.
    let first = tokio::time::timeout(
        ctx.hello_timeout,
        read_frame(&mut recv, HELLO_MAX_BYTES, None),
    )
    .await
    .map_err(|_| SessionEnd::NoHello)?;
    // Until the Hello is read, answers go in the oldest version, which
    // every device reads; then in the one its Hello came in.
    let mut version = MIN_PROTOCOL_VERSION;
    let hello = match first {
        Ok(Some((h, payload, _))) if h.msg_type == MsgType::Hello => {
            version = h.version;
            decode::<Hello>(&payload)
        }
        Ok(Some(_)) => Err(FrameError::Violation("the first frame must be Hello")),
        Ok(None) => return Ok(()),
        Err(ReadError::TooSlow { .. }) => return Err(SessionEnd::NoHello),
        Err(ReadError::Conn(e)) => return Err(SessionEnd::Conn(e)),
        Err(ReadError::Frame { err, .. }) => Err(err),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(err) => {
            refuse(&mut send, version, err.code(), &format!("bad Hello: {err}")).await;
            return Err(SessionEnd::BadHello(err));
        }
    };
    let device = hello.device;
    tracing::Span::current().record("device", device);
    let claims = match ctx.auth.device(conn, device, &hello.token) {
        Ok(c) => c,
        Err(no) => {
            m::auth_failed("device");
            let mut record = Record::new("auth_failed", &no.reason)
                .peer(conn.remote_address())
                .device(device);
            if let Some(id) = &no.credential {
                record = record.credential(id);
            }
            ctx.auth.audit.log_unauthenticated(record);
            refuse(&mut send, version, no.code, &no.reason).await;
            return Err(SessionEnd::Refused(no.reason));
        }
    };
    // Revoking the credential (or its expiry) closes this connection.
    let _live = claims.as_ref().map(|c| ctx.auth.hold(c, conn));
    let scope = auth::scope(claims.as_ref());
    // The costly part of setting up (handshake, Hello) is over: what is
    // left waits on the device's older batches, not on the CPU, and must
    // not keep other devices from being set up.
    drop(admitted);

    if let Some((code, why)) = refusal(ctx) {
        refuse(&mut send, version, code, &why).await;
        return Err(SessionEnd::Refused(why));
    }
    // In a cluster, only the node serving the device's store goes on.
    let _serving = match ctx.cluster.get() {
        None => None,
        Some(cluster) => {
            let Some(store) = scope.store else {
                let why = "a cluster node serves devices whose credential names their store";
                refuse(&mut send, version, ErrorCode::NotAuthenticated, why).await;
                return Err(SessionEnd::Refused(why.into()));
            };
            match cluster.admit_patiently(store, device, conn).await {
                Admit::Serve(guard) => Some(guard),
                Admit::Redirect { owner, epoch } => {
                    m::cluster_redirect();
                    redirect(&mut send, version, store, epoch, &owner).await;
                    return Err(SessionEnd::Refused(format!("redirected to {owner:?}")));
                }
                Admit::Wait(why) => {
                    refuse(&mut send, version, ErrorCode::StoreUnavailable, &why).await;
                    return Err(SessionEnd::Refused(why));
                }
            }
        }
    };
    let slot = match ctx.devices.slot(device, &ctx.store).await {
        Ok(s) => s,
        Err(e) => {
            refuse(
                &mut send,
                version,
                ErrorCode::StoreUnavailable,
                &e.to_string(),
            )
            .await;
            return Err(SessionEnd::Refused(e.to_string()));
        }
    };
    let owner = slot.take_ownership(conn);
    if !slot.wait_quiescent(QUIESCE_TIMEOUT).await {
        drop(owner);
        let why = "earlier batches of this device are still being committed";
        refuse(&mut send, version, ErrorCode::Busy, why).await;
        return Err(SessionEnd::Refused(why.into()));
    }
    let welcome = Welcome {
        durable_seq: slot.durable(),
        limits: ctx.limits,
    };
    write_msg(&mut send, &welcome, version)
        .await
        .map_err(SessionEnd::Conn)?;
    tracing::debug!(durable_seq = welcome.durable_seq, "welcomed");

    let window = ctx.limits.max_inflight_batches.max(1) as usize;
    let (pend_tx, pend_rx) = mpsc::channel(window);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let assembler =
        tokio::spawn(assemble(pend_rx, ack_tx, slot.clone(), ctx.clone()).in_current_span());
    let acker = tokio::spawn(
        ack(
            ack_rx,
            AckStream {
                send,
                version,
                deadline: ctx.ack_write_deadline,
            },
            slot.clone(),
            conn.clone(),
            ctx.failed.subscribe(),
            welcome.durable_seq,
        )
        .in_current_span(),
    );

    let outcome = read_batches(&mut recv, conn, ctx, &slot, scope, &pend_tx, stop).await;
    drop(pend_tx);
    let _ = assembler.await;
    let _ = acker.await;
    drop(owner);
    outcome
}

/// Why a Hello must be refused now, if it must: a draining server, a
/// store that refuses writes, or an engine that failed (it would welcome a
/// device only to never acknowledge it).
fn refusal(ctx: &EngineCtx) -> Option<(ErrorCode, String)> {
    if ctx.draining.load(Ordering::Relaxed) {
        return Some((
            ErrorCode::Draining,
            "the server is draining; reconnect later".into(),
        ));
    }
    if let Err(e) = ctx.store.check_writable() {
        return Some((ErrorCode::StoreUnavailable, e.to_string()));
    }
    if ctx.is_failed() {
        return Some((
            ErrorCode::StoreUnavailable,
            "a batch could not be applied on all its shards; the server needs a restart".into(),
        ));
    }
    None
}

/// Sends the device to the node serving its store: a `Redirect` to a
/// device that follows one (version 2), `not_owner` naming the node to
/// one that does not. An empty `owner`: no node is live for the store yet.
async fn redirect(send: &mut quinn::SendStream, version: u8, store: u32, epoch: u64, owner: &str) {
    if version >= REDIRECT_VERSION {
        m::sessions_refused(ErrorCode::NotOwner);
        let _ = write_msg(
            send,
            &Redirect {
                store,
                epoch,
                owner: owner.to_string(),
            },
            version,
        )
        .await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        return;
    }
    let why = if owner.is_empty() {
        format!("store {store} has no live node yet; retry")
    } else {
        format!("store {store} is served by {owner}")
    };
    refuse(send, version, ErrorCode::NotOwner, &why).await;
}

async fn refuse(send: &mut quinn::SendStream, version: u8, code: ErrorCode, reason: &str) {
    m::sessions_refused(code);
    let _ = write_msg(
        send,
        &Reject {
            code: code.as_u16(),
            reason: reason.to_string(),
        },
        version,
    )
    .await;
    let _ = send.finish();
    // Give the Reject a moment to leave before the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(code: u32) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: Default::default(),
        })
    }

    #[test]
    fn a_device_leaving_normally_is_routine_and_a_fault_is_not() {
        let lost = || Err(SessionEnd::Conn("closed by peer: 0".into()));
        assert!(routine_end(&Ok(()), None));
        assert!(routine_end(&lost(), Some(&app_close(0))));
        assert!(routine_end(&Err(SessionEnd::Superseded), None));
        assert!(routine_end(&Err(SessionEnd::ShuttingDown), None));
        // A device that vanished, broke the protocol or was refused.
        assert!(!routine_end(
            &lost(),
            Some(&quinn::ConnectionError::TimedOut)
        ));
        assert!(!routine_end(&lost(), Some(&app_close(1))));
        assert!(!routine_end(&lost(), None));
        assert!(!routine_end(&Err(SessionEnd::NoHello), None));
        assert!(!routine_end(
            &Err(SessionEnd::TooManyBadFrames),
            Some(&app_close(0))
        ));
    }
}
