//! The CQL schema of the tables for ScyllaDB (`storage/schema/*.cql`),
//! embedded in the binary so `tillstream schema apply` needs no files.

/// One schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name, applied in name order.
    pub name: &'static str,
    /// CQL text: statements ending in `;`, `--` comments.
    pub cql: &'static str,
}

/// The schema files, in the order to apply them.
pub const FILES: [SchemaFile; 3] = [
    SchemaFile {
        name: "001_keyspace.cql",
        cql: include_str!("../schema/001_keyspace.cql"),
    },
    SchemaFile {
        name: "002_tables.cql",
        cql: include_str!("../schema/002_tables.cql"),
    },
    SchemaFile {
        name: "003_cluster.cql",
        cql: include_str!("../schema/003_cluster.cql"),
    },
];

/// The statements of a CQL text, without comments or the final `;`, in
/// order. Loose: it does not handle `;` or `--` inside string literals,
/// which the schema files do not use.
pub fn statements(cql: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The keyspace the schema files name, their replication map and their
/// table TTL, which [`render`] replaces.
pub const DEFAULT_KEYSPACE: &str = "tillstream";
const FILE_REPLICATION: &str = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
const FILE_TTL: &str = "default_time_to_live = 34560000";

const FILE_WINDOW: &str = "'compaction_window_size': 9";

/// Most TWCS windows a table's TTL may span: ScyllaDB refuses more than
/// 50 (`twcs_max_window_count`); a margin for the window being written.
pub const MAX_TTL_WINDOWS: u32 = 45;

/// The TWCS window (days) for a TTL: the TTL over at most
/// [`MAX_TTL_WINDOWS`] windows, a day at least.
pub fn window_days(ttl_days: Option<u32>) -> u32 {
    ttl_days.map_or(1, |d| d.div_ceil(MAX_TTL_WINDOWS).max(1))
}

/// What differs between clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaOptions {
    /// Keyspace name (letters, digits and `_`, a letter first, at most 48).
    pub keyspace: String,
    /// The keyspace's replication map, as CQL
    /// (`{'class': 'NetworkTopologyStrategy', 'dc1': 3}`).
    pub replication: String,
    /// TTL of the time-series tables in days; `None` keeps rows for ever.
    pub ttl_days: Option<u32>,
}

impl Default for SchemaOptions {
    fn default() -> Self {
        SchemaOptions {
            keyspace: DEFAULT_KEYSPACE.into(),
            replication: FILE_REPLICATION.into(),
            ttl_days: Some(400),
        }
    }
}

/// Whether `name` can be a keyspace: CQL's unquoted identifiers, which
/// fold to lower case, so only lower case is accepted.
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The schema files for one cluster: the keyspace, replication and TTL of
/// `opts` in place of the files' own. Errors name a bad keyspace.
pub fn render(opts: &SchemaOptions) -> Result<Vec<(&'static str, String)>, String> {
    if !valid_keyspace(&opts.keyspace) {
        return Err(format!(
            "keyspace {:?}: use lower-case letters, digits and '_', a letter first, at most 48",
            opts.keyspace
        ));
    }
    let ttl = format!(
        "default_time_to_live = {}",
        opts.ttl_days.map_or(0, |d| u64::from(d) * 86_400)
    );
    Ok(FILES
        .iter()
        .map(|f| {
            let cql = f
                .cql
                .replace(FILE_REPLICATION, &opts.replication)
                .replace(FILE_TTL, &ttl)
                .replace(
                    FILE_WINDOW,
                    &format!("'compaction_window_size': {}", window_days(opts.ttl_days)),
                )
                .replace(
                    "KEYSPACE IF NOT EXISTS tillstream\n",
                    &format!("KEYSPACE IF NOT EXISTS {}\n", opts.keyspace),
                )
                .replace("tillstream.", &format!("{}.", opts.keyspace));
            (f.name, cql)
        })
        .collect())
}

