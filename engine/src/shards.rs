//! Shard actors: each owns one `ShardCore` and applies the parts of
//! batches routed to it, one mailbox message per batch part.
//!
//! The actor is a thin shell: it activates what the core asks for (reading
//! the store on a blocking thread), calls `apply`, and hands the rows back
//! to the session that sent the part. Rows never wait in the shard: the
//! session assembles a batch's rows from all its shards into one commit
//! unit, so a batch's rows and its watermark are always committed together.
//!
//! Passivation: now and then the server asks every shard to drop what sat
//! idle ([`ShardMsg::Passivate`]); the core keeps whatever still has rows
//! on their way to the tables, so what is loaded again is what it was.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tillstream_engine_core::route::WorkItem;
use tillstream_engine_core::shard::{IdleBefore, Need, ShardConfig, ShardCore, ShardStats};
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::{RowSet, Store, StoreError, StoreSnapshot, TerminalRollupRow};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::clock::now_us;
use crate::metrics as m;
use crate::rowpool::RowSetPool;

/// One batch's part for one shard.
#[derive(Debug)]
pub(crate) struct ApplyWork {
    /// The batch's place in the engine's order (see `sequencer`).
    pub(crate) lsn: u64,
    pub(crate) batch: Arc<ValidatedBatch>,
    pub(crate) device: u64,
    pub(crate) items: Vec<WorkItem>,
    pub(crate) reply: oneshot::Sender<PartResult>,
}

/// A shard's answer for one part: its rows. Parts reach a shard in LSN
/// order (see `sequencer`), which is the order it applies them in.
pub(crate) type PartResult = Result<RowSet, Arc<StoreError>>;

/// Messages of a shard actor.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// Apply a batch part.
    Apply(ApplyWork),
    /// Drop what is idle since these times and whose rows are all in the
    /// tables (`ShardCore::passivate_idle`).
    Passivate(IdleBefore),
    /// Report the core's counters and gauges.
    Stats(oneshot::Sender<ShardStats>),
    /// Drop a store handed to another node, as far as its rows are in the
    /// tables (`ShardCore::forget_store`); answers whether all of it left.
    ForgetStore(u32, oneshot::Sender<bool>),
}

/// A shard: the actor's handle and its in-flight byte budget.
#[derive(Debug, Clone)]
pub(crate) struct ShardHandle {
    pub(crate) actor: ActorRef<ShardMsg>,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) budget_units: u32,
}

/// Unit of the in-flight byte budget.
pub(crate) const BUDGET_UNIT: usize = 1024;

impl ShardHandle {
    /// Permits for a payload of `bytes`, capped so one huge batch can still pass.
    pub(crate) fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_units)
    }
}

struct ShardActor;

struct ShardState {
    core: ShardCore,
    store: Arc<dyn Store>,
    /// The LSN the tables hold (the flusher publishes it).
    materialized: watch::Receiver<u64>,
    needs: Vec<Need>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    /// Where each part's row set comes from (the flusher hands them back).
    rows: Arc<RowSetPool>,
    gauges: m::ShardGauges,
    gauges_at: std::time::Instant,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ShardArgs {
            core,
            store,
            materialized,
            budget,
            budget_units,
            rows,
        }: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let gauges = m::ShardGauges::new(core.config().id, budget_units as usize * BUDGET_UNIT);
        Ok(ShardState {
            core,
            store,
            materialized,
            needs: Vec::new(),
            budget,
            budget_units,
            rows,
            gauges,
            gauges_at: std::time::Instant::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Apply(work) => {
                let result = apply(state, &work).await;
                let used = state.budget_units as usize
                    - state
                        .budget
                        .available_permits()
                        .min(state.budget_units as usize);
                state.gauges.inflight(used * BUDGET_UNIT);
                // `stats()` walks every SKU: refresh the entity gauges at
                // most once a second, not per batch.
                if state.gauges_at.elapsed() >= std::time::Duration::from_secs(1) {
                    state.gauges.entities(&state.core.stats());
                    state.gauges_at = std::time::Instant::now();
                }
                // The session may be gone; its rows are then not needed.
                let _ = work.reply.send(result);
            }
            ShardMsg::Stats(reply) => {
                let _ = reply.send(state.core.stats());
            }
            ShardMsg::ForgetStore(store, reply) => {
                let materialized = *state.materialized.borrow();
                let _ = reply.send(state.core.forget_store(store, materialized));
                state.gauges.entities(&state.core.stats());
            }
            ShardMsg::Passivate(idle) => {
                let materialized = *state.materialized.borrow();
                let gone = state.core.passivate_idle(idle, materialized);
                if gone != Default::default() {
                    tracing::debug!(
                        shard = state.core.config().id,
                        ?gone,
                        "passivated idle entities"
                    );
                    m::passivated(&gone);
                    state.gauges.entities(&state.core.stats());
                    state.gauges_at = std::time::Instant::now();
                }
            }
        }
        Ok(())
    }
}

