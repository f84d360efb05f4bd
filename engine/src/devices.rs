//! The devices the server has seen: each one's dedupe ledger (applied and
//! durable seq), shared by every session of that device.
//!
//! Invariants:
//! - a device's batches are applied in seq order by at most one session at
//!   a time: a new session takes ownership (under the ledger's lock, so the
//!   old reader's next `admit` fails), closes the old connection, and its
//!   `Welcome` waits until the device is quiescent (everything applied is
//!   durable), so the watermark it announces is exact;
//! - `durable` only grows, and only the flusher raises it, after the commit
//!   that holds the batch's rows and watermark returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tillstream_engine_core::ledger::{Admission, DeviceLedger};
use tillstream_storage::Store;
use tokio::sync::watch;

/// One device's ledger and the session that currently owns it.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    pub(crate) device: u64,
    state: Mutex<SlotState>,
    durable_tx: watch::Sender<u64>,
}

/// Guarded together, so a superseded session can never admit a batch once
/// the new one has taken over.
#[derive(Debug)]
struct SlotState {
    ledger: DeviceLedger,
    owner: Option<quinn::Connection>,
}

impl DeviceSlot {
    /// Decides whether a batch is new or a replay, and records it as
    /// applied; `None` if `conn` no longer owns the device (a newer
    /// connection took over: the old one must stop reading).
    pub(crate) fn admit(&self, seq: u64, conn: &quinn::Connection) -> Option<Admission> {
        let mut st = self.state.lock();
        let owns = st
            .owner
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        owns.then(|| st.ledger.admit(seq))
    }

    /// Called by the flusher once the commit holding `seq` is durable.
    pub(crate) fn mark_durable(&self, seq: u64) {
        let durable = {
            let mut st = self.state.lock();
            st.ledger.mark_durable(seq);
            st.ledger.durable()
        };
        self.durable_tx.send_if_modified(|d| {
            if *d < durable {
                *d = durable;
                true
            } else {
                false
            }
        });
    }

    /// The highest durable seq.
    pub(crate) fn durable(&self) -> u64 {
        self.state.lock().ledger.durable()
    }

    /// Waits until `seq` is durable.
    pub(crate) async fn wait_durable(&self, seq: u64) {
        let mut rx = self.durable_tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` only fails if the
        // slot is gone, which cannot happen while we borrow it.
        let _ = rx.wait_for(|d| *d >= seq).await;
    }

    /// Waits until everything applied is durable; false on timeout.
    pub(crate) async fn wait_quiescent(&self, timeout: Duration) -> bool {
        let mut rx = self.durable_tx.subscribe();
        let wait = async {
            loop {
                if self.state.lock().ledger.is_quiescent() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Makes `conn` the device's session, closing the previous one.
    pub(crate) fn take_ownership(&self, conn: &quinn::Connection) {
        let old = self.state.lock().owner.replace(conn.clone());
        if let Some(old) = old
            && old.stable_id() != conn.stable_id()
        {
            old.close(
                SUPERSEDED,
                b"superseded by a newer connection of this device",
            );
        }
    }

    /// Forgets `conn` as owner if it still is.
    pub(crate) fn release(&self, conn: &quinn::Connection) {
        let mut st = self.state.lock();
        if st
            .owner
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            st.owner = None;
        }
    }
}

/// QUIC application close code of a superseded connection.
pub(crate) const SUPERSEDED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// Every device seen since start.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    slots: Mutex<HashMap<u64, Arc<DeviceSlot>>>,
}

impl Devices {
    /// The device's slot, loading its watermark from the store on first use.
    pub(crate) async fn slot(
        &self,
        device: u64,
        store: &Arc<dyn Store>,
    ) -> Result<Arc<DeviceSlot>, tillstream_storage::StoreError> {
        if let Some(s) = self.slots.lock().get(&device) {
            return Ok(s.clone());
        }
        let st = store.clone();
        let durable = tokio::task::spawn_blocking(move || st.watermark(device))
            .await
            .map_err(|e| tillstream_storage::StoreError::Backend {
                op: "watermark read",
                source: Box::new(e),
            })??;
        let mut slots = self.slots.lock();
        // Another session may have loaded it meanwhile: keep the first.
        let slot = slots.entry(device).or_insert_with(|| {
            Arc::new(DeviceSlot {
                device,
                state: Mutex::new(SlotState {
                    ledger: DeviceLedger::new(durable),
                    owner: None,
                }),
                durable_tx: watch::Sender::new(durable),
            })
        });
        Ok(slot.clone())
    }

    /// Devices known.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}
