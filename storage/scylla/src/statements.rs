//! The CQL text of every statement the backend prepares, built from the
//! row mappings so a column cannot be named in one place and missed in
//! another. Tests check each text against `storage/schema/`.

use super::mapping::CqlRow;

/// `INSERT INTO ks.T (cols) VALUES (?, ...)`, with ` USING TIMESTAMP ?`
/// (bound after the row's values) when `timestamped`.
pub(crate) fn insert<T: CqlRow>(ks: &str, timestamped: bool) -> String {
    insert_into(ks, T::TABLE, T::COLUMNS, timestamped)
}

pub(crate) fn insert_into(ks: &str, table: &str, columns: &[&str], timestamped: bool) -> String {
    let marks = vec!["?"; columns.len()].join(", ");
    let using = if timestamped {
        " USING TIMESTAMP ?"
    } else {
        ""
    };
    format!(
        "INSERT INTO {ks}.{table} ({}) VALUES ({marks}){using}",
        columns.join(", ")
    )
}

/// `SELECT cols FROM ks.T`, then ` WHERE ...` when `filter` is not empty.
pub(crate) fn select<T: CqlRow>(ks: &str, filter: &str) -> String {
    let mut s = format!("SELECT {} FROM {ks}.{}", T::COLUMNS.join(", "), T::TABLE);
    if !filter.is_empty() {
        s.push_str(" WHERE ");
        s.push_str(filter);
    }
    s
}

/// Every text the backend prepares, with a name for errors. Row writes
/// and reads come from the mappings; the journal and checkpoint
/// statements are written out.
#[derive(Debug, Clone)]
pub(crate) struct Texts {
    pub(crate) journal_insert: String,
    pub(crate) journal_read: String,
    pub(crate) journal_delete_segment: String,
    pub(crate) generation_write: String,
    pub(crate) checkpoint_read: String,
    pub(crate) checkpoint_write: String,
    pub(crate) pruned_write: String,
    pub(crate) watermark_read: String,
    pub(crate) batch_read: String,
    pub(crate) levels_read: String,
    pub(crate) store_movements_read: String,
    pub(crate) rollups_read: String,
    pub(crate) history_read: String,
    pub(crate) sales_read: String,
    pub(crate) staged_levels_insert: String,
    pub(crate) staged_rollups_insert: String,
    pub(crate) staged_levels_read: String,
    pub(crate) staged_rollups_read: String,
    pub(crate) staged_levels_delete: String,
    pub(crate) staged_rollups_delete: String,
    pub(crate) snapshots_at_write: String,
    pub(crate) product_insert: String,
    pub(crate) store_insert: String,
    pub(crate) products_read: String,
    pub(crate) stores_read: String,
}

/// The staging table of a snapshot table, and its columns: the
/// materialization's (node, lsn, chunk), then the table's own.
pub(crate) fn staged_columns<T: CqlRow>() -> Vec<&'static str> {
    let mut cols = vec!["node", "lsn", "chunk"];
    cols.extend(T::COLUMNS);
    cols
}

