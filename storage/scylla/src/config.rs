//! How to reach a cluster, and `schema apply`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, RequestAttemptError};
use scylla::policies::load_balancing::{
    DefaultPolicy, NodeIdentifier, SingleTargetLoadBalancingPolicy,
};
use scylla::policies::retry::{
    DefaultRetrySession, RequestInfo, RetryDecision, RetryPolicy, RetrySession,
};
use scylla::statement::Consistency;
use scylla::statement::unprepared::Statement;

use tillstream_storage::schema::{SchemaOptions, render, statements};
use tillstream_storage::store::StoreError;

/// Everything the backend needs to reach and use a cluster. The defaults
/// suit one local node (`127.0.0.1:9042`, keyspace `tillstream`).
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding the tables (`tillstream schema apply` makes it).
    pub keyspace: String,
    /// This tillstream node's name: its journal and checkpoint rows. A
    /// replacement node takes over by starting with the same name. Two
    /// live nodes must never share one.
    pub node_id: String,
    /// Data centre to send requests to first (token- and shard-aware
    /// within it); `None` lets the driver use every one.
    pub datacenter: Option<String>,
    /// Consistency of every read and write (LOCAL_QUORUM by default): an
    /// ack waits for this many replicas.
    pub consistency: Consistency,
    /// Requests in flight at most, per call into the store.
    pub max_in_flight: usize,
    /// Client-side request timeout: at or above the server's own timeouts
    /// (ScyllaDB: 2 s writes, 5 s reads, 10 s range scans), so the client
    /// never gives up on a request the server still works on.
    pub request_timeout: Duration,
    /// Username and password (PasswordAuthenticator).
    pub credentials: Option<(String, String)>,
    /// PEM file of the CA that signed the nodes' certificates; TLS is on
    /// when set.
    pub tls_ca: Option<PathBuf>,
    /// A reader beside a live node (`tillstream verify`, `query`,
    /// `export`): it writes nothing, and leaves the journal as it finds
    /// it (a live node's appends land out of order for a moment, which a
    /// writer at start would take for a torn tail).
    pub read_only: bool,
    /// Opening another node's id to replay its journal, because the
    /// members table found that node gone (engine `cluster`): its lease
    /// is taken at once, without watching it for one lease period. Safe
    /// either way (the take is a lightweight transaction that fences the
    /// old holder); the watch only spares a live node a fencing.
    pub adopting: bool,
}

impl ScyllaConfig {
    /// The defaults, with these contact points.
    pub fn new(nodes: Vec<String>) -> ScyllaConfig {
        ScyllaConfig {
            nodes,
            keyspace: tillstream_storage::schema::DEFAULT_KEYSPACE.into(),
            node_id: "tillstream-1".into(),
            datacenter: None,
            consistency: Consistency::LocalQuorum,
            max_in_flight: 256,
            request_timeout: Duration::from_secs(12),
            credentials: None,
            tls_ca: None,
            read_only: false,
            adopting: false,
        }
    }

    fn open_err(&self, reason: String) -> StoreError {
        StoreError::Open {
            path: self.nodes.join(","),
            reason,
        }
    }

    /// One session for the whole process: the default token- and
    /// shard-aware policy (preferring `datacenter`), the consistency and
    /// timeout above, and [`IdempotentRetry`].
    pub(crate) async fn session(&self) -> Result<Session, StoreError> {
        self.session_with(|b| b).await
    }

