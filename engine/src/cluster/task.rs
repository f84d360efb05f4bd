//! The cluster's background work (module docs of `cluster`): every
//! [`TICK`], renew this node's row and read the others'; replay the
//! journal of a node gone with records not yet in the tables, when this
//! node is its adopter; hand over the stores another live node should
//! serve. And on SIGTERM, [`leave`]: hand over every store, then go.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tillstream_engine_core::cluster::{OwnerRow, Reconcile, adopter, reconcile};
use tillstream_protocol::ErrorCode;
use tillstream_scylla::{Connection, MemberRow, ScyllaConfig, ScyllaStore};
use tillstream_storage::StoreError;
use tokio::sync::watch;

use super::{Cluster, MEMBER_LEASE, TICK, View};
use crate::clock::now_us;
use crate::ctx::EngineCtx;
use crate::metrics as m;
use crate::shards::ShardMsg;

/// Longest a hand-off waits for the store's sessions to end (each ends
/// once its batches in flight are durable), then for the tables to hold
/// their batches, then for the shards to let the store's state go.
/// Generous: a hand-off that gives up serves the store here again, and
/// its devices come back only to be moved at the next try. On a loaded
/// cluster a journal append can take seconds.
const HANDOFF_SESSIONS: Duration = Duration::from_secs(30);
const HANDOFF_TABLES: Duration = Duration::from_secs(30);
const HANDOFF_FORGET: Duration = Duration::from_secs(10);
/// Every how many ticks a node reads every store's row ([`reconcile_owners`])
/// while no member is gone.
const RECONCILE_TICKS: u64 = 3;

/// Renews this node's row, reads the members and the journals, and
/// decides whether this node may serve: not if another process took its
/// node id (fenced), not if its row could not be renewed for a lease.
pub(crate) async fn refresh(c: &Arc<Cluster>) -> Result<(), StoreError> {
    let now = now_us();
    let (stores, sessions, leaving) = {
        let (stores, sessions) = c.counts();
        (stores, sessions, c.state.lock().leaving)
    };
    let row = MemberRow {
        node: c.me.clone(),
        generation: c.generation,
        quic_addr: c.quic_addr.clone(),
        http_addr: c.http_addr.clone(),
        started_at_us: c.started_at_us,
        renewed_at_us: now,
        leaving,
        stores,
        devices: sessions,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    // Each bounded by half a lease, not by the driver's request timeout:
    // a node cut off from the cluster must learn it (and send its devices
    // away) within about a lease, while the others are taking its stores.
    let renewed = within_half_lease("renewing the member row", c.tables.renew(&row)).await;
    let read = within_half_lease("reading the members", async {
        let members = c.tables.members().await?;
        let nodes: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
        let journals = c.tables.journals(&nodes).await?;
        Ok::<_, StoreError>((members, journals))
    })
    .await;
    let mut st = c.state.lock();
    match (renewed, read) {
        (Ok(()), Ok((members, journals))) => {
            st.renewed_at_us = now;
            let fenced = journals
                .get(&c.me)
                .is_some_and(|j| j.generation > c.generation);
            st.view = View::build(members, journals, now);
            if fenced {
                st.isolated = Some(format!(
                    "another process took node id {} (its lease moved past generation {}): this one serves nobody; restart it",
                    c.me, c.generation
                ));
            } else if st
                .isolated
                .as_deref()
                .is_some_and(|w| w.starts_with("cannot reach"))
            {
                tracing::info!("the cluster is reachable again");
                st.isolated = None;
            }
            m::cluster_members(st.view.live.len(), st.owned.len());
            drop(st);
            c.changed();
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => {
            let silent = Duration::from_micros(now.saturating_sub(st.renewed_at_us).max(0) as u64);
            if silent >= MEMBER_LEASE && st.isolated.is_none() {
                st.isolated = Some(format!(
                    "cannot reach the cluster to renew this node's membership for {}s ({e}): its stores may be moving to other nodes",
                    silent.as_secs()
                ));
            }
            Err(e)
        }
    }
}

/// `op`, or a timeout error after half of [`MEMBER_LEASE`].
async fn within_half_lease<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(MEMBER_LEASE / 2, f)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Backend {
                op,
                source: format!("no answer within {:?}", MEMBER_LEASE / 2).into(),
            })
        })
}

