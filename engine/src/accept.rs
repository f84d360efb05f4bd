//! Accepting connections, a bounded number of handshakes at a time.
//!
//! Why bounded: in a reconnect storm the whole fleet dials at once. Started
//! all together, the handshakes share the CPU and each one takes as long as
//! the whole backlog; those still unfinished when the device's idle timeout
//! (5 s) fires are abandoned after the server has paid for them, the
//! devices dial again, and the storm feeds on itself. So at most
//! `max_handshakes` connections are between their first packet and their
//! `Welcome` at once. The others wait, oldest first, in a queue of
//! `MAX_QUEUED`. A connection that waited longer than `max_wait` (its
//! device is close to giving up), or that finds the queue full, is refused
//! at once with QUIC's CONNECTION_REFUSED: the device backs off and dials
//! again instead of timing out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::audit::Record;
use crate::ctx::EngineCtx;
use crate::metrics as m;
use crate::session;

/// Connections waiting for a handshake slot. quinn holds each one's first
/// datagrams (about 1.2 KiB each) until it is accepted or refused.
const MAX_QUEUED: usize = 16_384;

/// Connections waiting for a slot above which a new one must first prove
/// its address (QUIC Retry, one round trip): in a flood of spoofed source
/// addresses those never come back, and cost no handshake.
const RETRY_ABOVE_QUEUED: usize = 64;

/// Longest a handshake may take once started: a device gives up after its
/// idle timeout (5 s by default) and dials again.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections may be set up at once, and how long one may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdmissionLimits {
    /// Connections between their first packet and `Welcome` at once.
    pub(crate) max_handshakes: usize,
    /// Longest a connection waits for a slot before it is refused.
    pub(crate) max_wait: Duration,
}

/// Accepts connections until shutdown, then drains the sessions for up to
/// `drain_timeout`.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<EngineCtx>,
    mut shutdown: watch::Receiver<bool>,
    limits: AdmissionLimits,
    drain_timeout: Duration,
) {
    let mut sessions = JoinSet::new();
    let stop_signal = shutdown.clone();
    let slots = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let (queue_tx, mut queue) = mpsc::channel::<(quinn::Incoming, Instant)>(MAX_QUEUED);
    // A slot taken ahead of the connection that will use it.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if sessions.len() >= ctx.live.max_connections() {
                    m::connection_refused("too_many_connections");
                    ctx.auth.audit.log_unauthenticated(
                        Record::new("limit", "too many connections")
                            .peer(incoming.remote_address()),
                    );
                    incoming.refuse();
                    continue;
                }
                let queued = queue_tx.max_capacity() - queue_tx.capacity();
                if queued > RETRY_ABOVE_QUEUED && incoming.may_retry() {
                    m::connection_retried();
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                if let Err(full) = queue_tx.try_send((incoming, Instant::now())) {
                    let (incoming, _) = full.into_inner();
                    m::connection_refused("queue_full");
                    ctx.auth.audit.log_unauthenticated(
                        Record::new("limit", "set-up queue full")
                            .peer(incoming.remote_address()),
                    );
                    incoming.refuse();
                }
            }
            permit = slots.clone().acquire_owned(), if slot.is_none() => slot = permit.ok(),
            Some((incoming, queued_at)) = queue.recv(), if slot.is_some() => {
                let waited = queued_at.elapsed();
                m::connection_waited(waited);
                if waited > limits.max_wait {
                    m::connection_refused("waited_too_long");
                    ctx.auth.audit.log_unauthenticated(
                        Record::new("limit", "waited too long for a set-up slot")
                            .peer(incoming.remote_address()),
                    );
                    incoming.refuse();
                    continue;
                }
                let ctx = ctx.clone();
                let stop = stop_signal.clone();
                let admitted = slot.take();
                let peer = incoming.remote_address();
                sessions.spawn(async move {
                    // Before the handshake ends the server's own idle
                    // timeout (30 s) applies: a device that gave up must
                    // not hold its slot that long.
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                        Ok(Ok(conn)) => session::serve(conn, ctx, stop, admitted).await,
                        Ok(Err(e)) => {
                            // A client certificate the device CA did not
                            // sign ends here, in the TLS handshake.
                            let reason = e.to_string();
                            ctx.auth.audit.log_unauthenticated(
                                Record::new("handshake_failed", &reason).peer(peer),
                            );
                            tracing::debug!(error = %e, "handshake failed");
                        }
                        Err(_) => {
                            m::connection_refused("handshake_timeout");
                            tracing::debug!("handshake timed out");
                        }
                    }
                });
            }
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    endpoint.set_server_config(None);
    queue.close();
    while let Ok((incoming, _)) = queue.try_recv() {
        incoming.refuse();
    }
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_timeout, drain).await.is_err() {
        tracing::warn!(
            left = sessions.len(),
            "drain timeout: closing the remaining sessions"
        );
        sessions.abort_all();
    }
}