    /// [`session`](Self::session), with `adjust` applied to the builder.
    async fn session_with(
        &self,
        adjust: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Result<Session, StoreError> {
        if self.nodes.is_empty() {
            return Err(self.open_err("no ScyllaDB nodes given (--scylla-nodes)".into()));
        }
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &self.datacenter {
            policy = policy
                .prefer_datacenter(dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(self.consistency)
            .request_timeout(Some(self.request_timeout))
            .load_balancing_policy(policy.build())
            .retry_policy(Arc::new(IdempotentRetry))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(Duration::from_secs(5));
        if let Some((user, password)) = &self.credentials {
            builder = builder.user(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            builder = builder.tls_context(Some(self.tls_config(ca)?));
        }
        adjust(builder)
            .build()
            .await
            .map_err(|e| self.open_err(format!("connecting: {e}")))
    }

    /// Refuses a consistency at which a read can miss an acknowledged
    /// write, given the keyspace's replication (`quorum.rs`).
    pub(crate) async fn check_consistency(&self, session: &Session) -> Result<(), StoreError> {
        use std::collections::{BTreeMap, BTreeSet};
        if let Some(dc) = &self.datacenter {
            let state = session.get_cluster_state();
            let known: BTreeSet<&str> = state
                .get_nodes_info()
                .iter()
                .filter_map(|n| n.datacenter.as_deref())
                .collect();
            if !known.contains(dc.as_str()) {
                let known: Vec<&str> = known.into_iter().collect();
                return Err(self.open_err(format!(
                    "--scylla-dc {dc:?} is not a data centre of the cluster (its data centres: {})",
                    known.join(", ")
                )));
            }
        }
        let result = session
            .query_unpaged(
                "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
                (&self.keyspace,),
            )
            .await
            .map_err(|e| self.open_err(format!("reading the keyspace's replication: {e}")))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.open_err(format!("reading the keyspace's replication: {e}")))?;
        let map = rows
            .maybe_first_row::<(BTreeMap<String, String>,)>()
            .map_err(|e| self.open_err(format!("reading the keyspace's replication: {e}")))?
            .ok_or_else(|| {
                self.open_err(format!(
                    "keyspace {:?} does not exist: run `tillstream schema apply` first",
                    self.keyspace
                ))
            })?
            .0;
        let replication = super::quorum::replication_of(&map)
            .map_err(|e| self.open_err(format!("keyspace {:?}: {e}", self.keyspace)))?;
        super::quorum::check_overlap(self.consistency, self.datacenter.as_deref(), &replication)
            .map_err(|e| self.open_err(format!("keyspace {:?}: {e}", self.keyspace)))
    }

    fn tls_config(&self, ca: &PathBuf) -> Result<Arc<rustls::ClientConfig>, StoreError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| self.open_err(format!("reading the CA {}: {e}", ca.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| self.open_err(format!("reading the CA {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| self.open_err(format!("the CA {}: {e}", ca.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.open_err(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The driver's default retry policy, except that an idempotent write that
/// timed out is retried (up to [`WRITE_TIMEOUT_RETRIES`] times on the same
/// coordinator) rather than failed: the default retries a timed-out write
/// only for batch-log writes, and one failed write poisons the store and
/// stops acknowledgements until a restart. Every statement of this backend
/// is idempotent; anything not marked so is never retried.
#[derive(Debug)]
pub(crate) struct IdempotentRetry;

/// Retries of a timed-out idempotent write before it fails.
pub(crate) const WRITE_TIMEOUT_RETRIES: u32 = 3;

impl RetryPolicy for IdempotentRetry {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(IdempotentRetrySession {
            default: DefaultRetrySession::new(),
            write_timeouts: 0,
        })
    }
}

struct IdempotentRetrySession {
    default: DefaultRetrySession,
    write_timeouts: u32,
}

impl RetrySession for IdempotentRetrySession {
    fn decide_should_retry(&mut self, info: RequestInfo) -> RetryDecision {
        let timed_out = matches!(
            info.error,
            RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _)
        );
        if timed_out && info.is_idempotent && !info.consistency.is_serial() {
            if self.write_timeouts < WRITE_TIMEOUT_RETRIES {
                self.write_timeouts += 1;
                return RetryDecision::RetrySameTarget(None);
            }
            return RetryDecision::DontRetry;
        }
        self.default.decide_should_retry(info)
    }

    fn reset(&mut self) {
        self.default.reset();
        self.write_timeouts = 0;
    }
}

/// Consistency levels by their CQL names (`local_quorum`, `QUORUM`, ...).
pub trait ParseConsistency: Sized {
    /// The level named `s`, case-insensitive.
    fn parse_level(s: &str) -> Result<Self, String>;
}

impl ParseConsistency for Consistency {
    fn parse_level(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            _ => {
                return Err(format!(
                    "unknown consistency {s:?}: one of one, two, three, quorum, all, local_quorum, each_quorum, local_one"
                ));
            }
        })
    }
}

/// Runs one piece of driver work (the schema, a drop) to completion on a
/// runtime of its own: the tools that call it have none.
fn run_once<T>(
    cfg: &ScyllaConfig,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| cfg.open_err(format!("starting the driver's runtime: {e}")))?
        .block_on(work)
}

/// A schema change's timeout: the configured one, at least a minute
/// (a busy cluster can take long to apply one).
fn self_timeout(cfg: &ScyllaConfig) -> Duration {
    cfg.request_timeout.max(Duration::from_secs(60))
}

/// Drops `cfg.keyspace` and everything in it (the conformance suite's
/// keyspaces).
#[cfg(test)]
pub(crate) fn drop_keyspace(cfg: &ScyllaConfig) -> Result<(), StoreError> {
    run_once(cfg, async {
        let session = cfg.session().await?;
        let stmt = format!("DROP KEYSPACE IF EXISTS {}", cfg.keyspace);
        session
            .query_unpaged(stmt.as_str(), ())
            .await
            .map_err(|e| cfg.open_err(format!("{stmt}: {e}")))?;
        Ok(())
    })
}

/// Creates the keyspace and every table (`IF NOT EXISTS`: running it again
/// changes nothing) and waits for the cluster to agree on the schema.
/// Returns the statements run.
///
/// Every statement goes to one node, and the agreement is awaited once
/// at the end instead of after each: on a 3-node Cassandra cluster that
/// takes the schema from about 20 s to 5. One coordinator applies them in
/// order, so a table never reaches a node before its keyspace.
pub fn apply_schema(cfg: &ScyllaConfig, opts: &SchemaOptions) -> Result<usize, StoreError> {
    let files = render(opts).map_err(|reason| cfg.open_err(reason))?;
    run_once(cfg, async {
        let session = cfg
            .session_with(|b| b.auto_await_schema_agreement(false))
            .await?;
        let coordinator = session
            .get_cluster_state()
            .get_nodes_info()
            .iter()
            .find(|n| n.is_enabled())
            .cloned()
            .ok_or_else(|| cfg.open_err("no node of the cluster is reachable".into()))?;
        let one_node = ExecutionProfile::builder()
            .load_balancing_policy(SingleTargetLoadBalancingPolicy::new(
                NodeIdentifier::Node(coordinator),
                None,
            ))
            .request_timeout(Some(self_timeout(cfg)))
            .build()
            .into_handle();
        let mut n = 0;
        for (name, cql) in &files {
            for stmt in statements(cql) {
                let mut st = Statement::new(stmt.as_str());
                st.set_execution_profile_handle(Some(one_node.clone()));
                session
                    .query_unpaged(st, ())
                    .await
                    .map_err(|e| cfg.open_err(format!("{name}: {e}\n  in: {stmt}")))?;
                n += 1;
            }
        }
        n += add_columns(&session, &opts.keyspace, &one_node)
            .await
            .map_err(|e| cfg.open_err(e))?;
        session
            .await_schema_agreement()
            .await
            .map_err(|e| cfg.open_err(format!("waiting for schema agreement: {e}")))?;
        Ok(n)
    })
}

/// Columns added to a table after it was first created, in order: `CREATE
/// TABLE IF NOT EXISTS` leaves a keyspace made by an older build without
/// them, and CQL has no `ADD IF NOT EXISTS` that both Cassandra and
/// ScyllaDB take.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("store_movements", "lsn", "bigint"),
    ("device_batches", "digest", "bigint"),
    ("store_movements", "writer", "bigint"),
];

/// Adds each of [`ADDED_COLUMNS`] its table lacks; how many it added.
async fn add_columns(
    session: &Session,
    keyspace: &str,
    one_node: &scylla::client::execution_profile::ExecutionProfileHandle,
) -> Result<usize, String> {
    let mut added = 0;
    for &(table, column, kind) in ADDED_COLUMNS {
        let mut find = Statement::new(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
        );
        find.set_execution_profile_handle(Some(one_node.clone()));
        let read_err =
            |e: &dyn std::fmt::Display| format!("reading the columns of {keyspace}.{table}: {e}");
        let found = session
            .query_unpaged(find, (keyspace, table, column))
            .await
            .map_err(|e| read_err(&e))?
            .into_rows_result()
            .map_err(|e| read_err(&e))?
            .rows_num()
            > 0;
        if found {
            continue;
        }
        let cql = format!("ALTER TABLE {keyspace}.{table} ADD {column} {kind}");
        let mut add = Statement::new(cql.as_str());
        add.set_execution_profile_handle(Some(one_node.clone()));
        session
            .query_unpaged(add, ())
            .await
            .map_err(|e| format!("{cql}: {e}"))?;
        tracing::info!(%keyspace, %table, %column, "column added");
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_levels_parse_by_cql_name() {
        assert_eq!(
            Consistency::parse_level("LOCAL_QUORUM"),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(
            Consistency::parse_level("local-one"),
            Ok(Consistency::LocalOne)
        );
        assert!(Consistency::parse_level("most").is_err());
    }

    #[test]
    fn defaults_wait_for_a_local_quorum_and_outlast_the_servers_timeouts() {
        let c = ScyllaConfig::new(vec!["127.0.0.1:9042".into()]);
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        assert!(c.request_timeout >= Duration::from_secs(10));
        assert!(c.max_in_flight > 0);
    }

    #[test]
    fn no_nodes_is_a_clear_error() {
        let c = ScyllaConfig::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let err = rt.map(|rt| rt.block_on(c.session()).err().map(|e| e.to_string()));
        assert!(
            matches!(&err, Ok(Some(m)) if m.contains("--scylla-nodes")),
            "{err:?}"
        );
    }
}
