//! `tillstream query`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_engine::questions::{self, Question, QuestionError};
use tillstream_storage::{Bucket, TopBy};

use crate::output::{Format, print_rows};

/// Read the tables: of a stopped server's data directory, of a ScyllaDB
/// cluster (`--store scylla`), or of a running server through its HTTP API
/// (`--server-http`). The answers are the same JSON wherever they come
/// from.
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
    /// Ask a running server instead (`http://127.0.0.1:7401`): its query
    /// API answers from its live tables.
    #[arg(long, env = "TILLSTREAM_SERVER_HTTP", global = true)]
    server_http: Option<String>,
    /// Bearer token for --server-http, of role analyst or admin
    /// (`tillstream token issue --role analyst`).
    #[arg(
        long,
        env = "TILLSTREAM_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    api_token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    what: What,
}

/// A time range (UTC): `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` or RFC 3339.
#[derive(Debug, clap::Args)]
struct Range {
    /// Start (inclusive); default: the beginning of time.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive); default: the end of time.
    #[arg(long)]
    to: Option<String>,
}

impl From<Range> for questions::Range {
    fn from(r: Range) -> Self {
        questions::Range {
            from: r.from,
            to: r.to,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Sales and refunds bucketed by minute, hour or day.
    Sales {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        range: Range,
        /// Bucket width.
        #[arg(long, value_enum, default_value_t = BucketArg::Day)]
        bucket: BucketArg,
    },
    /// The best-selling SKUs by quantity or revenue (net of refunds).
    TopSkus {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores (summed per SKU, with no store) when left out.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        range: Range,
        /// Ranking.
        #[arg(long, value_enum, default_value_t = ByArg::Revenue)]
        by: ByArg,
        /// Rows.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// A SKU's stock movements in event-time order, each with the level
    /// as of its time (the latest count at or before it plus the
    /// movements between): a movement that arrives late changes the
    /// levels of the rows after it.
    StockHistory {
        /// Store: its id, or its name in the catalogue ("United Kingdom").
        #[arg(long)]
        store: String,
        /// SKU: the catalogue's code for it (85123A) or its id. `code:` or
        /// `id:` in front settles a text that is both.
        #[arg(long)]
        sku: String,
        #[command(flatten)]
        range: Range,
    },
    /// SKUs whose current level is below a threshold, lowest first.
    LowStock {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        /// Threshold (strictly below); may be negative (`--below -125`).
        #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
        below: i64,
    },
    /// Every device's highest durable batch seq.
    Watermarks,
    /// Per-terminal sales, refunds and money from the rollups, and the last
    /// minute each was active.
    Terminals {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        range: Range,
    },
    /// Per-device health: reports, last seen, battery, temperature,
    /// signal, queue depth.
    Health {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        range: Range,
    },
    /// SKUs with stock and no sale in the last N days, most stock first.
    DeadStock {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        /// Days without a sale.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// SKUs most often bought together (one sale is one basket, refunds
    /// left out): baskets, support, confidence (of B given A) and lift.
    BasketPairs {
        /// Store: its id, or its name in the catalogue ("United Kingdom");
        /// all stores when left out.
        #[arg(long)]
        store: Option<String>,
        #[command(flatten)]
        range: Range,
        /// Pairs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Least baskets a pair must be in.
        #[arg(long, default_value_t = 2)]
        min_baskets: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BucketArg {
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ByArg {
    Quantity,
    Revenue,
}

impl What {
    fn question(self) -> Question {
        match self {
            What::Sales {
                store,
                range,
                bucket,
            } => Question::Sales {
                store,
                range: range.into(),
                bucket: match bucket {
                    BucketArg::Minute => Bucket::Minute,
                    BucketArg::Hour => Bucket::Hour,
                    BucketArg::Day => Bucket::Day,
                },
            },
            What::TopSkus {
                store,
                range,
                by,
                limit,
            } => Question::TopSkus {
                store,
                range: range.into(),
                by: match by {
                    ByArg::Quantity => TopBy::Quantity,
                    ByArg::Revenue => TopBy::Revenue,
                },
                limit,
            },
            What::StockHistory { store, sku, range } => Question::StockHistory {
                store,
                sku,
                range: range.into(),
            },
            What::LowStock { store, below } => Question::LowStock { store, below },
            What::Watermarks => Question::Watermarks,
            What::Terminals { store, range } => Question::Terminals {
                store,
                range: range.into(),
            },
            What::Health { store, range } => Question::Health {
                store,
                range: range.into(),
            },
            What::DeadStock { store, days } => Question::DeadStock { store, days },
            What::BasketPairs {
                store,
                range,
                limit,
                min_baskets,
            } => Question::BasketPairs {
                store,
                range: range.into(),
                limit,
                min_baskets,
            },
        }
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let question = args.what.question();
    let rows = match &args.server_http {
        Some(base) => ask_server(base, args.api_token.as_deref(), &question)?,
        None => {
            let store = super::open_store(&args.data_dir, &args.store)?;
            question.answer(store.as_ref()).map_err(|e| match e {
                QuestionError::Bad(why) => anyhow::anyhow!(why),
                QuestionError::Store(e) => anyhow::Error::new(e).context("reading the store"),
            })?
        }
    };
    match print_rows(&rows, args.format, &mut std::io::stdout().lock()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if crate::output::broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing the answer")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// `GET <base>/api/v1/...` with the bearer token.
fn ask_server(
    base: &str,
    token: Option<&str>,
    question: &Question,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let url = format!(
        "{}{}",
        base.trim_end_matches('/'),
        question.path_and_query()
    );
    let answer = crate::api::call(&url, token, None)?;
    serde_json::from_value(answer).with_context(|| format!("the answer of {url} is not an array"))
}
