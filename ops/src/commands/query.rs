//! `tillstream query`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_storage::time::parse_ts;
use tillstream_storage::{Bucket, TopBy};

use crate::output::{Format, print_rows};

/// Read the tables of a stopped server's data directory.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Data directory of the server.
    #[arg(
        long,
        default_value = "./data",
        env = "TILLSTREAM_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    #[command(flatten)]
    store: super::store_args::StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    what: What,
}

/// A time range; dates are UTC, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]`.
#[derive(Debug, clap::Args)]
struct Range {
    /// Start (inclusive); default: the beginning of time.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive); default: the end of time.
    #[arg(long)]
    to: Option<String>,
}

impl Range {
    fn bounds(&self) -> anyhow::Result<(i64, i64)> {
        let parse = |s: &Option<String>, default: i64| -> anyhow::Result<i64> {
            match s {
                None => Ok(default),
                Some(s) => parse_ts(s).with_context(|| {
                    format!("{s:?} is not a date like 2011-02-20 or 2011-02-20T11:39")
                }),
            }
        };
        Ok((parse(&self.from, 0)?, parse(&self.to, i64::MAX)?))
    }
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Sales and refunds bucketed by hour or day.
    Sales {
        /// Store id; all stores when left out.
        #[arg(long)]
        store: Option<u32>,
        #[command(flatten)]
        range: Range,
        /// Bucket width.
        #[arg(long, value_enum, default_value_t = BucketArg::Day)]
        bucket: BucketArg,
    },
    /// The best-selling SKUs by quantity or revenue (net of refunds).
    TopSkus {
        /// Store id; all stores (summed per SKU) when left out.
        #[arg(long)]
        store: Option<u32>,
        #[command(flatten)]
        range: Range,
        /// Ranking.
        #[arg(long, value_enum, default_value_t = ByArg::Revenue)]
        by: ByArg,
        /// Rows.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// A SKU's stock movements, each with the level after it.
    StockHistory {
        /// Store id.
        #[arg(long)]
        store: u32,
        /// SKU.
        #[arg(long)]
        sku: u64,
        #[command(flatten)]
        range: Range,
    },
    /// SKUs whose current level is below a threshold, lowest first.
    LowStock {
        /// Store id; all stores when left out.
        #[arg(long)]
        store: Option<u32>,
        /// Threshold (strictly below).
        #[arg(long, default_value_t = 5)]
        below: i64,
    },
    /// Every device's highest durable batch seq.
    Watermarks,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BucketArg {
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ByArg {
    Quantity,
    Revenue,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&args.data_dir, &args.store)?;
    let rows: Vec<serde_json::Value> = match args.what {
        What::Sales {
            store: s,
            range,
            bucket,
        } => {
            let (from, to) = range.bounds()?;
            let b = match bucket {
                BucketArg::Hour => Bucket::Hour,
                BucketArg::Day => Bucket::Day,
            };
            to_values(store.sales_by_time(s, from, to, b)?)?
        }
        What::TopSkus {
            store: s,
            range,
            by,
            limit,
        } => {
            let (from, to) = range.bounds()?;
            let by = match by {
                ByArg::Quantity => TopBy::Quantity,
                ByArg::Revenue => TopBy::Revenue,
            };
            to_values(store.top_skus(s, from, to, by, limit)?)?
        }
        What::StockHistory {
            store: s,
            sku,
            range,
        } => {
            let (from, to) = range.bounds()?;
            to_values(store.stock_history(s, sku, from, to)?)?
        }
        What::LowStock { store: s, below } => to_values(store.low_stock(s, below)?)?,
        What::Watermarks => to_values(store.watermarks()?)?,
    };
    print_rows(&rows, args.format, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

fn to_values<T: serde::Serialize>(rows: Vec<T>) -> anyhow::Result<Vec<serde_json::Value>> {
    rows.into_iter()
        .map(|r| serde_json::to_value(r).context("encoding a row"))
        .collect()
}
