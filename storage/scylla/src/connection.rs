//! A session and its prepared statements, shared by the stores opened
//! on it (ARCHITECTURE.md, "storage/scylla").

use std::sync::Arc;

use scylla::client::session::Session;
use tillstream_storage::store::StoreError;

use crate::ScyllaConfig;
use crate::fence::LeaseStatements;
use crate::statements::Texts;
use crate::writes::Prepared;

/// A session and its prepared statements, made once and shared by the
/// stores opened on it ([`ScyllaStore::open_on`]). Connecting and
/// preparing took 6 s of a failover's adoption on a loaded 3-node
/// cluster; a node makes this ahead of need.
#[derive(Clone)]
pub struct Connection {
    pub(crate) session: Arc<Session>,
    pub(crate) st: Arc<Prepared>,
    pub(crate) lease: LeaseStatements,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `cfg`'s cluster and prepares every statement of its
    /// keyspace. Its driver tasks run on the calling runtime.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Connection, StoreError> {
        let session = cfg.session().await?;
        cfg.check_consistency(&session).await?;
        let unprepared = |e: StoreError| StoreError::Open {
            path: cfg.nodes.join(","),
            reason: format!(
                "preparing statements on keyspace {:?} ({e}); has `tillstream schema apply` run?",
                cfg.keyspace
            ),
        };
        let st = Prepared::new(&session, &Texts::new(&cfg.keyspace), &cfg.keyspace)
            .await
            .map_err(unprepared)?;
        let lease = LeaseStatements::prepare(&session, &cfg.keyspace)
            .await
            .map_err(unprepared)?;
        Ok(Connection {
            session: Arc::new(session),
            st: Arc::new(st),
            lease,
        })
    }
}
