//! Several nodes serving one fleet over one ScyllaDB keyspace
//! (ARCHITECTURE.md, "Several nodes"; docs/internals/nodes.md).
//!
//! Each node renews its row of `cluster_members`; each store is served by
//! one node at a time, the one rendezvous hashing picks among the live
//! members (`tillstream_engine_core::cluster`), which takes the store's
//! row of `store_owners` with a lightweight transaction raising its epoch.
//! Here, the node's side of it:
//!
//! - [`Cluster::admit`]: at `Hello`, whether this node serves the
//!   device's store, takes it, or sends the device to its owner.
//! - `task`: the heartbeat, the view of the members, the replay of a dead
//!   node's journal (`adopt`), and the hand-off of stores another node
//!   should now serve (`handoff`), on SIGTERM of all of them.
//!
//! Where safety comes from. A store's records reach the tables before it
//! changes hands: a hand-off waits for the tables before it releases the
//! store; a dead node's journal is replayed by another node, which takes
//! its node id's lease first (fencing any late write of the old process:
//! its journal appends and checkpoints are conditional on that lease),
//! and a store of a dead node is taken only once that journal is all in
//! the tables. The members table only steers; a stale view costs a
//! redirect or a wait, never a record.

mod status;
mod task;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tillstream_engine_core::cluster::{JournalState, MemberLiveness, Take, may_take, rendezvous};
use tillstream_scylla::{ClusterTables, Connection, MemberRow, NodeJournal, ScyllaConfig};

use crate::clock::now_us;
use crate::metrics as m;

pub use status::{ClusterStatus, MemberStatus, cluster_status};
pub(crate) use task::{leave, run};

/// A member row not renewed for this long is a node gone.
pub(crate) const MEMBER_LEASE: Duration = Duration::from_secs(6);
/// How often a node renews its row and looks at the others.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// What a `Hello` gets (see [`Cluster::admit`]).
#[derive(Debug)]
pub(crate) enum Admit {
    /// This node serves the store: go on. Dropping the guard ends the
    /// session's count.
    Serve(SessionGuard),
    /// Another node serves it (or should): its address and the store's
    /// epoch as known here. An empty address: none is live yet.
    Redirect { owner: String, epoch: u64 },
    /// Not yet (the store is changing hands): retry after a back-off.
    Wait(String),
}

/// A store this node holds.
#[derive(Debug, Default)]
struct Owned {
    epoch: u64,
    /// Being handed over: new sessions go to the next owner.
    leaving: bool,
    /// Sessions being served, by connection id.
    sessions: HashMap<usize, quinn::Connection>,
    /// Devices served since the take: their slots leave with the store.
    devices: HashSet<u64>,
}

/// What the liveness rules (`MemberLiveness`) read of a member: its row
/// and its node lease.
fn liveness(m: &MemberRow, journal: Option<&NodeJournal>) -> MemberLiveness {
    MemberLiveness {
        renewed_at_us: m.renewed_at_us,
        leaving: m.leaving,
        generation: m.generation,
        lease_generation: journal.map_or(0, |j| j.generation),
        lease_renewed_at_us: journal.map_or(0, |j| j.renewed_at_us),
    }
}

/// The members as last read.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    pub(crate) members: Vec<MemberRow>,
    pub(crate) journals: HashMap<String, NodeJournal>,
    /// The live members' ids, sorted.
    pub(crate) live: Vec<String>,
    /// When it was read (µs): rows are judged as of then. Judged against
    /// the clock instead, a view that a failed refresh left stale made
    /// every member look gone: in a test, a node slow to reach a loaded
    /// cluster took a healthy node's journal, and fenced it, from rows
    /// it had read 7 s before.
    pub(crate) read_at_us: i64,
}

impl View {
    fn liveness(&self, m: &MemberRow) -> MemberLiveness {
        liveness(m, self.journals.get(&m.node))
    }