impl Texts {
    pub(crate) fn new(ks: &str) -> Texts {
        use super::mapping::ByStoreHour;
        use tillstream_storage::rows::*;
        Texts {
            journal_insert: format!(
                "INSERT INTO {ks}.journal (node, segment, lsn, generation, record) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ),
            journal_read: format!(
                "SELECT lsn, generation, record FROM {ks}.journal WHERE node = ? AND segment = ? AND lsn > ?"
            ),
            journal_delete_segment: format!(
                "DELETE FROM {ks}.journal USING TIMESTAMP ? WHERE node = ? AND segment = ?"
            ),
            generation_write: format!(
                "UPDATE {ks}.checkpoints SET generation = ? WHERE node = ? IF generation = ?"
            ),
            checkpoint_read: format!(
                "SELECT lsn, pruned_below, generation, snapshots_at FROM {ks}.checkpoints WHERE node = ?"
            ),
            checkpoint_write: format!(
                "UPDATE {ks}.checkpoints SET lsn = ?, updated_at_us = ? WHERE node = ? IF generation = ?"
            ),
            pruned_write: format!(
                "UPDATE {ks}.checkpoints USING TIMESTAMP ? SET pruned_below = ? WHERE node = ?"
            ),
            watermark_read: format!("SELECT seq FROM {ks}.device_watermarks WHERE device = ?"),
            batch_read: format!(
                "SELECT digest FROM {ks}.device_batches WHERE device = ? AND seq_bucket = ? AND seq = ?"
            ),
            levels_read: select::<StockLevelRow>(ks, "store = ? AND bucket = ?"),
            store_movements_read: select::<ByStoreHour>(
                ks,
                "store = ? AND hour = ? AND ts_us >= ? AND ts_us < ?",
            ),
            rollups_read: select::<TerminalRollupRow>(ks, "store = ? AND hour = ?"),
            history_read: select::<StockMovementRow>(
                ks,
                "store = ? AND sku = ? AND month = ? AND ts_us >= ? AND ts_us < ?",
            ),
            sales_read: select::<SaleRow>(
                ks,
                "store = ? AND hour = ? AND ts_us >= ? AND ts_us < ?",
            ),
            staged_levels_insert: insert_into(
                ks,
                "staged_levels",
                &staged_columns::<StockLevelRow>(),
                false,
            ),
            staged_rollups_insert: insert_into(
                ks,
                "staged_rollups",
                &staged_columns::<TerminalRollupRow>(),
                false,
            ),
            staged_levels_read: format!(
                "SELECT {} FROM {ks}.staged_levels WHERE node = ? AND lsn = ? AND chunk = ?",
                StockLevelRow::COLUMNS.join(", ")
            ),
            staged_rollups_read: format!(
                "SELECT {} FROM {ks}.staged_rollups WHERE node = ? AND lsn = ? AND chunk = ?",
                TerminalRollupRow::COLUMNS.join(", ")
            ),
            staged_levels_delete: format!(
                "DELETE FROM {ks}.staged_levels WHERE node = ? AND lsn = ? AND chunk = ?"
            ),
            staged_rollups_delete: format!(
                "DELETE FROM {ks}.staged_rollups WHERE node = ? AND lsn = ? AND chunk = ?"
            ),
            snapshots_at_write: format!(
                "UPDATE {ks}.checkpoints USING TIMESTAMP ? SET snapshots_at = ? WHERE node = ?"
            ),
            product_insert: format!(
                "INSERT INTO {ks}.catalog_products (bucket, sku, code, name, category) VALUES (?, ?, ?, ?, ?)"
            ),
            store_insert: format!(
                "INSERT INTO {ks}.catalog_stores (store, name, country) VALUES (?, ?, ?)"
            ),
            products_read: format!(
                "SELECT sku, code, name, category FROM {ks}.catalog_products WHERE bucket = ?"
            ),
            stores_read: format!("SELECT store, name, country FROM {ks}.catalog_stores"),
        }
    }

    /// Every text, for the schema check.
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<&str> {
        vec![
            &self.journal_insert,
            &self.journal_read,
            &self.journal_delete_segment,
            &self.generation_write,
            &self.checkpoint_read,
            &self.checkpoint_write,
            &self.pruned_write,
            &self.watermark_read,
            &self.batch_read,
            &self.levels_read,
            &self.store_movements_read,
            &self.rollups_read,
            &self.history_read,
            &self.sales_read,
            &self.staged_levels_insert,
            &self.staged_rollups_insert,
            &self.staged_levels_read,
            &self.staged_rollups_read,
            &self.staged_levels_delete,
            &self.staged_rollups_delete,
            &self.snapshots_at_write,
            &self.product_insert,
            &self.store_insert,
            &self.products_read,
            &self.stores_read,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::mapping::{ByStoreHour, CqlRow, DEAD_LETTER_COLUMNS};
    use super::*;
    use std::collections::BTreeMap;
    use tillstream_storage::rows::*;
    use tillstream_storage::schema::all_statements;

    /// Column names per table, read from the schema's CREATE TABLEs.
    fn schema_columns() -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for s in all_statements() {
            let Some(rest) = s.strip_prefix("CREATE TABLE IF NOT EXISTS tillstream.") else {
                continue;
            };
            let Some((table, body)) = rest.split_once(" (") else {
                continue;
            };
            let cols = body
                .split(',')
                .map(str::trim)
                .take_while(|c| !c.starts_with("PRIMARY KEY"))
                .filter_map(|c| c.split_whitespace().next().map(String::from))
                .collect();
            out.insert(table.to_string(), cols);
        }
        out
    }

    fn same_columns<T: CqlRow>(schema: &BTreeMap<String, Vec<String>>) {
        let cols = schema.get(T::TABLE).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(cols, T::COLUMNS, "{}: mapping and schema differ", T::TABLE);
    }

    #[test]
    fn every_mapping_names_its_tables_columns_in_schema_order() {
        let schema = schema_columns();
        same_columns::<SaleRow>(&schema);
        same_columns::<SaleLineRow>(&schema);
        same_columns::<StockMovementRow>(&schema);
        same_columns::<ByStoreHour>(&schema);
        same_columns::<StockLevelRow>(&schema);
        same_columns::<TerminalRollupRow>(&schema);
        same_columns::<DeviceHealthRow>(&schema);
        same_columns::<WatermarkRow>(&schema);
        same_columns::<BatchRow>(&schema);
        same_columns::<RejectedEventRow>(&schema);
        let dead: Vec<&str> = schema["dead_letters"].iter().map(String::as_str).collect();
        assert_eq!(dead, DEAD_LETTER_COLUMNS);
    }

    /// The staging tables hold (node, lsn, chunk) and then exactly the
    /// columns of the table they stage for.
    #[test]
    fn staging_tables_mirror_the_snapshot_tables() {
        let schema = schema_columns();
        let cols = |t: &str| -> Vec<&str> {
            schema
                .get(t)
                .map(|c| c.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        assert_eq!(cols("staged_levels"), staged_columns::<StockLevelRow>());
        assert_eq!(
            cols("staged_rollups"),
            staged_columns::<TerminalRollupRow>()
        );
    }

    /// The partition key of each mapping is its leading columns, as the
    /// schema declares them (rows of one partition share a batch).
    #[test]
    fn partition_columns_lead_each_mapping() {
        fn check<T: CqlRow>() {
            let key: Vec<String> = all_statements()
                .into_iter()
                .find(|s| {
                    s.starts_with(&format!(
                        "CREATE TABLE IF NOT EXISTS tillstream.{} (",
                        T::TABLE
                    ))
                })
                .and_then(|s| {
                    let (_, rest) = s.split_once("PRIMARY KEY ((")?;
                    let (cols, _) = rest.split_once(')')?;
                    Some(cols.split(',').map(|c| c.trim().to_string()).collect())
                })
                .unwrap_or_default();
            assert_eq!(key, T::COLUMNS[..T::PARTITION_COLUMNS], "{}", T::TABLE);
        }
        check::<SaleRow>();
        check::<SaleLineRow>();
        check::<StockMovementRow>();
        check::<ByStoreHour>();
        check::<StockLevelRow>();
        check::<TerminalRollupRow>();
        check::<DeviceHealthRow>();
        check::<WatermarkRow>();
        check::<BatchRow>();
        check::<RejectedEventRow>();
        check::<DeadLetterRow>();
    }

    #[test]
    fn statement_texts_name_the_keyspace_and_bind_what_they_filter() {
        let t = Texts::new("chain_eu");
        for s in t.all() {
            assert!(s.contains(" chain_eu."), "{s}");
            assert!(!s.contains("tillstream."), "{s}");
        }
        assert_eq!(
            insert::<WatermarkRow>("ks", true),
            "INSERT INTO ks.device_watermarks (device, seq, updated_at_us) VALUES (?, ?, ?) USING TIMESTAMP ?"
        );
        assert_eq!(
            select::<BatchRow>("ks", "device = ?"),
            "SELECT device, seq_bucket, seq, events, received_at_us, digest FROM ks.device_batches WHERE device = ?"
        );
        // Every read names the whole partition key it reads.
        assert!(t.levels_read.ends_with("WHERE store = ? AND bucket = ?"));
        assert!(
            t.batch_read
                .contains("device = ? AND seq_bucket = ? AND seq = ?")
        );
        assert!(t.journal_read.contains("node = ? AND segment = ?"));
    }
}
