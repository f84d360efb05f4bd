//! A keyspace of its own for each test against a live cluster, dropped
//! when the test ends. The cluster is named at build time by
//! `TILLSTREAM_SCYLLA_NODES` (`host:port,...`); `TILLSTREAM_SCYLLA_DC`
//! (default `datacenter1`) and `TILLSTREAM_SCYLLA_RF` (default 1) shape
//! the keyspace. CI runs these against a 3-node Apache Cassandra 5.0
//! cluster at replication factor 3 (`deploy/cassandra/run.sh`).

use crate::{ScyllaConfig, apply_schema, drop_keyspace};
use tillstream_storage::schema::SchemaOptions;

/// A test's keyspace, and a configuration that writes to it.
pub(crate) struct TestKeyspace {
    pub(crate) cfg: ScyllaConfig,
}

impl TestKeyspace {
    /// Creates `tillstream_<tag>_<n>` with every table.
    pub(crate) fn new(tag: &str) -> Result<TestKeyspace, Box<dyn std::error::Error>> {
        let nodes = std::env::var("TILLSTREAM_SCYLLA_NODES")
            .map_err(|_| "set TILLSTREAM_SCYLLA_NODES to host:port of a ScyllaDB node")?;
        let dc = std::env::var("TILLSTREAM_SCYLLA_DC").unwrap_or_else(|_| "datacenter1".into());
        let rf = std::env::var("TILLSTREAM_SCYLLA_RF").unwrap_or_else(|_| "1".into());
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let mut cfg = ScyllaConfig::new(nodes.split(',').map(str::to_string).collect());
        cfg.keyspace = format!("tillstream_{tag}_{stamp}");
        cfg.node_id = format!("{tag}-{stamp}");
        apply_schema(
            &cfg,
            &SchemaOptions {
                keyspace: cfg.keyspace.clone(),
                replication: format!("{{'class': 'NetworkTopologyStrategy', '{dc}': {rf}}}"),
                ttl_days: None,
            },
        )?;
        Ok(TestKeyspace { cfg })
    }

    /// The configuration under another node id.
    pub(crate) fn as_node(&self, node_id: &str) -> ScyllaConfig {
        ScyllaConfig {
            node_id: node_id.into(),
            ..self.cfg.clone()
        }
    }

    /// Runs one CQL statement on the keyspace (`{ks}` in `cql` names it):
    /// what a test does behind the store's back.
    pub(crate) fn run(&self, cql: &str) -> Result<(), Box<dyn std::error::Error>> {
        let cql = cql.replace("{ks}", &self.cfg.keyspace);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let session = self.cfg.session().await?;
            session.query_unpaged(cql.as_str(), ()).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
    }
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        if let Err(e) = drop_keyspace(&self.cfg) {
            eprintln!("leaving keyspace {} behind: {e}", self.cfg.keyspace);
        }
    }
}