/// Runs until shutdown (module docs).
pub(crate) async fn run(c: Arc<Cluster>, ctx: Arc<EngineCtx>, mut shutdown: watch::Receiver<bool>) {
    {
        let c = c.clone();
        tokio::spawn(async move {
            match Connection::connect(&c.scylla).await {
                Ok(conn) => {
                    let _ = c.adoption.set(conn);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not connect ahead for adopting a gone node's journal; an adoption will connect then"
                ),
            }
        });
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let busy: Arc<parking_lot::Mutex<HashSet<String>>> = Arc::default();
    for ticks in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let began = Instant::now();
        if let Err(e) = refresh(&c).await {
            tracing::warn!(error = %e, "renewing this node's membership failed");
        }
        if began.elapsed() > MEMBER_LEASE / 3 {
            tracing::warn!(
                ms = began.elapsed().as_millis() as u64,
                "renewing this node's membership was slow: others may take it for gone"
            );
        }
        // The guard is dropped before `close_all` takes the lock again.
        let isolated = c.state.lock().isolated.clone();
        if let Some(why) = isolated {
            close_all(&c, &why);
            continue;
        }
        let view = c.view();
        let live: Vec<&str> = view.live.iter().map(String::as_str).collect();
        // A node gone with records not in the tables: its adopter replays them.
        for member in &view.members {
            let node = &member.node;
            let drained = view
                .journals
                .get(node)
                .is_none_or(|j| j.holder.is_empty() && j.checkpoint >= j.journal_high);
            // A lease renewed lately has a live holder: the node itself
            // (late with its row, not gone), or another node replaying
            // its journal now.
            let held = view.journals.get(node).is_some_and(|j| {
                !j.holder.is_empty()
                    && view.read_at_us.saturating_sub(j.renewed_at_us)
                        < MEMBER_LEASE.as_micros() as i64
            });
            if *node == c.me || drained || held || !view.gone(node) {
                continue;
            }
            if adopter(node, &live).map(|i| live[i]) != Some(c.me.as_str()) {
                continue;
            }
            if busy.lock().insert(format!("adopt {node}")) {
                let lease = view.journals.get(node);
                let read_at = view.read_at_us;
                tracing::warn!(
                    node,
                    row_age_ms = (read_at - member.renewed_at_us) / 1000,
                    lease_age_ms = lease.map_or(-1, |j| (read_at - j.renewed_at_us) / 1000),
                    row_generation = member.generation,
                    lease_generation = lease.map_or(0, |j| j.generation),
                    "a member is gone with acknowledged records not in the tables: replaying its journal"
                );
                let (c, node, busy) = (c.clone(), node.clone(), busy.clone());
                tokio::spawn(async move {
                    adopt(&c, &node).await;
                    busy.lock().remove(&format!("adopt {node}"));
                    // Its stores this node should serve: taken now, not
                    // at the next tick or the next Hello.
                    if let Err(e) = reconcile_owners(&c).await {
                        tracing::warn!(error = %e, "reading the stores' owners failed; will retry");
                    }
                });
            }
        }
        // Stores another live node should serve now.
        let moving: Vec<u32> = {
            let st = c.state.lock();
            st.owned
                .iter()
                .filter(|(store, o)| {
                    !o.leaving && view.owner_of(**store).is_some_and(|n| n != c.me)
                })
                .map(|(s, _)| *s)
                .collect()
        };
        // Every tick for two minutes after a member went: its stores are
        // taken as soon as its journal is drained, not a few ticks later.
        let lately = view.read_at_us - Duration::from_secs(120).as_micros() as i64;
        let someone_gone = view
            .members
            .iter()
            .any(|m| m.renewed_at_us > lately && view.gone(&m.node));
        if (someone_gone || ticks % RECONCILE_TICKS == 0) && busy.lock().insert("reconcile".into())
        {
            let (c, busy) = (c.clone(), busy.clone());
            tokio::spawn(async move {
                if let Err(e) = reconcile_owners(&c).await {
                    tracing::warn!(error = %e, "reading the stores' owners failed; will retry");
                }
                busy.lock().remove("reconcile");
            });
        }
        if !moving.is_empty() && busy.lock().insert("handoff".into()) {
            let (c, ctx, busy) = (c.clone(), ctx.clone(), busy.clone());
            tokio::spawn(async move {
                if let Err(e) = handoff(&c, &ctx, &moving).await {
                    m::cluster_handoff_failed();
                    tracing::warn!(stores = moving.len(), error = %e, "handing stores over failed; will retry");
                }
                busy.lock().remove("handoff");
            });
        }
    }
}

