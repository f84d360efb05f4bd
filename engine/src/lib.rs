//! The running tillstream server: the QUIC endpoint, the sessions, the
//! ractor shard actors that each own an engine-core `ShardCore`, the
//! group-commit flusher and the acks.
//!
//! It is a thin shell around `tillstream-engine-core`: every decision
//! (routing, dedupe, entity apply) is made there; this crate moves bytes,
//! owns tasks and talks to the disk.
//!
//! It is not: a client (see `tillstream-client`), nor the CLI (`tillstream`
//! in `ops/`).

mod accept;
mod audit;
mod auth;
mod backend;
mod backup;
mod clock;
mod cluster;
mod config;
mod ctx;
mod devices;
mod error;
pub mod faults;
mod flusher;
mod http;
mod live_limits;
mod memory_limit;
mod metrics;
/// The names of the metrics on `/metrics`.
pub use metrics::exported_names as exported_metric_names;
pub use metrics::{cpu_seconds_of, metrics_text, process_cpu_seconds, scrape};
mod passivate;
pub mod questions;
mod recovery;
mod rowpool;
pub mod runtime_lag;
mod sequencer;
mod server;
mod session;
mod shards;
mod silence;
mod tls;
mod udp;
mod wire;

pub use audit::AuditTarget;
pub use auth::{AuthConfig, CertAuth, TokenKeys};
pub use backend::open_backend;
pub use backup::{
    AbsentCredential, BackupError, BackupReport, CredentialFile, CredentialSources,
    CredentialsBackup, CredentialsRestore, RestorePlan, RestoredCredential, plan_restore,
    write_backup,
};
pub use cluster::{ClusterStatus, MemberStatus, cluster_status};
pub use config::{
    ClusterConfig, DEFAULT_FLUSH_INTERVAL_MS, ServerConfig, ServerSettings, StoreChoice,
};
pub use error::EngineError;
pub use live_limits::{LimitChange, ReloadableLimits};
pub use memory_limit::resident_bytes;
pub use recovery::{Replayed, recover};
pub use server::Server;
