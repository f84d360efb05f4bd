//! The device handle: what a program holds to send one device's batches
//! and wait for their acks. It starts the background task (`session`) and
//! reads the state the two share (`shared`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::session::Session;
use crate::shared::{Refusal, Shared, State};
use crate::{
    ClientConfig, ClientEndpoint, ClientError, ClientEvent, ClientStats, PreparedBatch, Window,
};

/// How long [`DeviceClient::close`] waits for the task to close its
/// connection before aborting it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One device's session with the server, kept alive by a background task
/// that reconnects and resends until the client is closed or the server
/// rejects the device for good.
#[derive(Debug)]
pub struct DeviceClient {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl DeviceClient {
    /// Starts the device's task on the current tokio runtime. It connects
    /// through `endpoint` (see [`client_endpoint`](crate::client_endpoint)).
    pub fn start(endpoint: ClientEndpoint, cfg: ClientConfig) -> Self {
        Self::spawn(endpoint, cfg, None)
    }

    /// Like [`start`](Self::start), and reports every ack, refusal and
    /// fatal rejection on `events` (many devices may share one channel). A
    /// full channel slows the device's reading of acks; a closed one is
    /// ignored.
    pub fn start_with_events(
        endpoint: ClientEndpoint,
        cfg: ClientConfig,
        events: mpsc::Sender<ClientEvent>,
    ) -> Self {
        Self::spawn(endpoint, cfg, Some(events))
    }

    fn spawn(
        endpoint: ClientEndpoint,
        cfg: ClientConfig,
        events: Option<mpsc::Sender<ClientEvent>>,
    ) -> Self {
        let shared = Arc::new(Shared::new(
            cfg.device,
            State::new(Window::new(cfg.max_inflight).with_replay(cfg.replay)),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let span = tracing::info_span!("device", device = cfg.device);
        let session = Session::new(shared.clone(), endpoint, cfg, events);
        let task = tokio::spawn(session.run(shutdown_rx).instrument(span));
        Self {
            shared,
            shutdown,
            task: Some(task),
        }
    }

    /// Queues `batch` for sending, waiting while the window (the configured
    /// bound, lowered by the server's limit) is full. The batch is kept and
    /// resent after reconnects until it is acknowledged or refused. Seqs
    /// must start at 1 and grow, and be above the server's durable seq for
    /// the device ([`ClientError::Stale`] otherwise, unless
    /// [`ClientConfig::replay`] is set).
    pub async fn send(&self, batch: PreparedBatch) -> Result<(), ClientError> {
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if let Some((code, reason)) = &st.fatal {
                    return Err(self.rejected(*code, reason));
                }
                if st.closed {
                    return Err(ClientError::Closed);
                }
                if st.window.has_room() {
                    if let Err(e) = st.window.push(batch) {
                        if let ClientError::Stale { seq, durable } = e {
                            st.stats.stale_batches += 1;
                            st.remember_refusal(seq, Refusal::Stale { durable });
                        }
                        return Err(e);
                    }
                    drop(st);
                    self.shared.work.notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// The durable seq as the server announces it (0 before the first
    /// acknowledgement). It may change by leaps: acks are cumulative.
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Waits until batch `seq` is durable. Fails at once if it was refused
    /// (by the server, or as stale), even when later batches are durable;
    /// if the device was rejected or the client closed; and after
    /// `timeout`.
    pub async fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.shared.changes();
        loop {
            let durable = {
                let st = self.shared.lock();
                // Refusals first: a cumulative ack above a refused seq does
                // not make it durable.
                if let Some(why) = st.refused.get(&seq) {
                    return Err(why.error(seq));
                }
                let durable = st.window.durable();
                if durable >= seq {
                    return Ok(());
                }
                if let Some((code, reason)) = &st.fatal {
                    return Err(self.rejected(*code, reason));
                }
                if st.closed {
                    return Err(ClientError::Closed);
                }
                durable
            };
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => return Err(ClientError::Timeout { seq, durable }),
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        let st = self.shared.lock();
        let mut stats = st.stats.clone();
        if let Some(conn) = &st.live {
            stats.add_quic(&conn.stats().path);
        }
        stats
    }

    /// The device id.
    pub fn device(&self) -> u64 {
        self.shared.device
    }

    /// Batches held unacknowledged.
    pub fn unacked(&self) -> usize {
        self.shared.lock().window.len()
    }

    /// Stops the device: no more sends, the connection is closed. What is
    /// not acknowledged yet is dropped, so call
    /// [`wait_acked`](Self::wait_acked) first when it matters.
    pub async fn close(mut self) {
        self.signal_close();
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(CLOSE_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }

    fn signal_close(&self) {
        self.shared.lock().closed = true;
        self.shutdown.send_replace(true);
        let durable = self.shared.lock().window.durable();
        self.shared.publish(durable);
    }

    fn rejected(&self, code: u16, reason: &str) -> ClientError {
        ClientError::Rejected {
            device: self.shared.device,
            code,
            reason: reason.to_owned(),
        }
    }
}

impl Drop for DeviceClient {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.signal_close();
        }
    }
}