/// Reads every store's row and, for each store this node does not serve,
/// does what [`reconcile`] says: takes the stores rendezvous gives it
/// (released ones, a gone node's once its journal is drained), so their
/// devices find them held, and gives back rows that name it for stores
/// another node should serve, which would otherwise bounce those devices
/// between the two nodes. Under the take lock, so no `Hello` takes a
/// store between the look and the act.
async fn reconcile_owners(c: &Arc<Cluster>) -> Result<(), StoreError> {
    let rows = c.tables.owners().await?;
    let _one = c.takes.lock().await;
    let view = c.view();
    // Taken together: one at a time, a dead node's nine stores took 5 s
    // of a failover (two reads and a lightweight transaction each).
    let mut takes = tokio::task::JoinSet::new();
    for r in rows {
        {
            let st = c.state.lock();
            if st.leaving || st.isolated.is_some() {
                return Ok(());
            }
            if st.owned.contains_key(&r.store) {
                continue;
            }
        }
        let gone = !r.owner.is_empty() && r.owner != c.me && view.gone(&r.owner);
        let row = OwnerRow {
            epoch: r.epoch,
            owner: r.owner.clone(),
        };
        match reconcile(&c.me, &row, view.owner_of(r.store), gone) {
            Reconcile::Take => {
                let (c, store) = (c.clone(), r.store);
                takes.spawn(async move { (store, c.try_take(store).await) });
            }
            Reconcile::Release => {
                // Not released: a hand-off of this node released it
                // since the read, or another node took it.
                if c.tables.release(r.store, r.epoch, &c.me).await? {
                    tracing::info!(
                        store = r.store,
                        epoch = r.epoch,
                        "gave back a store this node held by its row only"
                    );
                }
            }
            Reconcile::Keep => {}
        }
    }
    while let Some(taken) = takes.join_next().await {
        match taken {
            Ok((store, Ok(Some(epoch)))) => c.hold(store, epoch, "before its devices asked"),
            Ok((_, Ok(None))) => {}
            Ok((store, Err(why))) => tracing::debug!(store, why, "not taking the store yet"),
            Err(e) => tracing::warn!(error = %e, "a take failed"),
        }
    }
    Ok(())
}

/// Ends every session this node serves: it may not serve them now.
fn close_all(c: &Cluster, why: &str) {
    let st = c.state.lock();
    for o in st.owned.values() {
        for conn in o.sessions.values() {
            conn.close(
                quinn::VarInt::from_u32(u32::from(ErrorCode::StoreUnavailable.as_u16())),
                why.as_bytes(),
            );
        }
    }
}

/// Replays the journal of `node`, gone, into the tables, as its own
/// restart would: opens its node id (taking its lease, which fences the
/// old process should it still run), recovers, closes (giving the lease
/// back). Its stores may then be taken.
async fn adopt(c: &Cluster, node: &str) {
    let started = Instant::now();
    tracing::info!(node, "replaying the journal of a node gone");
    let cfg = ScyllaConfig {
        node_id: node.to_string(),
        adopting: true,
        read_only: false,
        ..c.scylla.clone()
    };
    let conn = c.adoption.get().cloned();
    let done = tokio::task::spawn_blocking(move || {
        let store = match &conn {
            Some(conn) => ScyllaStore::open_on(conn, cfg)?,
            None => ScyllaStore::connect(cfg)?,
        };
        let opened = started.elapsed();
        let replayed = crate::recovery::recover(&store)?;
        let recovered = started.elapsed();
        drop(store);
        tracing::info!(
            open_ms = opened.as_millis() as u64,
            replay_ms = (recovered - opened).as_millis() as u64,
            close_ms = (started.elapsed() - recovered).as_millis() as u64,
            "the gone node's journal: opened, replayed, closed"
        );
        Ok::<_, StoreError>(replayed)
    })
    .await;
    match done {
        Ok(Ok(r)) => {
            m::cluster_adopted(started.elapsed());
            tracing::info!(
                node,
                records = r.records,
                events = r.events,
                ms = started.elapsed().as_millis() as u64,
                "replayed the journal of a node gone; its stores may move"
            );
        }
        Ok(Err(e)) => tracing::warn!(node, error = %e, "replaying a gone node's journal failed"),
        Err(e) => tracing::warn!(node, error = %e, "replaying a gone node's journal panicked"),
    }
}

