//! What `GET /v1/cluster` and `tillstream cluster status` show: the
//! members, their leases, and the stores and devices each serves, read
//! from the cluster tables.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tillstream_scylla::{ClusterTables, MemberRow, NodeJournal, OwnerRecord, ScyllaConfig};
use tillstream_storage::StoreError;

use super::MEMBER_LEASE;
use crate::clock::now_us;

/// The cluster as the tables say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// When it was read (µs since the epoch).
    pub read_at_us: i64,
    /// The lease: a member not renewed for this long is gone (ms).
    pub lease_ms: u64,
    /// Every member row, live or not, by node id.
    pub members: Vec<MemberStatus>,
    /// Stores with an ownership row.
    pub stores: usize,
    /// Of those, released by a hand-off and not taken again yet (their
    /// next device takes them).
    pub stores_released: usize,
}

/// One member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub node: String,
    /// `live`, `leaving` (handing its stores over), `gone` (not renewed
    /// within the lease) or `fenced` (another process took its node id).
    pub state: String,
    /// Where devices reach it.
    pub quic_addr: String,
    /// Its HTTP API.
    pub http_addr: String,
    /// The generation of its node lease it runs under.
    pub generation: u64,
    /// Since it was last seen: its row or its node lease renewed (ms).
    pub lease_age_ms: u64,
    /// Stores whose ownership row names it.
    pub stores: usize,
    /// Devices connected to it when it last renewed.
    pub devices: u32,
    /// Journal records acknowledged but not yet in the tables (a gone
    /// node's are replayed by another before its stores move).
    pub journal_behind: u64,
    /// Its build.
    pub version: String,
}

/// The status from the rows read (a plain function: tested alone).
pub(crate) fn status_of(
    members: &[MemberRow],
    journals: &HashMap<String, NodeJournal>,
    owners: &[OwnerRecord],
    now: i64,
) -> ClusterStatus {
    let lease_us = MEMBER_LEASE.as_micros() as i64;
    let mut held: HashMap<&str, usize> = HashMap::new();
    for o in owners.iter().filter(|o| !o.owner.is_empty()) {
        *held.entry(o.owner.as_str()).or_default() += 1;
    }
    let mut out: Vec<MemberStatus> = members
        .iter()
        .map(|m| {
            let journal = journals.get(&m.node);
            let liveness = super::liveness(m, journal);
            let state = if liveness.generation < liveness.lease_generation {
                "fenced"
            } else if liveness.gone(now, lease_us) {
                "gone"
            } else if m.leaving {
                "leaving"
            } else {
                "live"
            };
            MemberStatus {
                node: m.node.clone(),
                state: state.into(),
                quic_addr: m.quic_addr.clone(),
                http_addr: m.http_addr.clone(),
                generation: m.generation,
                lease_age_ms: u64::try_from(
                    now.saturating_sub(m.renewed_at_us.max(liveness.lease_renewed_at_us)) / 1000,
                )
                .unwrap_or(0),
                stores: held.get(m.node.as_str()).copied().unwrap_or(0),
                devices: m.devices,
                journal_behind: journal.map_or(0, |j| j.journal_high.saturating_sub(j.checkpoint)),
                version: m.version.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    ClusterStatus {
        read_at_us: now,
        lease_ms: MEMBER_LEASE.as_millis() as u64,
        members: out,
        stores: owners.len(),
        stores_released: owners.iter().filter(|o| o.owner.is_empty()).count(),
    }
}

/// Reads the status through `tables`.
pub(crate) async fn read_with(tables: &ClusterTables) -> Result<ClusterStatus, StoreError> {
    let members = tables.members().await?;
    let nodes: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
    let journals = tables.journals(&nodes).await?;
    let owners = tables.owners().await?;
    Ok(status_of(&members, &journals, &owners, now_us()))
}

/// Connects to the cluster of `cfg` and reads its status (`tillstream
/// cluster status`).
pub async fn cluster_status(cfg: &ScyllaConfig) -> Result<ClusterStatus, StoreError> {
    read_with(&ClusterTables::connect(cfg).await?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_live_leaving_gone_or_fenced_with_the_stores_they_hold() {
        let now = 100_000_000;
        let row = |node: &str, renewed: i64, leaving: bool, generation: u64| MemberRow {
            node: node.into(),
            generation,
            renewed_at_us: renewed,
            leaving,
            devices: 7,
            ..MemberRow::default()
        };
        let members = vec![
            row("c", now - 1_000_000, false, 3),
            row("a", now - 7_000_000, false, 1),
            row("b", now - 500_000, true, 2),
            row("d", now - 100_000, false, 1),
        ];
        let journal = |generation, high, checkpoint| NodeJournal {
            generation,
            holder: String::new(),
            renewed_at_us: 0,
            journal_high: high,
            checkpoint,
        };
        let journals = HashMap::from([
            ("a".to_string(), journal(1, 90, 40)),
            ("b".to_string(), journal(2, 5, 5)),
            ("c".to_string(), journal(3, 0, 0)),
            ("d".to_string(), journal(2, 0, 0)),
        ]);
        let owner = |store, owner: &str| OwnerRecord {
            store,
            epoch: 1,
            owner: owner.into(),
            taken_at_us: 0,
        };
        let owners = vec![owner(1, "a"), owner(2, "c"), owner(3, "c"), owner(4, "")];
        let s = status_of(&members, &journals, &owners, now);
        let states: Vec<(&str, &str, usize, u64)> = s
            .members
            .iter()
            .map(|m| {
                (
                    m.node.as_str(),
                    m.state.as_str(),
                    m.stores,
                    m.journal_behind,
                )
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("a", "gone", 1, 50),
                ("b", "leaving", 0, 0),
                ("c", "live", 2, 0),
                ("d", "fenced", 0, 0),
            ]
        );
        assert_eq!((s.stores, s.stores_released), (4, 1));
        assert_eq!(s.members[0].lease_age_ms, 7_000);
    }
}
