//! tillstream's decisions, free of I/O.
//!
//! The engine feeds this crate validated batches and the current time, and
//! gets back what to do: which shard applies which event, which rows to
//! persist, which batch is fresh and which a resend, and which entities
//! may leave memory. Like quinn-proto, it is a deterministic state machine that a
//! test can drive through thousands of devices with a virtual clock.
//!
//! It is:
//! - [`validate`]: the semantic checks of one event (`RejectCode`s);
//! - [`route`]: the fixed hashes that place devices and SKUs on shards,
//!   and [`route::plan_batch`], which splits a batch into per-shard work
//!   items that point into the shared buffer;
//! - [`ledger`]: dedupe and watermarks of one device;
//! - [`shard`]: [`shard::ShardCore`], the terminal and SKU entities of one
//!   shard: `apply` turns work items into rows;
//! - [`testkit`]: builders of events and validated batches for tests and
//!   benchmarks.
//!
//! It is not:
//! - I/O: no sockets, no store reads, no clock (`now_us` is an argument),
//!   no randomness, no async runtime. The engine's shard actors do the
//!   store reads that activation asks for ([`shard::Need`]) and commit the
//!   rows;
//! - a validator of bytes: batches arrive as `&ArchivedBatch` that the
//!   protocol crate already checked with bytecheck.
//!
//! # Invariants
//!
//! - Nothing here panics on a validated batch, whatever its contents.
//! - The hot path (`plan_batch`, `apply`) does not allocate per event once
//!   its buffers have grown; it allocates when a new SKU, terminal minute
//!   or store appears, while late windows grow, and on the rare
//!   rejected-event path (`tests/alloc.rs` counts).
//! - Memory is bounded by the entities: a SKU keeps at most its late
//!   window of movements (capped at 1,024; a hotter SKU's window is
//!   shorter), a terminal one row per active minute of the days loaded
//!   (see `ShardCore::passivate_idle`): an engine that passivates what
//!   sat idle keeps only what devices use.
//! - Every row's key derives from (device, batch seq, index in batch), and
//!   every decision is a function of the entity's state and the event, so
//!   applying the same batches to the same state gives the same rows.
//! - Derived state (stock levels, terminal rollups) is only ever loaded
//!   from the store, never kept beyond it: dropping every `ShardCore` and
//!   activating again from a consistent store gives the same future rows.
//!
//! # What the engine must guarantee
//!
//! Each shard's parts are applied in one global order (the engine's LSN,
//! ARCHITECTURE.md "write path"), and the store must only ever hold a
//! *prefix* of that order: a shard's rows build on every earlier part it
//! applied (a stock level counts the movements before it), so a store
//! that held a later part without an earlier one would, after a crash,
//! count a movement twice once the earlier batch is replayed or resent.
//! The LSN given to [`shard::ShardCore::apply`] is what lets the core say
//! when an entity's rows are all in the tables, so that passivating it and
//! loading it again gives the same state.

pub mod cluster;
mod digest_set;
pub mod ledger;
pub mod route;
pub mod shard;
pub mod testkit;
pub mod validate;

pub use ledger::{Admission, DeviceLedger, DigestCheck, DistinctKeys, DistinctSkus, RecentDigests};
pub use route::{
    BatchPlan, Role, WorkItem, plan_batch, shard_of_device, shard_of_sku, shard_of_terminal,
};
pub use shard::{Need, Passivated, ShardConfig, ShardCore, ShardStats};
pub use validate::{Rules, check_event};
