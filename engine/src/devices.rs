//! The devices the server has seen: each one's dedupe ledger (applied and
//! durable seq), shared by every session of that device.
//!
//! Invariants:
//! - a device's batches are applied in seq order by at most one session at
//!   a time: a new session takes ownership (under the ledger's lock, so the
//!   old reader's next `admit` fails), closes the old connection, and its
//!   `Welcome` waits until the device is quiescent (everything applied is
//!   durable), so the watermark it announces is exact;
//! - `durable` only grows, and only the flusher raises it, once the journal
//!   holds the batch;
//! - a slot leaves memory (passivation) only when no session or unit holds
//!   it, everything it admitted is durable and its last batch is in the
//!   tables: the watermark a new slot reads from the tables is then exact.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tillstream_engine_core::ledger::{
    Admission, DeviceLedger, DigestCheck, DistinctKeys, DistinctSkus, RecentDigests,
};
use tillstream_engine_core::route::event_skus;
use tillstream_protocol::{ArchivedBatch, FrameError};
use tillstream_storage::Store;
use tokio::sync::watch;

/// What a batch costs against a device's event rate at least, whatever
/// it holds: every batch costs the server a journal record, a message to
/// each shard it touches and an ack. Without it, a device sending one-event
/// batches at its event rate cost the others as much as 64 devices.
pub(crate) const MIN_BATCH_COST: u32 = 64;

/// One device's ledger and the session that currently owns it.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    pub(crate) device: u64,
    /// The device's event rate limit (GCRA), across its connections, and
    /// the rate it was made for: a reload of the rate replaces it at the
    /// device's next batch.
    limiter: Mutex<Option<(u32, Arc<governor::DefaultDirectRateLimiter>)>>,
    state: Mutex<SlotState>,
    durable_tx: watch::Sender<u64>,
}

/// Guarded together, so a superseded session can never admit a batch once
/// the new one has taken over.
#[derive(Debug)]
struct SlotState {
    ledger: DeviceLedger,
    /// Digests of the latest fresh batches, to check resends.
    recent: RecentDigests,
    /// The stores the device sent for, and the terminals it sold on.
    stores: DistinctKeys,
    terminals: DistinctKeys,
    skus: DistinctSkus,
    owner: Option<quinn::Connection>,
    /// LSN of the last batch that became durable (0: none since loaded).
    last_lsn: u64,
    /// Since when no session owns the slot.
    idle_since: Instant,
}

/// A session's hold on its device's slot: the slot's owner until dropped.
/// Dropped on every way out of a session, so no path leaves a closed
/// connection as owner: such a slot would never pass for idle, and a store
/// holding it could never be handed over (it once held a hand-off for
/// minutes after a `Welcome` that failed to send).
#[derive(Debug)]
pub(crate) struct Ownership {
    slot: Arc<DeviceSlot>,
    conn: quinn::Connection,
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.slot.release(&self.conn);
    }
}

impl DeviceSlot {
    /// Decides whether a batch is new or a replay, and records a new one
    /// as applied, with its `digest`; `None` if `conn` no longer owns the
    /// device (a newer connection took over: the old one must stop
    /// reading). A replay comes with what the recent digests know of it.
    pub(crate) fn admit(
        &self,
        seq: u64,
        digest: u64,
        conn: &quinn::Connection,
    ) -> Option<(Admission, DigestCheck)> {
        let mut st = self.state.lock();
        let owns = st
            .owner
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        if !owns {
            return None;
        }
        let admission = st.ledger.admit(seq);
        let check = match admission {
            Admission::Fresh => {
                st.recent.record(seq, digest);
                DigestCheck::Same
            }
            Admission::Duplicate => st.recent.check(seq, digest),
            Admission::TooFarAhead => DigestCheck::Unknown,
        };
        Some((admission, check))
    }

