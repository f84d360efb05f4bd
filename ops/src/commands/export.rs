//! `tillstream export`: one table's rows as CSV or JSON lines, streamed
//! (constant memory however large the table), read from one snapshot.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use tillstream_storage::catalog::Names;
use tillstream_storage::time::parse_ts;
use tillstream_storage::{RowRef, Table};

use crate::output::{Hex, RowWriter, bytes_of};

mod json_lines;

/// Write one table's rows as CSV or JSON lines (stop the server first: it
/// holds the store).
///
/// Byte fields (transaction ids, refused events, dead letters) are hex;
/// `*_us` times (UTC microseconds) get a readable twin column in CSV.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Data directory of the server.
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: super::store_args::StoreArgs,
    /// The table.
    #[arg(long, value_enum)]
    table: TableArg,
    /// Only rows stamped at or after this time (UTC, `2026-11-21` or
    /// `2026-11-21T10:00`); tables with an event time only.
    #[arg(long)]
    from: Option<String>,
    /// Only rows stamped before this time; tables with an event time only.
    #[arg(long)]
    to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Write to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// How rows are written: the names `query --format` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// RFC 4180 CSV, one header row.
    Csv,
    /// One JSON array of objects, streamed.
    Json,
    /// One JSON object per line (JSON lines).
    Jsonl,
}

/// The tables, by their CQL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum TableArg {
    Sales,
    SaleLines,
    StockMovements,
    StockLevels,
    TerminalRollups,
    DeviceHealth,
    DeviceWatermarks,
    DeviceBatches,
    RejectedEvents,
    DeadLetters,
}

impl TableArg {
    fn table(self) -> Table {
        match self {
            TableArg::Sales => Table::Sales,
            TableArg::SaleLines => Table::SaleLines,
            TableArg::StockMovements => Table::StockMovements,
            TableArg::StockLevels => Table::StockLevels,
            TableArg::TerminalRollups => Table::TerminalRollups,
            TableArg::DeviceHealth => Table::DeviceHealth,
            TableArg::DeviceWatermarks => Table::DeviceWatermarks,
            TableArg::DeviceBatches => Table::DeviceBatches,
            TableArg::RejectedEvents => Table::RejectedEvents,
            TableArg::DeadLetters => Table::DeadLetters,
        }
    }
}

/// A row's event time, for the tables that have one.
fn event_time(row: &RowRef<'_>) -> Option<i64> {
    Some(match row {
        RowRef::Sale(r) => r.ts_us,
        RowRef::SaleLine(r) => r.ts_us,
        RowRef::Movement(r) => r.ts_us,
        RowRef::Health(r) => r.ts_us,
        RowRef::Rejected(r) => r.ts_us,
        RowRef::DeadLetter(r) => r.ts_us,
        RowRef::Level(_) | RowRef::Rollup(_) | RowRef::Watermark(_) | RowRef::Batch(_) => {
            return None;
        }
    })
}

fn to_value(row: &RowRef<'_>) -> serde_json::Result<Value> {
    match row {
        RowRef::Sale(r) => serde_json::to_value(r),
        RowRef::SaleLine(r) => serde_json::to_value(r),
        RowRef::Movement(r) => serde_json::to_value(r),
        RowRef::Level(r) => serde_json::to_value(r),
        RowRef::Rollup(r) => serde_json::to_value(r),
        RowRef::Health(r) => serde_json::to_value(r),
        RowRef::Watermark(r) => serde_json::to_value(r),
        RowRef::Batch(r) => serde_json::to_value(r),
        RowRef::Rejected(r) => serde_json::to_value(r),
        RowRef::DeadLetter(r) => serde_json::to_value(r),
    }
}

/// Byte arrays as hex, and a currency code as its three letters.
fn readable(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, field) in m.iter_mut() {
                if let (true, Some(text)) = (k == "currency", ascii(field)) {
                    *field = Value::String(text);
                } else {
                    readable(field);
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            if let Some(bytes) = bytes_of(a) {
                *v = Value::String(Hex(&bytes).to_string());
            }
        }
        _ => {}
    }
}

fn ascii(v: &Value) -> Option<String> {
    let bytes = bytes_of(v.as_array()?).filter(|b| printable(b))?;
    Some(bytes.into_iter().map(char::from).collect())
}

/// Whether a currency's bytes are written as the letters they spell
/// (else as hex, as any byte array).
fn printable(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_graphic)
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let table = args.table.table();
    let bound = |s: &Option<String>, default: i64| -> anyhow::Result<i64> {
        match s {
            None => Ok(default),
            Some(s) => parse_ts(s).with_context(|| {
                format!("{s:?} is not a date like 2026-11-21 or 2026-11-21T10:00")
            }),
        }
    };
    let (from, to) = (bound(&args.from, i64::MIN)?, bound(&args.to, i64::MAX)?);
    let timed = !matches!(
        table,
        Table::StockLevels
            | Table::TerminalRollups
            | Table::DeviceWatermarks
            | Table::DeviceBatches
    );
    if !timed && (args.from.is_some() || args.to.is_some()) {
        bail!(
            "{} has no event time: export it whole (leave out --from and --to)",
            table.name()
        );
    }
    let store = super::open_store(&args.data_dir, &args.store)?;
    let catalog = store.catalog().context("reading the catalogue")?;
    let names = Names::new(&catalog);
    let sink: Box<dyn Write> = match &args.out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let sink = std::io::BufWriter::with_capacity(1 << 16, sink);
    let mut writer = match args.format {
        ExportFormat::Json => RowWriter::json_array(sink),
        ExportFormat::Csv => RowWriter::new(sink, true),
        ExportFormat::Jsonl => RowWriter::new(sink, false),
    };
    // A spinner on a terminal (indicatif draws nothing otherwise).
    let progress = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} rows")
    {
        progress.set_style(style);
    }
    progress.set_message(format!("exporting {}", table.name()));
    let mut failed: Option<anyhow::Error> = None;
    let mut rows = 0u64;
    store.scan_consistent(&[table], &mut |row| {
        if failed.is_some() || event_time(&row).is_some_and(|ts| ts < from || ts >= to) {
            return;
        }
        let written = match json_lines::write_direct(&mut writer, &names, &row) {
            Some(done) => done.map_err(anyhow::Error::from),
            None => to_value(&row)
                .map_err(anyhow::Error::from)
                .and_then(|mut v| {
                    readable(&mut v);
                    if let Some(obj) = v.as_object_mut() {
                        names.add_to(obj);
                    }
                    writer.write(&v).map_err(anyhow::Error::from)
                }),
        };
        match written {
            Ok(()) => {
                rows += 1;
                if rows.is_multiple_of(10_000) {
                    progress.set_position(rows);
                }
            }
            Err(e) => failed = Some(e),
        }
    })?;
    progress.finish_and_clear();
    let finished = match failed {
        Some(e) => Err(e),
        None => writer.finish().map_err(anyhow::Error::from),
    };
    if let Err(e) = finished {
        // A reader that stopped early (`| head`) is not an error.
        if !crate::output::broken_pipe(e.as_ref()) {
            return Err(e.context("writing the export"));
        }
    }
    crate::logging::say(format!("{rows} rows of {}", table.name()));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_hex_and_currencies_as_letters() {
        let mut v = serde_json::json!({"txn": [0, 255, 16], "currency": [71, 66, 80], "n": [1000]});
        readable(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"txn": "00ff10", "currency": "GBP", "n": [1000]})
        );
    }
}