/// Every statement of every schema file, in order.
pub fn all_statements() -> Vec<String> {
    FILES.iter().flat_map(|f| statements(f.cql)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Table;

    #[test]
    fn every_statement_ends_and_every_table_is_created() -> Result<(), String> {
        for f in FILES {
            let code: Vec<&str> = f
                .cql
                .lines()
                .map(|l| l.split_once("--").map_or(l, |(c, _)| c).trim())
                .filter(|l| !l.is_empty())
                .collect();
            let last = code.last().ok_or(format!("{} is empty", f.name))?;
            if !last.ends_with(';') {
                return Err(format!(
                    "{}: the last statement does not end in ';'",
                    f.name
                ));
            }
        }
        let stmts = all_statements();
        for s in &stmts {
            if !s.starts_with("CREATE ") {
                return Err(format!("not a CREATE statement: {s}"));
            }
            if s.matches('(').count() != s.matches(')').count() {
                return Err(format!("unbalanced parentheses: {s}"));
            }
        }
        let ks = stmts.first().ok_or("no statement")?;
        if !(ks.starts_with("CREATE KEYSPACE IF NOT EXISTS tillstream")
            && ks.contains("NetworkTopologyStrategy"))
        {
            return Err(format!(
                "the first statement must create the keyspace: {ks}"
            ));
        }
        for t in Table::ALL {
            let s = create_table(&stmts, t.name())?;
            if !s.contains("PRIMARY KEY ((") {
                return Err(format!("{}: no partition key", t.name()));
            }
            let series = !matches!(
                t,
                Table::StockLevels | Table::TerminalRollups | Table::DeviceWatermarks
            );
            let twcs =
                s.contains("TimeWindowCompactionStrategy") && s.contains("default_time_to_live");
            if series != twcs {
                return Err(format!(
                    "{}: TWCS and TTL only, and always, on time series",
                    t.name()
                ));
            }
        }
        // The keyspace, the logical tables, and ten of the backend's
        // own: store_movements (the movements by store and hour, for
        // activation), the journal, the checkpoints, the node leases, the
        // two staging tables of snapshot rows, the two of the catalogue,
        // and the two a cluster of nodes shares (members, store owners).
        if stmts.len() != 11 + Table::ALL.len() {
            return Err(format!(
                "{} statements, expected {}",
                stmts.len(),
                11 + Table::ALL.len()
            ));
        }
        for (table, key) in [
            ("store_movements", &["store", "hour"][..]),
            ("journal", &["node", "segment"][..]),
            ("checkpoints", &["node"][..]),
            ("node_leases", &["node"][..]),
            ("staged_levels", &["node", "lsn", "chunk"][..]),
            ("staged_rollups", &["node", "lsn", "chunk"][..]),
            ("catalog_products", &["bucket"][..]),
            ("catalog_stores", &["store"][..]),
            // Every member in one partition: read in one request.
            ("cluster_members", &["ring"][..]),
            ("store_owners", &["store"][..]),
        ] {
            let s = create_table(&stmts, table)?;
            if partition_key(s) != key {
                return Err(format!("{table}: {:?}", partition_key(s)));
            }
        }
        Ok(())
    }

    /// The CREATE TABLE statement of `table`.
    fn create_table<'a>(stmts: &'a [String], table: &str) -> Result<&'a String, String> {
        let head = format!("CREATE TABLE IF NOT EXISTS tillstream.{table} (");
        stmts
            .iter()
            .find(|s| s.starts_with(&head))
            .ok_or(format!("no CREATE TABLE for {table}"))
    }

    /// The partition key columns of a CREATE TABLE statement.
    fn partition_key(stmt: &str) -> Vec<&str> {
        stmt.split_once("PRIMARY KEY ((")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(cols, _)| cols.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_partition_is_bounded_by_a_time_bucket_or_a_hash_bucket() -> Result<(), String> {
        let stmts = all_statements();
        for t in Table::ALL {
            let s = create_table(&stmts, t.name())?;
            let key = partition_key(s);
            let bounded = match t {
                // One row per device, ever.
                Table::DeviceWatermarks => key == ["device"],
                // SKUs spread over 256 buckets per store.
                Table::StockLevels => key == ["store", "bucket"],
                Table::TerminalRollups => key == ["store", "hour"],
                Table::DeviceBatches => key == ["device", "seq_bucket"],
                _ => key.iter().any(|c| matches!(*c, "hour" | "day" | "month")),
            };
            if !bounded {
                return Err(format!("{}: unbounded partition key {key:?}", t.name()));
            }
        }
        Ok(())
    }

    #[test]
    fn render_names_the_keyspace_replication_and_ttl_everywhere() -> Result<(), String> {
        let opts = SchemaOptions {
            keyspace: "chain_eu".into(),
            replication: "{'class': 'NetworkTopologyStrategy', 'eu': 3}".into(),
            ttl_days: None,
        };
        let files = render(&opts)?;
        let stmts: Vec<String> = files.iter().flat_map(|(_, c)| statements(c)).collect();
        assert_eq!(stmts.len(), all_statements().len());
        assert!(stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chain_eu WITH replication = {'class': 'NetworkTopologyStrategy', 'eu': 3}"), "{}", stmts[0]);
        for s in &stmts[1..] {
            assert!(s.contains(" chain_eu."), "{s}");
            assert!(!s.contains("tillstream."), "{s}");
            assert!(!s.contains("34560000"), "{s}");
        }
        assert!(stmts.iter().any(|s| s.contains("default_time_to_live = 0")));
        // Every TWCS table's TTL spans at most 45 windows, whatever the TTL.
        for ttl in [None, Some(1), Some(45), Some(46), Some(400), Some(3650)] {
            let files = render(&SchemaOptions {
                ttl_days: ttl,
                ..SchemaOptions::default()
            })?;
            for s in files.iter().flat_map(|(_, c)| statements(c)) {
                let Some((_, w)) = s.split_once("'compaction_window_size': ") else {
                    continue;
                };
                let window: u32 = w
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or(format!("no window in {s}"))?;
                assert!(window >= 1);
                if let Some(days) = ttl {
                    assert!(
                        days.div_ceil(window) <= MAX_TTL_WINDOWS,
                        "{days} days in {window}-day windows"
                    );
                }
            }
        }
        // The default options give the files back unchanged.
        let same = render(&SchemaOptions::default())?;
        assert!(same.iter().zip(FILES).all(|((_, c), f)| c == f.cql));
        for bad in ["", "Chain", "1chain", "chain-eu", "a;drop"] {
            let opts = SchemaOptions {
                keyspace: bad.into(),
                ..SchemaOptions::default()
            };
            assert!(render(&opts).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn statements_strip_comments() {
        let s = statements("-- a; b\nCREATE X (a int); -- c\n\nCREATE Y;");
        assert_eq!(s, vec!["CREATE X (a int)", "CREATE Y"]);
    }
}