    /// Called by the flusher once the journal holds `seq`, whose LSN is `lsn`.
    pub(crate) fn mark_durable(&self, seq: u64, lsn: u64) {
        let durable = {
            let mut st = self.state.lock();
            st.ledger.mark_durable(seq);
            st.last_lsn = st.last_lsn.max(lsn);
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

    /// Whether `batch` stays within the device's limits of distinct
    /// stores, terminals and (store, SKU) pairs (recording its new ones if
    /// so, none if not); the error to refuse it with otherwise.
    pub(crate) fn admit_keys(
        &self,
        batch: &ArchivedBatch,
        max_stores: usize,
        max_terminals: usize,
        max_skus: usize,
    ) -> Result<(), FrameError> {
        let limit = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut st = self.state.lock();
        let mark = st.stores.len();
        if !st
            .stores
            .admit(batch.events.iter().map(|e| e.store()), max_stores)
        {
            return Err(FrameError::TooManyStores {
                limit: limit(max_stores),
            });
        }
        let terminals = batch.events.iter().filter_map(|e| e.terminal());
        let terminal_mark = st.terminals.len();
        if !st.terminals.admit(terminals, max_terminals) {
            st.stores.forget_since(mark);
            return Err(FrameError::TooManyTerminals {
                limit: limit(max_terminals),
            });
        }
        let skus = batch.events.iter().flat_map(event_skus);
        if !st.skus.admit(skus, max_skus) {
            st.stores.forget_since(mark);
            st.terminals.forget_since(terminal_mark);
            return Err(FrameError::TooManySkus {
                limit: limit(max_skus),
            });
        }
        Ok(())
    }

    /// The limiter for `rate` events a second in bursts of `burst`: the
    /// slot's own, or a new one if the rate was reloaded since.
    fn limiter(&self, rate: NonZeroU32, burst: u32) -> Arc<governor::DefaultDirectRateLimiter> {
        let mut held = self.limiter.lock();
        match &*held {
            Some((r, limiter)) if *r == rate.get() => limiter.clone(),
            _ => {
                let quota = governor::Quota::per_second(rate)
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(rate));
                let limiter = Arc::new(governor::RateLimiter::direct(quota));
                *held = Some((rate.get(), limiter.clone()));
                limiter
            }
        }
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

    /// Makes `conn` the device's session, closing the previous one, until
    /// the returned hold is dropped.
    pub(crate) fn take_ownership(self: &Arc<Self>, conn: &quinn::Connection) -> Ownership {
        let old = self.state.lock().owner.replace(conn.clone());
        if let Some(old) = old
            && old.stable_id() != conn.stable_id()
        {
            old.close(
                SUPERSEDED,
                b"superseded by a newer connection of this device",
            );
        }
        Ownership {
            slot: self.clone(),
            conn: conn.clone(),
        }
    }

    /// Forgets `conn` as owner if it still is.
    fn release(&self, conn: &quinn::Connection) {
        let mut st = self.state.lock();
        if st
            .owner
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            st.owner = None;
            st.idle_since = Instant::now();
        }
    }

    /// Whether the slot may leave memory (module docs), once no one else
    /// holds it.
    fn idle(&self, since_before: Instant, materialized_lsn: u64) -> bool {
        let st = self.state.lock();
        st.owner.is_none()
            && st.idle_since < since_before
            && st.ledger.is_quiescent()
            && st.last_lsn <= materialized_lsn
    }
}

/// QUIC application close code of a superseded connection.
pub(crate) const SUPERSEDED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// Every device seen since start.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    slots: Mutex<HashMap<u64, Arc<DeviceSlot>>>,
    /// The smallest burst a device's rate limit allows: one whole batch,
    /// or a batch could never pass.
    min_burst: u32,
}

impl Devices {
    /// A registry whose devices' bursts hold at least `min_burst` events
    /// (the largest batch).
    pub(crate) fn new(min_burst: u32) -> Self {
        Self {
            slots: Mutex::default(),
            min_burst,
        }
    }

    /// Waits until `slot`'s device may send a batch of `events` events at
    /// `rate` events a second (0: no limit; a batch counts as at least
    /// `MIN_BATCH_COST` events); returns whether it had to wait.
    ///
    /// The burst is a tenth of a second's events, and never less than one
    /// whole batch: a runaway device's backlog must not land on the shards
    /// all at once (4 batches of burst raised the honest devices' ack p99
    /// sixfold in the hostile-fleet test).
    pub(crate) async fn pace(&self, slot: &DeviceSlot, events: u32, rate: u32) -> bool {
        let (Some(rate), Some(n)) = (
            NonZeroU32::new(rate),
            NonZeroU32::new(events.max(MIN_BATCH_COST)),
        ) else {
            return false;
        };
        let limiter = slot.limiter(rate, (rate.get() / 10).max(self.min_burst));
        match limiter.check_n(n) {
            Ok(Ok(())) => false,
            Ok(Err(_)) => {
                // The burst holds a whole batch, so this always resolves.
                let _ = limiter.until_n_ready(n).await;
                true
            }
            Err(_) => false,
        }
    }

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
                limiter: Mutex::new(None),
                state: Mutex::new(SlotState {
                    ledger: DeviceLedger::new(durable),
                    recent: RecentDigests::default(),
                    stores: DistinctKeys::default(),
                    terminals: DistinctKeys::default(),
                    skus: DistinctSkus::default(),
                    owner: None,
                    last_lsn: 0,
                    idle_since: Instant::now(),
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

    /// Drops the slots of devices gone since before `since_before` whose
    /// batches are all in the tables (up to `materialized_lsn`); their
    /// next session reads the watermark from the store again. Returns how
    /// many left.
    pub(crate) fn passivate_idle(&self, since_before: Instant, materialized_lsn: u64) -> usize {
        let mut slots = self.slots.lock();
        let before = slots.len();
        // Under the map's lock no session can take a slot it does not
        // already hold: a count of one means no one holds it.
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1 || !slot.idle(since_before, materialized_lsn)
        });
        before - slots.len()
    }
}