    fn build(members: Vec<MemberRow>, journals: HashMap<String, NodeJournal>, now: i64) -> View {
        let lease = MEMBER_LEASE.as_micros() as i64;
        let mut view = View {
            members,
            journals,
            live: Vec::new(),
            read_at_us: now,
        };
        let mut live: Vec<String> = view
            .members
            .iter()
            .filter(|m| view.liveness(m).live(now, lease))
            .map(|m| m.node.clone())
            .collect();
        live.sort();
        view.live = live;
        view
    }

    /// Whether `node` was gone when the view was read (no row counts as
    /// gone: it left cleanly).
    fn gone(&self, node: &str) -> bool {
        self.members
            .iter()
            .find(|m| m.node == node)
            .is_none_or(|m| {
                self.liveness(m)
                    .gone(self.read_at_us, MEMBER_LEASE.as_micros() as i64)
            })
    }

    fn addr_of(&self, node: &str) -> String {
        self.members
            .iter()
            .find(|m| m.node == node)
            .map(|m| m.quic_addr.clone())
            .unwrap_or_default()
    }

    /// The live member that should serve `store`, if any.
    pub(crate) fn owner_of(&self, store: u32) -> Option<&str> {
        let live: Vec<&str> = self.live.iter().map(String::as_str).collect();
        rendezvous(store, &live).map(|i| live[i])
    }
}

/// This node's part in the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) tables: ClusterTables,
    /// To open a dead node's journal (`adopt`).
    pub(crate) scylla: ScyllaConfig,
    /// A session for that, made once in the background at start: opening
    /// a journal over it skips seconds of connecting at a failover.
    pub(crate) adoption: std::sync::OnceLock<Connection>,
    pub(crate) me: String,
    /// The generation of this process's node lease.
    pub(crate) generation: u64,
    pub(crate) quic_addr: String,
    pub(crate) http_addr: String,
    pub(crate) started_at_us: i64,
    state: Mutex<State>,
    /// One take at a time: the devices of a store arrive together.
    takes: tokio::sync::Mutex<()>,
    /// One hand-off at a time: SIGTERM's may start while the tick's runs,
    /// and the second then hands over what the first left.
    handoffs: tokio::sync::Mutex<()>,
    /// Woken when a store is taken here and when the view is read again:
    /// a `Hello` told to wait waits for this ([`Cluster::admit_patiently`]).
    changed: tokio::sync::Notify,
}

/// How long a `Hello` told to wait is held before the refusal: inside
/// the client's wait for an answer (10 s by default), and long enough
/// for a store taken over at a failover to be served at once, not after
/// the device's next backoff (2.5 to 5 s at its longest).
const HELLO_PATIENCE: Duration = Duration::from_secs(4);

#[derive(Debug, Default)]
struct State {
    view: View,
    owned: HashMap<u32, Owned>,
    /// SIGTERM: every store is being handed over.
    leaving: bool,
    /// Why this node serves nobody now (its row could not be renewed for
    /// a lease, or another process took its node id), if it does not.
    isolated: Option<String>,
    /// When this node's row was last renewed (µs).
    renewed_at_us: i64,
}

/// Counts a session of an owned store while it lives.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    cluster: Arc<Cluster>,
    store: u32,
    conn: usize,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut st = self.cluster.state.lock();
        if let Some(o) = st.owned.get_mut(&self.store) {
            o.sessions.remove(&self.conn);
        }
    }
}

impl Cluster {
    /// Connects to the cluster tables and reads the generation this
    /// process holds of its node id (taken when the store opened).
    pub(crate) async fn join(
        scylla: ScyllaConfig,
        quic_addr: String,
        http_addr: String,
    ) -> Result<Arc<Cluster>, tillstream_storage::StoreError> {
        let tables = ClusterTables::connect(&scylla).await?;
        let generation = tables
            .journal(&scylla.node_id)
            .await?
            .map_or(0, |j| j.generation);
        let cluster = Arc::new(Cluster {
            tables,
            me: scylla.node_id.clone(),
            scylla,
            adoption: std::sync::OnceLock::new(),
            generation,
            quic_addr,
            http_addr,
            started_at_us: now_us(),
            state: Mutex::new(State::default()),
            takes: tokio::sync::Mutex::new(()),
            handoffs: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        });
        // Registered and looked around before the first device is served.
        task::refresh(&cluster).await?;
        Ok(cluster)
    }

