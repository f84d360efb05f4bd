//! The state a device's handle ([`DeviceClient`](crate::DeviceClient),
//! `device`) shares with its background task (`session`). It sits in a
//! module of its own because both sides use it: the handle starts the task,
//! and the task updates what the handle reads, so neither imports the
//! other's module for it.
//!
//! Who touches what: `State` sits behind one mutex, held only for short,
//! non-async bookkeeping. Senders (`DeviceClient::send`) push into the
//! window and wake the writer through `work`; the task's reader applies
//! acks and errors, publishes the durable seq on `durable`, and wakes
//! senders and waiters through `space` and `changed`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use crate::{ClientError, ClientStats, Window};

/// Why a batch will never be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server refused it with an `Error` frame.
    Server { code: u16, reason: String },
    /// The server already held its seq (up to `durable`) from an earlier
    /// user of the device id.
    Stale { durable: u64 },
}

impl Refusal {
    /// The error a sender or waiter of batch `seq` gets.
    pub(crate) fn error(&self, seq: u64) -> ClientError {
        match self {
            Refusal::Server { code, reason } => ClientError::Refused {
                seq,
                code: *code,
                reason: reason.clone(),
            },
            Refusal::Stale { durable } => ClientError::Stale {
                seq,
                durable: *durable,
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) window: Window,
    pub(crate) stats: ClientStats,
    /// Every refused seq, so that
    /// [`DeviceClient::wait_acked`](crate::DeviceClient::wait_acked) never
    /// takes one for acknowledged when a later batch is. Not capped:
    /// refusals are rare (each is a dead letter on the server, or a stale
    /// batch that stops the sender), and forgetting one would give a wrong
    /// answer.
    pub(crate) refused: BTreeMap<u64, Refusal>,
    /// Set when the server rejected the device for good.
    pub(crate) fatal: Option<(u16, String)>,
    pub(crate) closed: bool,
    /// The connection of the session under way, whose QUIC counters
    /// [`DeviceClient::stats`](crate::DeviceClient::stats) adds to those of
    /// the sessions before it.
    pub(crate) live: Option<quinn::Connection>,
}

impl State {
    /// A device's state before its first session: nothing sent, refused
    /// or connected.
    pub(crate) fn new(window: Window) -> Self {
        Self {
            window,
            stats: ClientStats::default(),
            refused: BTreeMap::new(),
            fatal: None,
            closed: false,
            live: None,
        }
    }

    pub(crate) fn remember_refusal(&mut self, seq: u64, why: Refusal) {
        self.refused.insert(seq, why);
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
    /// The durable seq, for [`DeviceClient::acks`](crate::DeviceClient::acks).
    pub(crate) durable: watch::Sender<u64>,
    /// Bumped on every change a waiter may care about.
    changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(device: u64, state: State) -> Self {
        Self {
            device,
            state: Mutex::new(state),
            space: Notify::new(),
            work: Notify::new(),
            durable: watch::Sender::new(0),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Told of every change a waiter may care about (see [`publish`](Self::publish)).
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_never_forgotten() {
        let mut st = State::new(Window::new(8));
        for seq in 1..=10_000 {
            st.remember_refusal(
                seq,
                Refusal::Server {
                    code: 5,
                    reason: "bad".into(),
                },
            );
        }
        st.remember_refusal(10_001, Refusal::Stale { durable: 20_000 });
        assert!(matches!(
            st.refused.get(&1).map(|r| r.error(1)),
            Some(ClientError::Refused {
                seq: 1,
                code: 5,
                ..
            })
        ));
        assert!(matches!(
            st.refused.get(&10_001).map(|r| r.error(10_001)),
            Some(ClientError::Stale {
                seq: 10_001,
                durable: 20_000
            })
        ));
    }
}
