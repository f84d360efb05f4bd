//! tillstream's storage: the logical tables, the `Store` trait the engine
//! writes through, the query API analysts read through, and the backends.
//!
//! It is:
//! - the row types of every table ([`rows`]) and the time buckets that
//!   partition them ([`time`]);
//! - the [`Store`] trait: one atomic, durable commit of a [`RowSet`] per
//!   group-commit tick, plus what the engine reads back on activation;
//! - the [`Query`] API (sales over time, top SKUs, stock history, low stock,
//!   watermarks) and [`verify`], the integrity check of the invariants in ARCHITECTURE.md;
//! - the embedded backend on fjall (feature `embedded`, on by default),
//!   and the ScyllaDB backend on the `scylla` driver (feature `scylla`).
//!
//! It is not:
//! - the engine: it decides nothing about events, it stores rows;
//! - a cache: every method goes to the backend.
//!
//! The CQL schema of the same tables lives in `schema/` beside this crate
//! and is embedded in [`schema`].

pub mod analytics;
pub mod buckets;
pub mod catalog;
mod direct_io;
pub mod hint;
pub mod journal;
pub mod json;
pub mod query;
pub mod rows;
pub mod schema;
pub mod store;
pub mod time;
pub mod verify;

#[cfg(feature = "embedded")]
pub mod embedded;

#[cfg(feature = "scylla")]
pub mod scylla;

#[cfg(test)]
mod testutil;

#[cfg(all(test, feature = "embedded"))]
mod conformance;

pub use query::*;
pub use rows::*;
pub use store::*;