    /// The cluster as the tables say now (`/v1/cluster`).
    pub(crate) async fn status(&self) -> Result<ClusterStatus, tillstream_storage::StoreError> {
        status::read_with(&self.tables).await
    }

    /// The view as last read.
    pub(crate) fn view(&self) -> View {
        self.state.lock().view.clone()
    }

    /// Stores held, and the sessions and devices served.
    pub(crate) fn counts(&self) -> (u32, u32) {
        let st = self.state.lock();
        let sessions: usize = st.owned.values().map(|o| o.sessions.len()).sum();
        (st.owned.len() as u32, sessions as u32)
    }

    /// [`admit`](Self::admit), asked again each time a store is taken
    /// here or the view is read again while the answer is to wait, for up
    /// to [`HELLO_PATIENCE`]; not while this node serves nobody.
    pub(crate) async fn admit_patiently(
        self: &Arc<Self>,
        store: u32,
        device: u64,
        conn: &quinn::Connection,
    ) -> Admit {
        let until = tokio::time::Instant::now() + HELLO_PATIENCE;
        loop {
            // Registered before the look, so a change during it wakes this.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let answer = self.admit(store, device, conn).await;
            let isolated = self.state.lock().isolated.is_some();
            match answer {
                Admit::Wait(_) if !isolated && tokio::time::Instant::now() < until => {
                    let _ = tokio::time::timeout_at(until, changed).await;
                }
                answer => return answer,
            }
        }
    }

    /// Wakes the `Hello`s waiting in [`admit_patiently`](Self::admit_patiently).
    pub(crate) fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// What the `Hello` of `device` of `store` on `conn` gets (module docs).
    pub(crate) async fn admit(
        self: &Arc<Self>,
        store: u32,
        device: u64,
        conn: &quinn::Connection,
    ) -> Admit {
        if let Some(a) = self.admit_held(store, device, conn) {
            return a;
        }
        let _one = self.takes.lock().await;
        // Another session may have taken it while this one waited.
        if let Some(a) = self.admit_held(store, device, conn) {
            return a;
        }
        match self.try_take(store).await {
            Ok(Some(epoch)) => {
                self.hold(store, epoch, "at a device's Hello");
                self.admit_held(store, device, conn)
                    .unwrap_or_else(|| Admit::Wait("the store changed hands again".into()))
            }
            // A live node holds the row: it is handing the store over to
            // this one (or, its view stale, will at its next look). A
            // redirect back to it bounced the device between the two for
            // the whole hand-off (2,424 redirects in one test run).
            Ok(None) => Admit::Wait(format!(
                "store {store} is being handed over to this node; retry"
            )),
            Err(why) => Admit::Wait(why),
        }
    }

    /// The answer when no take is needed: the store is held here, or
    /// another node should serve it. `None`: this node should take it.
    fn admit_held(
        self: &Arc<Self>,
        store: u32,
        device: u64,
        conn: &quinn::Connection,
    ) -> Option<Admit> {
        let mut st = self.state.lock();
        if let Some(why) = &st.isolated {
            return Some(Admit::Wait(why.clone()));
        }
        let leaving = st.leaving;
        let target = st
            .view
            .owner_of(store)
            .map(|n| (n.to_string(), st.view.addr_of(n)));
        if let Some(o) = st.owned.get_mut(&store)
            && !o.leaving
            && !leaving
        {
            o.sessions.insert(conn.stable_id(), conn.clone());
            o.devices.insert(device);
            return Some(Admit::Serve(SessionGuard {
                cluster: self.clone(),
                store,
                conn: conn.stable_id(),
            }));
        }
        let epoch = st.owned.get(&store).map_or(0, |o| o.epoch);
        match target {
            Some((node, _)) if node == self.me && !leaving && !st.owned.contains_key(&store) => {
                None
            }
            Some((node, addr)) if node != self.me => Some(Admit::Redirect { owner: addr, epoch }),
            // Leaving, or handing this store over, and no one else live.
            _ => Some(Admit::Redirect {
                owner: String::new(),
                epoch,
            }),
        }
    }

