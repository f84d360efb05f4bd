//! The device's background task: connect, `Hello`, resend, read acks,
//! reconnect with backoff, follow redirects to the node that serves the
//! device's store (where to dial is `route`'s [`Dialer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tillstream_protocol::{Ack, Error as ErrorMsg, ErrorCode, Welcome};
use tokio::sync::{mpsc, watch};

mod path_watch;

use crate::ending::{End, Then, then_after, then_after_loss};
use crate::error::code_name;
use crate::shared::{Refusal, Shared, State};
use crate::wire::{Incoming, hello_frame, read_frame};
use crate::{
    AckEvent, Backoff, ClientConfig, ClientEndpoint, ClientEvent, Dialer, NextAttempt,
    PreparedBatch, RefusedBatch, StaleBatch,
};

/// Application close code of a device that is going away normally.
const CLOSE_NORMAL: u32 = 0;
/// Application close code after the server broke the protocol.
const CLOSE_PROTOCOL: u32 = 1;

/// What lives across the sessions of one device.
#[derive(Debug)]
struct Life {
    backoff: Backoff,
    /// When the last session was lost, until an ack shows recovery.
    lost_at: Option<Instant>,
    welcomed_before: bool,
    /// Where to dial.
    dialer: Dialer,
}

/// The device's task.
#[derive(Debug)]
pub(crate) struct Session {
    shared: Arc<Shared>,
    endpoint: ClientEndpoint,
    cfg: ClientConfig,
    events: Option<mpsc::Sender<ClientEvent>>,
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the handle is gone, which is a shutdown too.
    let _ = rx.wait_for(|&stop| stop).await;
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        endpoint: ClientEndpoint,
        cfg: ClientConfig,
        events: Option<mpsc::Sender<ClientEvent>>,
    ) -> Self {
        Self {
            shared,
            endpoint,
            cfg,
            events,
        }
    }

    /// Runs sessions until shutdown or a fatal rejection.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut life = Life {
            backoff: Backoff::new(
                self.cfg.backoff_min,
                self.cfg.backoff_max,
                self.cfg.device ^ 0x9e37_79b9_7f4a_7c15,
            ),
            lost_at: None,
            welcomed_before: false,
            dialer: Dialer::new(self.cfg.server, &self.cfg.seeds, self.cfg.device),
        };
        loop {
            let target = life.dialer.target();
            let (reason, welcomed, then) =
                match self.session(&mut life, target, &mut shutdown).await {
                    End::Shutdown => return,
                    End::Fatal { code, reason } => {
                        self.send_event(ClientEvent::Fatal {
                            device: self.cfg.device,
                            code,
                            reason,
                        })
                        .await;
                        return;
                    }
                    End::Lost {
                        reason,
                        welcomed,
                        then,
                    } => (reason, welcomed, then),
                };
            {
                let mut st = self.shared.lock();
                st.window.on_disconnect();
                if welcomed {
                    st.stats.disconnects += 1;
                    life.lost_at.get_or_insert_with(Instant::now);
                } else if !matches!(then, Then::Redirect(_)) {
                    st.stats.connect_failures += 1;
                }
                if matches!(then, Then::Redirect(_)) {
                    st.stats.redirects += 1;
                }
                st.stats.last_error = Some(reason.clone());
            }
            let next = match then {
                Then::Same => life.dialer.on_lost(),
                Then::NextSeed => life.dialer.on_failure(),
                Then::Redirect(r) => {
                    let owner = tokio::select! {
                        biased;
                        () = wait_shutdown(&mut shutdown) => return,
                        owner = crate::route::resolve_owner(&self.endpoint, self.cfg.connect_timeout, &r.owner) => owner,
                    };
                    life.dialer.on_redirect(owner)
                }
            };
            let to = life.dialer.target();
            if next == NextAttempt::Now {
                tracing::debug!(%reason, from = %target, %to, "redirected; dialing the owner");
                continue;
            }
            let delay = life.backoff.next_delay();
            tracing::debug!(%reason, welcomed, ?delay, from = %target, %to, "session ended; reconnecting");
            tokio::select! {
                biased;
                () = wait_shutdown(&mut shutdown) => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        life: &mut Life,
        target: SocketAddr,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let setup = tokio::select! {
            biased;
            () = wait_shutdown(shutdown) => return End::Shutdown,
            r = self.connect(target) => r,
        };
        let (conn, mut send, mut recv, welcome) = match setup {
            Ok(s) => s,
            Err(end) => return end,
        };
        for ev in self.on_welcome(welcome, life) {
            self.send_event(ev).await;
        }
        let probes_before = {
            let mut st = self.shared.lock();
            st.live = Some(conn.clone());
            st.stats.mtu_probes
        };
        let end = tokio::select! {
            biased;
            () = wait_shutdown(shutdown) => End::Shutdown,
            end = self.reader(&mut recv, life) => end,
            end = self.writer(&mut send) => end,
            never = self.watch_path(&conn, target, probes_before) => match never {},
        };
        self.learn_path(&conn, target, probes_before, true);
        let (code, why): (u32, &[u8]) = match &end {
            End::Lost { reason, .. } if reason.starts_with("protocol") => {
                (CLOSE_PROTOCOL, b"protocol violation")
            }
            _ => (CLOSE_NORMAL, b"device closing"),
        };
        conn.close(code.into(), why);
        end
    }

    /// Handshake, stream, `Hello`, and the answer of the node at `target`.
    async fn connect(
        &self,
        target: SocketAddr,
    ) -> Result<
        (
            quinn::Connection,
            quinn::SendStream,
            quinn::RecvStream,
            Welcome,
        ),
        End,
    > {
        let cfg = &self.cfg;
        let connecting = self
            .endpoint
            .dial(cfg.tls.as_ref(), target, &cfg.server_name)
            .await
            .map_err(|e| match e {
                quinn::ConnectError::InvalidServerName(_) => {
                    self.fatal(0, format!("invalid server name {:?}", cfg.server_name))
                }
                e => End::failed(format!("cannot connect to {target}: {e}")),
            })?;
        let conn = match tokio::time::timeout(cfg.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(End::failed(format!("handshake with {target} failed: {e}"))),
            Err(_) => return Err(End::failed(format!("handshake with {target} timed out"))),
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| End::failed(format!("cannot open the stream: {e}")))?;
        let hello = hello_frame(cfg.device, &cfg.token)
            .map_err(|e| self.fatal(0, format!("cannot encode Hello: {e}")))?;
        send.write_all(&hello)
            .await
            .map_err(|e| End::failed(format!("cannot write Hello: {e}")))?;
        let answer = match tokio::time::timeout(cfg.connect_timeout, read_frame(&mut recv)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(End::failed(format!("no answer to Hello: {e}"))),
            Err(_) => return Err(End::failed("no answer to Hello in time")),
        };
        match answer {
            Incoming::Welcome(w) => Ok((conn, send, recv, w)),
            Incoming::Redirect(r) => Err(End::redirected(r, false)),
            Incoming::Reject(r) => {
                self.shared
                    .lock()
                    .stats
                    .rejects_by_code
                    .entry(r.code)
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                let retry = ErrorCode::from_u16(r.code).is_some_and(ErrorCode::is_retryable);
                if retry {
                    Err(End::lost(
                        format!(
                            "Hello rejected for now: {} ({})",
                            code_name(r.code),
                            r.reason
                        ),
                        false,
                        then_after(r.code),
                    ))
                } else {
                    Err(self.fatal(r.code, r.reason))
                }
            }
            other => Err(End::failed(format!(
                "protocol: expected Welcome, Redirect or Reject, got {other:?}"
            ))),
        }
    }

    /// Marks the device as rejected for good and tells the listener.
    fn fatal(&self, code: u16, reason: String) -> End {
        tracing::error!(code = %code_name(code), %reason, "device rejected for good");
        let durable = {
            let mut st = self.shared.lock();
            st.fatal = Some((code, reason.clone()));
            st.stats.last_error = Some(reason.clone());
            st.window.durable()
        };
        self.shared.publish(durable);
        End::Fatal { code, reason }
    }

    fn on_welcome(&self, w: Welcome, life: &mut Life) -> Vec<ClientEvent> {
        let now = Instant::now();
        let (acked, stale, durable) = {
            let mut st = self.shared.lock();
            if w.durable_seq < st.window.durable() {
                st.stats.watermark_regressions += 1;
                tracing::warn!(
                    announced = w.durable_seq,
                    known = st.window.durable(),
                    "server's durable seq went backwards"
                );
            }
            let settled = st.window.on_welcome(w.durable_seq, &w.limits);
            let acked = settled.acked;
            let stale = self.refuse_stale(&mut st, settled.stale, now);
            st.stats.connects += 1;
            life.dialer.on_welcome();
            if life.welcomed_before {
                st.stats.reconnects += 1;
            }
            count_acked(&mut st.stats, &acked, &[]);
            // Nothing left to wait for: the session has recovered.
            let recovered = if st.window.is_empty() {
                life.lost_at.take()
            } else {
                None
            };
            if let Some(t) = recovered {
                st.stats.record_recovery(now - t);
            }
            (acked, stale, st.window.durable())
        };
        life.welcomed_before = true;
        tracing::debug!(durable_seq = w.durable_seq, limits = ?w.limits, "welcome");
        self.shared.publish(durable);
        let mut events = Vec::new();
        if !acked.is_empty() {
            events.push(ClientEvent::Acked(AckEvent {
                device: self.cfg.device,
                durable_seq: w.durable_seq,
                at: now,
                batches: acked,
                rejected: Vec::new(),
            }));
        }
        events.extend(stale);
        events
    }

    /// Refuses batches a watermark covers though this client never wrote
    /// them: the server holds their seqs from an earlier user of the device
    /// id, so they were not stored. Returns the events to report.
    fn refuse_stale(
        &self,
        st: &mut State,
        stale: Vec<PreparedBatch>,
        at: Instant,
    ) -> Vec<ClientEvent> {
        let durable = st.window.durable();
        if let (Some(first), Some(last)) = (stale.first(), stale.last()) {
            tracing::error!(
                first = first.seq,
                last = last.seq,
                durable,
                "the server already holds these seqs of this device id: it was used before \
                 with higher seqs; refusing the batches as stale"
            );
        }
        stale
            .into_iter()
            .map(|b| {
                st.stats.stale_batches += 1;
                st.remember_refusal(b.seq, Refusal::Stale { durable });
                ClientEvent::Stale(StaleBatch {
                    device: self.cfg.device,
                    seq: b.seq,
                    events: b.events,
                    durable,
                    at,
                })
            })
            .collect()
    }

    /// Reads acks and errors until the session ends.
    async fn reader(&self, recv: &mut quinn::RecvStream, life: &mut Life) -> End {
        loop {
            let frame = match read_frame(recv).await {
                Ok(f) => f,
                Err(e) => {
                    let then = e.connection_lost().map_or(Then::Same, then_after_loss);
                    return End::lost(e.to_string(), true, then);
                }
            };
            let at = Instant::now();
            let events = match frame {
                Incoming::Ack(ack) => self.on_ack(ack, at, life),
                Incoming::Error(err) => match self.on_error(err, at) {
                    Ok(ev) => ev.into_iter().collect(),
                    Err(end) => return end,
                },
                // Not sent mid-session by the servers of this version;
                // followed all the same.
                Incoming::Redirect(r) => return End::redirected(r, true),
                other => {
                    return End::lost(
                        format!("protocol: unexpected {other:?} mid-session"),
                        true,
                        Then::Same,
                    );
                }
            };
            for ev in events {
                self.send_event(ev).await;
            }
        }
    }

    fn on_ack(&self, ack: Ack, at: Instant, life: &mut Life) -> Vec<ClientEvent> {
        let (acked, stale, durable) = {
            let mut st = self.shared.lock();
            if ack.durable_seq < st.window.durable() {
                st.stats.watermark_regressions += 1;
                tracing::warn!(
                    announced = ack.durable_seq,
                    known = st.window.durable(),
                    "server's durable seq went backwards"
                );
            }
            let settled = st.window.on_ack(ack.durable_seq);
            let acked = settled.acked;
            let stale = self.refuse_stale(&mut st, settled.stale, at);
            count_acked(&mut st.stats, &acked, &ack.rejected);
            if let Some(t) = life.lost_at.take() {
                st.stats.record_recovery(at - t);
            }
            (acked, stale, st.window.durable())
        };
        life.backoff.reset();
        self.shared.publish(durable);
        let mut events = Vec::new();
        if !acked.is_empty() || !ack.rejected.is_empty() {
            events.push(ClientEvent::Acked(AckEvent {
                device: self.cfg.device,
                durable_seq: ack.durable_seq,
                at,
                batches: acked,
                rejected: ack.rejected,
            }));
        }
        events.extend(stale);
        events
    }

    /// A retryable error ends the session (the batch is kept and resent,
    /// at another node after `not_owner`, at this one otherwise);
    /// any other error drops the batch it names, or, without a seq (the
    /// server could not read the frame), the oldest batch written on this
    /// connection that is neither acknowledged nor refused: the server
    /// answers frames in order and writes owed acks before an error.
    fn on_error(&self, err: ErrorMsg, at: Instant) -> Result<Option<ClientEvent>, End> {
        let name = code_name(err.code);
        let mut st = self.shared.lock();
        *st.stats.errors_by_code.entry(err.code).or_default() += 1;
        if ErrorCode::from_u16(err.code).is_some_and(ErrorCode::is_retryable) {
            return Err(End::lost(
                format!("server: {name} at batch {} ({})", err.batch_seq, err.reason),
                true,
                then_after(err.code),
            ));
        }
        let refused = if err.batch_seq == 0 {
            st.window.refuse_oldest_written()
        } else {
            st.window.refuse(err.batch_seq)
        };
        let Some(batch) = refused else {
            drop(st);
            tracing::warn!(code = %name, batch_seq = err.batch_seq, reason = %err.reason, "server error");
            return Ok(None);
        };
        tracing::warn!(code = %name, seq = batch.seq, reason = %err.reason, "server refused a batch for good");
        st.stats.refused_batches += 1;
        st.remember_refusal(
            batch.seq,
            Refusal::Server {
                code: err.code,
                reason: err.reason.clone(),
            },
        );
        let durable = st.window.durable();
        drop(st);
        self.shared.publish(durable);
        Ok(Some(ClientEvent::Refused(RefusedBatch {
            device: self.cfg.device,
            seq: batch.seq,
            events: batch.events,
            code: err.code,
            reason: err.reason,
            at,
        })))
    }

    /// Writes queued batches in seq order, as far as the window allows.
    async fn writer(&self, send: &mut quinn::SendStream) -> End {
        loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut st = self.shared.lock();
                let next = st.window.next_to_write(Instant::now());
                if let Some(n) = &next {
                    st.stats.batches_written += 1;
                    if n.resend {
                        st.stats.resent_batches += 1;
                    }
                }
                next
            };
            match next {
                Some(n) => {
                    // As a chunk, quinn keeps the frame itself until it is
                    // acknowledged: `write_all` copied every frame into a
                    // fresh buffer, then into the packets.
                    let frame = bytes::Bytes::from_owner(n.frame);
                    if let Err(e) = send.write_chunk(frame).await {
                        let then = match &e {
                            quinn::WriteError::ConnectionLost(c) => then_after_loss(c),
                            _ => Then::Same,
                        };
                        return End::lost(
                            format!("write of batch {} failed: {e}", n.seq),
                            true,
                            then,
                        );
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Tells the listener, if any; a closed listener is not the device's
    /// problem.
    async fn send_event(&self, ev: ClientEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev).await;
        }
    }
}

fn count_acked(
    stats: &mut crate::ClientStats,
    acked: &[crate::AckedBatch],
    rejected: &[tillstream_protocol::RejectedRef],
) {
    stats.acked_batches += acked.len() as u64;
    stats.acked_events += acked.iter().map(|b| u64::from(b.events)).sum::<u64>();
    stats.rejected_events += rejected.len() as u64;
    for r in rejected {
        *stats.rejected_by_code.entry(r.code).or_default() += 1;
    }
}
