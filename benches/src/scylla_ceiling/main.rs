//! The cluster's ceiling for tillstream's rows: every row of a store a
//! run produced, written straight through the driver (the backend's own
//! prepared statements, partition batching and `max_in_flight`) at the
//! same consistency, as fast as the cluster takes them. No QUIC, no
//! engine, no journal: what `serve --store scylla` writes for the same
//! events, less its journal and checkpoints, so the ratio of the server's
//! events/s to this one is a conservative one (docs/operating/scylladb.md).
//!
//! ```sh
//! tillstream-loadgen --events 300000 --data-dir /tmp/run     # the rows
//! tillstream-scylla-ceiling --data-dir /tmp/run --scylla-nodes 127.0.0.1:9042,... \
//!     --replication datacenter1=3
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tillstream_embedded::EmbeddedStore;
use tillstream_scylla::{Consistency, ParseConsistency, ScyllaConfig, ScyllaStore, apply_schema};
use tillstream_storage::schema::SchemaOptions;
use tillstream_storage::{Query, RowRef, RowSet, Store, Table};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes the rows of an embedded store to a fresh keyspace as fast as the
/// cluster takes them, and prints events/s and rows/s as JSON.
#[derive(Debug, Parser)]
#[command(name = "tillstream-scylla-ceiling", version, about, long_about)]
struct Args {
    /// Data directory of a finished run (`tillstream-loadgen --data-dir`).
    #[arg(long)]
    data_dir: PathBuf,
    /// Contact points of the cluster.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9042")]
    scylla_nodes: Vec<String>,
    /// Replication of the fresh keyspace, `DC=FACTOR`.
    #[arg(long, default_value = "datacenter1=3")]
    replication: String,
    /// Consistency of the writes, as `serve --scylla-consistency`.
    #[arg(long, default_value = "local_quorum")]
    consistency: String,
    /// Requests in flight at most, as `serve --scylla-max-in-flight`.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Rows per commit call: about what one flush of the server writes.
    #[arg(long, default_value_t = 50_000)]
    chunk_rows: usize,
    /// Commit calls at once (each fans out to --max-in-flight requests).
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

fn rows_of(store: &EmbeddedStore) -> anyhow::Result<RowSet> {
    let mut all = RowSet::default();
    for table in Table::ALL {
        store.scan(table, &mut |r| match r {
            RowRef::Sale(x) => all.sales.push(*x),
            RowRef::SaleLine(x) => all.sale_lines.push(*x),
            RowRef::Movement(x) => all.stock_movements.push(*x),
            RowRef::Level(x) => all.stock_levels.push(*x),
            RowRef::Rollup(x) => all.terminal_rollups.push(*x),
            RowRef::Health(x) => all.device_health.push(*x),
            RowRef::Watermark(x) => all.watermarks.push(*x),
            RowRef::Batch(x) => all.batches.push(*x),
            RowRef::Rejected(x) => all.rejected.push(x.clone()),
            RowRef::DeadLetter(x) => all.dead_letters.push(x.clone()),
        })?;
    }
    Ok(all)
}

/// `rows` cut into sets of about `n` rows, every table's share in step.
fn chunks(rows: &RowSet, n: usize) -> Vec<RowSet> {
    let parts = rows.len().div_ceil(n.max(1)).max(1);
    let cut = |len: usize, i: usize| (len * i / parts, len * (i + 1) / parts);
    (0..parts)
        .map(|i| {
            let pick = |len: usize| {
                let (a, b) = cut(len, i);
                a..b
            };
            RowSet {
                sales: rows.sales[pick(rows.sales.len())].to_vec(),
                sale_lines: rows.sale_lines[pick(rows.sale_lines.len())].to_vec(),
                stock_movements: rows.stock_movements[pick(rows.stock_movements.len())].to_vec(),
                stock_levels: rows.stock_levels[pick(rows.stock_levels.len())].to_vec(),
                terminal_rollups: rows.terminal_rollups[pick(rows.terminal_rollups.len())].to_vec(),
                device_health: rows.device_health[pick(rows.device_health.len())].to_vec(),
                watermarks: rows.watermarks[pick(rows.watermarks.len())].to_vec(),
                batches: rows.batches[pick(rows.batches.len())].to_vec(),
                rejected: rows.rejected[pick(rows.rejected.len())].to_vec(),
                dead_letters: rows.dead_letters[pick(rows.dead_letters.len())].to_vec(),
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = EmbeddedStore::open(&args.data_dir.join("store"))
        .or_else(|_| EmbeddedStore::open(&args.data_dir))
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let rows = rows_of(&store)?;
    drop(store);
    let events: u64 = rows.batches.iter().map(|b| u64::from(b.events)).sum();
    anyhow::ensure!(events > 0, "the store holds no batch");
    let (dc, rf) = args
        .replication
        .split_once('=')
        .context("--replication is DC=FACTOR")?;
    let mut cfg = ScyllaConfig::new(args.scylla_nodes.clone());
    cfg.keyspace = format!("tillstream_ceiling_{}", std::process::id());
    cfg.node_id = "ceiling".into();
    cfg.consistency = Consistency::parse_level(&args.consistency).map_err(anyhow::Error::msg)?;
    cfg.max_in_flight = args.max_in_flight;
    apply_schema(
        &cfg,
        &SchemaOptions {
            keyspace: cfg.keyspace.clone(),
            replication: format!("{{'class': 'NetworkTopologyStrategy', '{dc}': {rf}}}"),
            ttl_days: None,
        },
    )?;
    let cluster = ScyllaStore::connect(cfg.clone())?;
    let sets = chunks(&rows, args.chunk_rows);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.writers.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(set) = sets.get(i) else {
                            return Ok(());
                        };
                        cluster.commit(set)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    drop(cluster);
    let report = serde_json::json!({
        "events": events,
        "rows": rows.len(),
        "seconds": secs,
        "events_per_s": events as f64 / secs,
        "rows_per_s": rows.len() as f64 / secs,
        "consistency": args.consistency,
        "replication": args.replication,
        "keyspace": cfg.keyspace,
    });
    println!("{report}");
    Ok(())
}