    /// Serves `store`, taken at `epoch`, from now on.
    fn hold(&self, store: u32, epoch: u64, when: &'static str) {
        m::cluster_store_taken();
        tracing::info!(store, epoch, when, "took the store");
        self.state.lock().owned.insert(
            store,
            Owned {
                epoch,
                ..Owned::default()
            },
        );
        self.changed();
    }

    /// Takes `store` if [`may_take`] allows: the new epoch, `Ok(None)` if
    /// another node holds it or won the race, `Err` with why to wait.
    async fn try_take(&self, store: u32) -> Result<Option<u64>, String> {
        let row = self
            .tables
            .owner(store)
            .await
            .map_err(|e| format!("reading the owner of store {store}: {e}"))?;
        let (gone, journal) = match &row {
            Some(r) if !r.owner.is_empty() && r.owner != self.me => {
                let gone = self.view().gone(&r.owner);
                let journal = if gone {
                    self.tables
                        .journal(&r.owner)
                        .await
                        .map_err(|e| format!("reading the journal state of {}: {e}", r.owner))?
                        .map(|j| JournalState {
                            holder: j.holder,
                            journal_high: j.journal_high,
                            checkpoint: j.checkpoint,
                        })
                } else {
                    None
                };
                if !gone {
                    return Ok(None);
                }
                (gone, journal)
            }
            _ => (false, None),
        };
        let owner_row = row
            .as_ref()
            .map(|r| tillstream_engine_core::cluster::OwnerRow {
                epoch: r.epoch,
                owner: r.owner.clone(),
            });
        match may_take(&self.me, owner_row.as_ref(), gone, journal.as_ref()) {
            Take::From(from) => {
                if let Some(r) = row
                    .as_ref()
                    .filter(|r| !r.owner.is_empty() && r.owner != self.me)
                {
                    tracing::info!(
                        store,
                        from = r.owner,
                        epoch = r.epoch,
                        journal = ?journal,
                        "taking the store from a node gone"
                    );
                }
                self.tables
                    .take(store, from, &self.me, now_us())
                    .await
                    .map_err(|e| format!("taking store {store}: {e}"))
            }
            Take::Wait(why) => Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member is gone by the rows as they were read, however long ago:
    /// a view a failed refresh left behind never turns a live member
    /// into a gone one as the clock moves on.
    #[test]
    fn a_member_is_judged_gone_as_of_when_the_view_was_read() {
        let lease = MEMBER_LEASE.as_micros() as i64;
        let read_at = 1_000 * lease;
        let member = |node: &str, renewed_at_us: i64| MemberRow {
            node: node.into(),
            generation: 1,
            renewed_at_us,
            ..MemberRow::default()
        };
        let journal = |renewed_at_us: i64| NodeJournal {
            generation: 1,
            holder: "a process".into(),
            renewed_at_us,
            ..NodeJournal::default()
        };
        let view = View::build(
            vec![
                member("fresh", read_at - lease / 2),
                member("late", read_at - 2 * lease),
            ],
            HashMap::from([
                ("fresh".to_string(), journal(read_at - lease / 2)),
                ("late".to_string(), journal(read_at - 2 * lease)),
            ]),
            read_at,
        );
        assert_eq!(view.live, vec!["fresh".to_string()]);
        assert!(!view.gone("fresh"), "renewed half a lease before the read");
        assert!(view.gone("late"), "silent for two leases at the read");
        assert!(view.gone("never-seen"), "no row: it left cleanly");
    }
}