impl Devices {
    /// Drops the slots of `devices` (a store handed to another node) that
    /// no session holds and whose batches are all in the tables; returns
    /// those that must wait. Kept, a slot would hold a watermark the new
    /// owner moves past, and turn it back should the device return.
    pub(crate) fn forget(&self, devices: &[u64], materialized_lsn: u64) -> Vec<u64> {
        let mut slots = self.slots.lock();
        devices
            .iter()
            .copied()
            .filter(|d| {
                let Some(slot) = slots.get(d) else {
                    return false;
                };
                let done = Arc::strong_count(slot) == 1 && {
                    let st = slot.state.lock();
                    st.owner.is_none()
                        && st.ledger.is_quiescent()
                        && st.last_lsn <= materialized_lsn
                };
                if done {
                    slots.remove(d);
                }
                !done
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_in(dir: &std::path::Path) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
        Ok(Arc::new(tillstream_embedded::EmbeddedStore::open(
            &dir.join("store"),
        )?))
    }

    #[tokio::test]
    async fn a_batch_costs_at_least_its_minimum_against_the_rate()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = store_in(dir.path())?;
        // Four minimum batches a second, and a burst of as many.
        let rate = MIN_BATCH_COST * 4;
        let devices = Devices::new(rate);
        let slot = devices.slot(1, &store).await?;
        for _ in 0..4 {
            assert!(!devices.pace(&slot, 1, rate).await, "within the burst");
        }
        // A fifth one-event batch is past 4 x 64 events: it waits a quarter
        // of a second, as a 64-event batch would.
        let started = Instant::now();
        assert!(devices.pace(&slot, 1, rate).await);
        assert!(started.elapsed() >= Duration::from_millis(150));
        Ok(())
    }

    #[tokio::test]
    async fn a_reloaded_rate_applies_to_a_device_already_known()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = store_in(dir.path())?;
        let devices = Devices::new(MIN_BATCH_COST);
        let slot = devices.slot(1, &store).await?;
        // At one minimum batch a second, the second batch waits...
        assert!(!devices.pace(&slot, 1, MIN_BATCH_COST).await);
        assert!(devices.pace(&slot, 1, MIN_BATCH_COST).await);
        // ...with no limit, none does...
        for _ in 0..100 {
            assert!(!devices.pace(&slot, 1, 0).await);
        }
        // ...and at a rate raised a thousandfold, the same slot's next
        // batches pass at once, the old limiter's debt forgotten.
        for _ in 0..10 {
            assert!(!devices.pace(&slot, 1, MIN_BATCH_COST * 1000).await);
        }
        Ok(())
    }

    /// However a session ends (here: as if writing its `Welcome` failed
    /// and it returned early), dropping its hold lets the slot go; while
    /// held, a hand-off must wait for it.
    #[tokio::test]
    async fn a_session_gone_on_any_path_leaves_its_slot_free_to_forget() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(tillstream_embedded::EmbeddedStore::open(
            &dir.path().join("store"),
        )?);
        let (_device, conn) = crate::tls::tests::loopback_connection(dir.path(), 1472).await?;
        let devices = Devices::new(MIN_BATCH_COST);
        let slot = devices.slot(7, &store).await?;
        let owner = slot.take_ownership(&conn);
        let early_return = async move {
            let _owner = owner;
            conn.close(0u32.into(), b"gone");
            Err::<(), &str>("the Welcome could not be written")
        };
        assert!(devices.forget(&[7], 0) == vec![7], "held by a live session");
        assert!(early_return.await.is_err());
        drop(slot);
        assert_eq!(
            devices.forget(&[7], 0),
            Vec::<u64>::new(),
            "the slot stayed owned"
        );
        Ok(())
    }
}
