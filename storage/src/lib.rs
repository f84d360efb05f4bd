//! tillstream's store contract: the logical tables, the `Store` trait the
//! engine writes through, the query API analysts read through, and what
//! is computed over any backend.
//!
//! It is:
//! - the row types of every table ([`rows`]) and the time buckets that
//!   partition them ([`time`], [`buckets`]);
//! - the [`Store`] trait: one atomic, durable commit of a [`RowSet`] per
//!   group-commit tick, plus what the engine reads back on activation;
//! - the [`Query`] API (sales over time, top SKUs, stock history, low stock,
//!   watermarks), [`analytics`] folded over its scans, and [`verify`], the
//!   integrity check of the invariants (docs/internals/design.md);
//! - the catalogue of codes and names ([`catalog`]) and the CQL schema
//!   ([`schema`], from `schema/` beside this crate);
//! - with the `testkit` feature, sample rows and the contract tests every
//!   backend runs (`testkit::conformance`).
//!
//! It is not:
//! - a backend: `tillstream-embedded` (fjall) and `tillstream-scylla`
//!   implement these traits, each a crate of its own that builds and tests
//!   alone (ARCHITECTURE.md, "Code map");
//! - the engine: it decides nothing about events, it stores rows;
//! - a cache: every method goes to the backend.

pub mod analytics;
pub mod buckets;
pub mod catalog;
pub mod hint;
pub mod json;
pub mod query;
pub mod rows;
pub mod schema;
pub mod store;
pub mod time;
pub mod verify;

/// Sample rows, an in-memory `Query`, and the contract every backend's
/// tests run (`testkit::conformance`).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use query::*;
pub use rows::*;
pub use store::*;
