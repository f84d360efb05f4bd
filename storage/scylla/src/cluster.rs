//! The tables several tillstream nodes share to divide the stores
//! (docs/internals/nodes.md): `cluster_members` (who is
//! up, where devices reach it) and `store_owners` (which node serves each
//! store, at which epoch), and the overview of every node's journal
//! (`node_leases` and `checkpoints`) that tells a node gone with records
//! still out of the tables. The decisions over them are the engine core's
//! (`tillstream_engine_core::cluster`); this module only reads and writes.
//!
//! Async, on the caller's runtime, with a session of its own: the engine's
//! cluster task awaits these between batches of its own, never on the
//! ingest path.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::{ScyllaConfig, backend_err};
use tillstream_storage::store::StoreError;

/// A member's row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberRow {
    /// The node id (`--scylla-node-id`).
    pub node: String,
    /// The generation of its node lease when it wrote the row.
    pub generation: u64,
    /// Where devices reach it (`host:port`).
    pub quic_addr: String,
    /// Its HTTP API (`host:port`), empty when off.
    pub http_addr: String,
    /// When this process started (µs).
    pub started_at_us: i64,
    /// When it last renewed the row (µs, its clock).
    pub renewed_at_us: i64,
    /// It is handing its stores over before it exits.
    pub leaving: bool,
    /// Stores it serves.
    pub stores: u32,
    /// Devices connected to it.
    pub devices: u32,
    /// Its build's version.
    pub version: String,
}

/// A store's ownership row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The store.
    pub store: u32,
    /// Raised by every take: the store's fencing token.
    pub epoch: u64,
    /// The node serving it; empty once released.
    pub owner: String,
    /// When it was taken (µs).
    pub taken_at_us: i64,
}

/// A node id's journal: its lease and its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeJournal {
    /// The lease's generation: a member row below it is a fenced process's.
    pub generation: u64,
    /// The process holding the id; empty once given back.
    pub holder: String,
    /// When the lease was last written (every journal append, and an
    /// idle holder's heartbeat), µs.
    pub renewed_at_us: i64,
    /// The last LSN an ack may have covered.
    pub journal_high: u64,
    /// Every record up to here is in the tables.
    pub checkpoint: u64,
}

const MEMBER_COLUMNS: &str = "node, generation, quic_addr, http_addr, started_at_us, renewed_at_us, leaving, stores, devices, version";

/// The cluster tables of one keyspace.
#[derive(Debug)]
pub struct ClusterTables {
    session: Session,
    renew: PreparedStatement,
    remove: PreparedStatement,
    members: PreparedStatement,
    owners: PreparedStatement,
    owner: PreparedStatement,
    insert_owner: PreparedStatement,
    take: PreparedStatement,
    release: PreparedStatement,
    lease_plain: PreparedStatement,
    checkpoint_plain: PreparedStatement,
    lease_of: PreparedStatement,
    checkpoint_of: PreparedStatement,
}

