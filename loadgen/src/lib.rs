//! tillstream-loadgen: simulated fleets and CSV replay against a tillstream
//! server, with latency reports and end-to-end verification.
//!
//! It is:
//! - a seeded generator of realistic retail telemetry ([`generator`]) and a
//!   replay of real CSV exports ([`replay`]), both cut into per-device
//!   batches and encoded before the clock starts ([`workload`]);
//! - a fleet runner ([`fleet`]): one device client per device over one
//!   shared QUIC endpoint, paced to a target rate, with per-batch ack
//!   latencies in an HdrHistogram;
//! - the report ([`report`]), with what the run cost the server and how
//!   long it took to acknowledge, by its own measure ([`meter`]), how late
//!   the loadgen's own runtime ran ([`lag`]), and the end-to-end check
//!   ([`verify`]);
//! - against a server elsewhere, a check that it answers, on its QUIC
//!   port and its HTTP API, before anything is prepared or sent
//!   ([`remote`]).
//!
//! It is not a test of correctness under faults (that is `tests/`), nor a
//! micro-benchmark (that is `benches/`).

pub mod cli;
pub mod credentials;
pub mod fleet;
pub mod generator;
pub mod lag;
pub mod meter;
pub mod remote;
pub mod replay;
pub mod report;
pub mod run;
pub mod sched;
pub mod sweep;
pub mod verify;
pub mod workload;