/// What a shard actor starts with.
struct ShardArgs {
    core: ShardCore,
    store: Arc<dyn Store>,
    materialized: watch::Receiver<u64>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    rows: Arc<RowSetPool>,
}

async fn apply(state: &mut ShardState, work: &ApplyWork) -> PartResult {
    let batch = work.batch.get();
    state.needs.clear();
    state.core.needs(batch, &work.items, &mut state.needs);
    for i in 0..state.needs.len() {
        activate(state, state.needs[i]).await.map_err(Arc::new)?;
    }
    let mut rows = state.rows.take();
    state.core.apply(
        work.lsn,
        work.device,
        batch,
        &work.items,
        now_us(),
        &mut rows,
    );
    Ok(rows)
}

/// Loads what the core needs from the store, off the async workers.
async fn activate(state: &mut ShardState, need: Need) -> Result<(), StoreError> {
    let cfg = state.core.config().clone();
    let loaded = blocking(state.store.clone(), move |s| load(s, &cfg, need)).await?;
    loaded.install(&mut state.core);
    Ok(())
}

/// What activation read from the store for one [`Need`].
#[derive(Debug)]
pub(crate) enum Loaded {
    Store(u32, StoreSnapshot),
    RollupDay(u32, u32, Vec<TerminalRollupRow>),
}

impl Loaded {
    /// Hands what was read to the core, which keeps its own part of it.
    pub(crate) fn install(&self, core: &mut ShardCore) {
        match self {
            Loaded::Store(id, snapshot) => core.activate_store(*id, snapshot),
            Loaded::RollupDay(id, day, rows) => core.activate_rollup_day(*id, *day, rows),
        }
    }
}

/// Reads what a shard with settings `cfg` needs for `need` (blocking):
/// a store's levels, then its movements since the earliest late window of
/// the shard's SKUs; or a day's rollups.
pub(crate) fn load(store: &dyn Store, cfg: &ShardConfig, need: Need) -> Result<Loaded, StoreError> {
    match need {
        Need::Store(id) => {
            let levels = store.load_levels(id)?;
            let windows = cfg.movement_windows(&levels);
            let recent_movements = if windows.is_empty() {
                Vec::new()
            } else {
                store.load_movements(id, &windows)?
            };
            tracing::debug!(
                store = id,
                levels = levels.len(),
                movements = recent_movements.len(),
                "store activated"
            );
            Ok(Loaded::Store(
                id,
                StoreSnapshot {
                    levels,
                    recent_movements,
                },
            ))
        }
        Need::RollupDay { store: id, day } => {
            Ok(Loaded::RollupDay(id, day, store.load_rollups(id, day)?))
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| StoreError::Backend {
            op: "activation read",
            source: Box::new(e),
        })?
}

/// Starts one shard actor per core, shard `i` owning `cores[i]` (as
/// recovery left it, or empty). `materialized` is the LSN the tables hold,
/// which bounds what passivation may drop.
pub(crate) async fn spawn_shards(
    cores: Vec<ShardCore>,
    store: Arc<dyn Store>,
    materialized: &watch::Receiver<u64>,
    inflight_bytes: usize,
    rows: &Arc<RowSetPool>,
) -> Result<Vec<ShardHandle>, crate::EngineError> {
    let units = u32::try_from(inflight_bytes.div_ceil(BUDGET_UNIT))
        .unwrap_or(u32::MAX)
        .max(1);
    let mut out = Vec::with_capacity(cores.len());
    for core in cores {
        let id = core.config().id;
        let budget = Arc::new(Semaphore::new(units as usize));
        let args = ShardArgs {
            core,
            store: store.clone(),
            materialized: materialized.clone(),
            budget: budget.clone(),
            budget_units: units,
            rows: rows.clone(),
        };
        let (actor, _join) = Actor::spawn(None, ShardActor, args)
            .await
            .map_err(|e| crate::EngineError::Actor(format!("shard {id}: {e}")))?;
        out.push(ShardHandle {
            actor,
            budget,
            budget_units: units,
        });
    }
    Ok(out)
}
