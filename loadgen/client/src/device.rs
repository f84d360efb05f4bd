//! The device handle and the state it shares with its background task.
//!
//! Who touches what: `State` sits behind one mutex, held only for short,
//! non-async bookkeeping. Senders (`DeviceClient::send`) push into the
//! window and wake the writer through `work`; the task's reader applies
//! acks and errors, publishes the durable seq on `durable`, and wakes
//! senders and waiters through `space` and `changed`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::session::Session;
use crate::{ClientConfig, ClientError, ClientEvent, ClientStats, PreparedBatch, Window};

/// Most refusals remembered for [`DeviceClient::wait_acked`].
const REFUSALS_KEPT: usize = 4096;

/// How long [`DeviceClient::close`] waits for the task to close its
/// connection before aborting it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) window: Window,
    pub(crate) stats: ClientStats,
    /// Refused seqs with their code and reason (the newest `REFUSALS_KEPT`).
    pub(crate) refused: BTreeMap<u64, (u16, String)>,
    /// Set when the server rejected the device for good.
    pub(crate) fatal: Option<(u16, String)>,
    pub(crate) closed: bool,
}

impl State {
    pub(crate) fn remember_refusal(&mut self, seq: u64, code: u16, reason: String) {
        self.refused.insert(seq, (code, reason));
        while self.refused.len() > REFUSALS_KEPT {
            self.refused.pop_first();
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) device: u64,
    state: Mutex<State>,
    /// Senders wait here for room in the window.
    pub(crate) space: Notify,
    /// The writer waits here for something to write.
    pub(crate) work: Notify,
    /// The durable seq, for [`DeviceClient::acks`].
    pub(crate) durable: watch::Sender<u64>,
    /// Bumped on every change a waiter may care about.
    changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the durable seq and wakes senders, waiters and the writer.
    pub(crate) fn publish(&self, durable: u64) {
        self.durable.send_if_modified(|v| {
            let changed = *v != durable;
            *v = durable;
            changed
        });
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
        self.space.notify_waiters();
        self.work.notify_one();
    }
}

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
    pub fn start(endpoint: quinn::Endpoint, cfg: ClientConfig) -> Self {
        Self::spawn(endpoint, cfg, None)
    }

    /// Like [`start`](Self::start), and reports every ack, refusal and
    /// fatal rejection on `events` (many devices may share one channel). A
    /// full channel slows the device's reading of acks; a closed one is
    /// ignored.
    pub fn start_with_events(
        endpoint: quinn::Endpoint,
        cfg: ClientConfig,
        events: mpsc::Sender<ClientEvent>,
    ) -> Self {
        Self::spawn(endpoint, cfg, Some(events))
    }

    fn spawn(
        endpoint: quinn::Endpoint,
        cfg: ClientConfig,
        events: Option<mpsc::Sender<ClientEvent>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            device: cfg.device,
            state: Mutex::new(State {
                window: Window::new(cfg.max_inflight),
                stats: ClientStats::default(),
                refused: BTreeMap::new(),
                fatal: None,
                closed: false,
            }),
            space: Notify::new(),
            work: Notify::new(),
            durable: watch::Sender::new(0),
            changed: watch::Sender::new(0),
        });
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
    /// must start at 1 and grow.
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
                    st.window.push(batch)?;
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

    /// Waits until batch `seq` is durable. Fails at once if it was refused,
    /// the device was rejected or the client closed, and after `timeout`.
    pub async fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.shared.changed.subscribe();
        loop {
            let durable = {
                let st = self.shared.lock();
                let durable = st.window.durable();
                if durable >= seq {
                    return Ok(());
                }
                if let Some((code, reason)) = st.refused.get(&seq) {
                    return Err(ClientError::Refused {
                        seq,
                        code: *code,
                        reason: reason.clone(),
                    });
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
        self.shared.lock().stats.clone()
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