impl ClusterTables {
    /// Connects (a session of its own) and prepares the statements.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<ClusterTables, StoreError> {
        let session = cfg.session().await?;
        let ks = &cfg.keyspace;
        let plain = |text: String| {
            let session = &session;
            let consistency = cfg.consistency;
            async move {
                let mut p = session
                    .prepare(text.as_str())
                    .await
                    .map_err(|e| StoreError::Open {
                        path: format!("keyspace {ks}"),
                        reason: format!(
                            "preparing {text}: {e}; has `tillstream schema apply` run since the cluster tables came (003_cluster.cql)?"
                        ),
                    })?;
                p.set_is_idempotent(true);
                p.set_consistency(consistency);
                Ok::<_, StoreError>(p)
            }
        };
        let serial = |mut p: PreparedStatement| {
            p.set_consistency(Consistency::Serial);
            p
        };
        let conditional = |mut p: PreparedStatement| {
            p.set_serial_consistency(Some(scylla::statement::SerialConsistency::Serial));
            p
        };
        Ok(ClusterTables {
            renew: plain(format!(
                "INSERT INTO {ks}.cluster_members (ring, {MEMBER_COLUMNS}) VALUES ('members', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            remove: plain(format!(
                "DELETE FROM {ks}.cluster_members WHERE ring = 'members' AND node = ?"
            ))
            .await?,
            members: plain(format!(
                "SELECT {MEMBER_COLUMNS} FROM {ks}.cluster_members WHERE ring = 'members'"
            ))
            .await?,
            owners: plain(format!(
                "SELECT store, epoch, owner, taken_at_us FROM {ks}.store_owners"
            ))
            .await?,
            owner: serial(
                plain(format!(
                    "SELECT store, epoch, owner, taken_at_us FROM {ks}.store_owners WHERE store = ?"
                ))
                .await?,
            ),
            insert_owner: conditional(
                plain(format!(
                    "INSERT INTO {ks}.store_owners (store, epoch, owner, taken_at_us) VALUES (?, 1, ?, ?) IF NOT EXISTS"
                ))
                .await?,
            ),
            take: conditional(
                plain(format!(
                    "UPDATE {ks}.store_owners SET epoch = ?, owner = ?, taken_at_us = ? WHERE store = ? IF epoch = ?"
                ))
                .await?,
            ),
            release: conditional(
                plain(format!(
                    "UPDATE {ks}.store_owners SET owner = '' WHERE store = ? IF epoch = ? AND owner = ?"
                ))
                .await?,
            ),
            lease_plain: plain(format!(
                "SELECT node, generation, holder, journal_high, renewed_at_us FROM {ks}.node_leases WHERE node = ?"
            ))
            .await?,
            checkpoint_plain: plain(format!(
                "SELECT node, lsn FROM {ks}.checkpoints WHERE node = ?"
            ))
            .await?,
            lease_of: serial(
                plain(format!(
                    "SELECT node, generation, holder, journal_high, renewed_at_us FROM {ks}.node_leases WHERE node = ?"
                ))
                .await?,
            ),
            checkpoint_of: serial(
                plain(format!("SELECT node, lsn FROM {ks}.checkpoints WHERE node = ?")).await?,
            ),
            session,
        })
    }

    async fn rows(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        op: &'static str,
    ) -> Result<Vec<Row>, StoreError> {
        let pager = self
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(backend_err(op))?;
        pager
            .rows_stream::<Row>()
            .map_err(backend_err(op))?
            .try_collect()
            .await
            .map_err(backend_err(op))
    }

    /// Whether a conditional write applied.
    async fn conditional(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        op: &'static str,
    ) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(backend_err(op))?;
        let rows = result.into_rows_result().map_err(backend_err(op))?;
        let first = rows
            .rows::<Row>()
            .map_err(backend_err(op))?
            .next()
            .transpose()
            .map_err(backend_err(op))?;
        Ok(matches!(
            first.as_ref().and_then(|r| r.columns.first()),
            Some(Some(CqlValue::Boolean(true)))
        ))
    }

    /// Writes this node's member row (its heartbeat).
    pub async fn renew(&self, m: &MemberRow) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.renew,
                (
                    &m.node,
                    m.generation as i64,
                    &m.quic_addr,
                    &m.http_addr,
                    m.started_at_us,
                    m.renewed_at_us,
                    m.leaving,
                    i32::try_from(m.stores).unwrap_or(i32::MAX),
                    i32::try_from(m.devices).unwrap_or(i32::MAX),
                    &m.version,
                ),
            )
            .await
            .map_err(backend_err("renewing the member row"))?;
        Ok(())
    }

    /// Deletes a member row: a node that left cleanly.
    pub async fn remove(&self, node: &str) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.remove, (node,))
            .await
            .map_err(backend_err("removing the member row"))?;
        Ok(())
    }

    /// Every member row.
    pub async fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let rows = self.rows(&self.members, (), "reading the members").await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let c = Cells(r.columns);
                MemberRow {
                    node: c.text(0),
                    generation: c.u64(1),
                    quic_addr: c.text(2),
                    http_addr: c.text(3),
                    started_at_us: c.i64(4),
                    renewed_at_us: c.i64(5),
                    leaving: matches!(c.0.get(6), Some(Some(CqlValue::Boolean(true)))),
                    stores: c.int(7),
                    devices: c.int(8),
                    version: c.text(9),
                }
            })
            .collect())
    }

    fn owner_of(r: Row) -> OwnerRecord {
        let c = Cells(r.columns);
        OwnerRecord {
            store: u32::try_from(c.i64(0)).unwrap_or(0),
            epoch: c.u64(1),
            owner: c.text(2),
            taken_at_us: c.i64(3),
        }
    }

    /// Every store's ownership row.
    pub async fn owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        let rows = self
            .rows(&self.owners, (), "reading the store owners")
            .await?;
        Ok(rows.into_iter().map(Self::owner_of).collect())
    }

    /// One store's row, read at SERIAL: it sees every take that applied.
    pub async fn owner(&self, store: u32) -> Result<Option<OwnerRecord>, StoreError> {
        let rows = self
            .rows(&self.owner, (i64::from(store),), "reading a store's owner")
            .await?;
        Ok(rows.into_iter().next().map(Self::owner_of))
    }

    /// Takes `store` for `me`, raising its epoch from `from` (`None`: no
    /// row yet). The new epoch if the take applied; `None` if another
    /// node moved the row first.
    pub async fn take(
        &self,
        store: u32,
        from: Option<u64>,
        me: &str,
        now_us: i64,
    ) -> Result<Option<u64>, StoreError> {
        let store = i64::from(store);
        match from {
            None => Ok(self
                .conditional(&self.insert_owner, (store, me, now_us), "taking a store")
                .await?
                .then_some(1)),
            Some(epoch) => {
                let next = epoch + 1;
                Ok(self
                    .conditional(
                        &self.take,
                        (next as i64, me, now_us, store, epoch as i64),
                        "taking a store",
                    )
                    .await?
                    .then_some(next))
            }
        }
    }

    /// Gives `store` back (its owner emptied) if `me` still holds it at
    /// `epoch`. Whether it did.
    pub async fn release(&self, store: u32, epoch: u64, me: &str) -> Result<bool, StoreError> {
        self.conditional(
            &self.release,
            (i64::from(store), epoch as i64, me),
            "releasing a store",
        )
        .await
    }

    /// The lease and checkpoint of each node id of `nodes` (the members),
    /// read at once: two single-partition reads each, where a scan of
    /// the two tables walks every token range. At the statements'
    /// consistency: the overview the cluster task looks at; a decision
    /// re-reads one at SERIAL ([`journal`](Self::journal)).
    pub async fn journals(
        &self,
        nodes: &[&str],
    ) -> Result<HashMap<String, NodeJournal>, StoreError> {
        let reads = nodes.iter().map(|&node| async move {
            let lease = self
                .rows(&self.lease_plain, (node,), "reading a node lease")
                .await?;
            let checkpoint = self
                .rows(&self.checkpoint_plain, (node,), "reading a checkpoint")
                .await?;
            Ok::<_, StoreError>((node, lease, checkpoint))
        });
        let mut out = HashMap::new();
        for read in futures_util::future::join_all(reads).await {
            let (node, lease, checkpoint) = read?;
            let Some(lease) = lease.into_iter().next() else {
                continue;
            };
            let c = Cells(lease.columns);
            out.insert(
                node.to_string(),
                NodeJournal {
                    generation: c.u64(1),
                    holder: c.text(2),
                    journal_high: c.u64(3),
                    renewed_at_us: c.i64(4),
                    checkpoint: checkpoint
                        .into_iter()
                        .next()
                        .map_or(0, |r| Cells(r.columns).u64(1)),
                },
            );
        }
        Ok(out)
    }

    /// One node id's lease and checkpoint, each read at SERIAL.
    pub async fn journal(&self, node: &str) -> Result<Option<NodeJournal>, StoreError> {
        let lease = self
            .rows(&self.lease_of, (node,), "reading a node lease")
            .await?;
        let Some(lease) = lease.into_iter().next() else {
            return Ok(None);
        };
        let c = Cells(lease.columns);
        let checkpoint = self
            .rows(&self.checkpoint_of, (node,), "reading a checkpoint")
            .await?
            .into_iter()
            .next()
            .map_or(0, |r| Cells(r.columns).u64(1));
        Ok(Some(NodeJournal {
            generation: c.u64(1),
            holder: c.text(2),
            journal_high: c.u64(3),
            renewed_at_us: c.i64(4),
            checkpoint,
        }))
    }
}

/// The cells of a row, read leniently: a null or a missing column is the
/// zero of its type (a row written before a column came).
struct Cells(Vec<Option<CqlValue>>);

impl Cells {
    fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(Some(CqlValue::Text(s) | CqlValue::Ascii(s))) => s.clone(),
            _ => String::new(),
        }
    }
    fn i64(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Some(CqlValue::BigInt(v))) => *v,
            _ => 0,
        }
    }
    fn u64(&self, i: usize) -> u64 {
        u64::try_from(self.i64(i)).unwrap_or(0)
    }
    fn int(&self, i: usize) -> u32 {
        match self.0.get(i) {
            Some(Some(CqlValue::Int(v))) => u32::try_from(*v).unwrap_or(0),
            _ => 0,
        }
    }
}