/// Hands `stores` over together: no new sessions for them, ends the
/// ones served, waits once for the tables to hold every batch, then per
/// store drops its state and releases its row. Together, because each
/// wait is for the whole node's tables: one at a time, a node leaving
/// with eight stores behind a slow cluster waited eight times. Returns
/// the stores handed over.
pub(crate) async fn handoff(
    c: &Cluster,
    ctx: &EngineCtx,
    stores: &[u32],
) -> Result<Vec<u32>, String> {
    let _one = c.handoffs.lock().await;
    let started = Instant::now();
    let mut moving: Vec<(u32, u64, Vec<u64>)> = Vec::new();
    let mut conns: Vec<quinn::Connection> = Vec::new();
    {
        let mut st = c.state.lock();
        for &store in stores {
            if let Some(o) = st.owned.get_mut(&store) {
                o.leaving = true;
                conns.extend(o.sessions.values().cloned());
                moving.push((store, o.epoch, o.devices.iter().copied().collect()));
            }
        }
    }
    let unmark = |why: String| {
        let mut st = c.state.lock();
        for (store, _, _) in &moving {
            if let Some(o) = st.owned.get_mut(store) {
                o.leaving = false;
            }
        }
        why
    };
    for conn in &conns {
        conn.close(
            quinn::VarInt::from_u32(u32::from(ErrorCode::NotOwner.as_u16())),
            b"store handed over to another node",
        );
    }
    let until = Instant::now() + HANDOFF_SESSIONS;
    let sessions_left = || {
        let st = c.state.lock();
        moving
            .iter()
            .any(|(s, _, _)| st.owned.get(s).is_some_and(|o| !o.sessions.is_empty()))
    };
    while sessions_left() {
        if Instant::now() > until {
            return Err(unmark("their sessions did not end".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !ctx.tables_caught_up(HANDOFF_TABLES).await {
        return Err(unmark(
            "the tables did not catch up with the journal".into(),
        ));
    }
    let mut done = Vec::with_capacity(moving.len());
    for (store, epoch, devices) in &moving {
        // The shards and the device slots let go of the store once the
        // tables hold all of it, which they now do (a late flush may
        // still be landing).
        let mut forgotten = false;
        let (mut shards_held, mut devices_held) = (false, Vec::new());
        let until = Instant::now() + HANDOFF_FORGET;
        while Instant::now() < until {
            let materialized = ctx
                .store
                .materialized_lsn()
                .map_err(|e| unmark(e.to_string()))?;
            let mut all = true;
            for shard in &ctx.shards {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if shard
                    .actor
                    .send_message(ShardMsg::ForgetStore(*store, tx))
                    .is_ok()
                {
                    all &= rx.await.unwrap_or(false);
                }
            }
            // The device slots go only once the shards let the store go.
            shards_held = !all;
            devices_held = if all {
                ctx.devices.forget(devices, materialized)
            } else {
                Vec::new()
            };
            if all && devices_held.is_empty() {
                forgotten = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !forgotten {
            tracing::warn!(
                store,
                shards_held,
                devices_held = ?&devices_held[..devices_held.len().min(8)],
                "the store's state did not leave memory; keeping it"
            );
            if let Some(o) = c.state.lock().owned.get_mut(store) {
                o.leaving = false;
            }
            continue;
        }
        let released = c
            .tables
            .release(*store, *epoch, &c.me)
            .await
            .map_err(|e| unmark(e.to_string()))?;
        c.state.lock().owned.remove(store);
        m::cluster_handoff(started.elapsed());
        tracing::info!(
            store,
            epoch,
            released,
            ms = started.elapsed().as_millis() as u64,
            "handed the store over"
        );
        done.push(*store);
    }
    Ok(done)
}

/// SIGTERM: says this node is leaving, hands every store over, and
/// removes its row, so devices move before the process goes.
pub(crate) async fn leave(c: &Arc<Cluster>, ctx: &EngineCtx) {
    let started = Instant::now();
    c.state.lock().leaving = true;
    let _ = refresh(c).await;
    let stores: Vec<u32> = c.state.lock().owned.keys().copied().collect();
    if let Err(e) = handoff(c, ctx, &stores).await {
        m::cluster_handoff_failed();
        tracing::warn!(error = %e, "handing the stores over on leaving failed: a node replays this one's journal once it is gone");
    }
    // What is still held (a hand-off the tick had started may have
    // handed some over first).
    let failed = c.state.lock().owned.len();
    // A row with stores still held stays, marked leaving: once this
    // process is gone it is a member gone, whose journal is replayed (if
    // the drain leaves any of it out of the tables) and whose stores are
    // taken. Without the row no node would look at them.
    if failed == 0
        && let Err(e) = c.tables.remove(&c.me).await
    {
        tracing::warn!(error = %e, "removing this node's member row failed");
    }
    tracing::info!(
        stores = stores.len(),
        failed,
        ms = started.elapsed().as_millis() as u64,
        "left the cluster"
    );
}
