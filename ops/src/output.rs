//! Rows as an aligned table, CSV or JSON. Rows are JSON objects; nested
//! objects are flattened into `parent.child` columns, and fields named
//! `*_us` (UTC microseconds) get a readable `*` twin in tables and CSV.

use std::io::Write;

use serde_json::{Map, Value};
use tillstream_storage::time::format_ts;

/// Output format of `tillstream query`. `export` offers the same names
/// but a terminal table.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line (JSON lines).
    Jsonl,
}

pub(crate) fn print_rows(
    rows: &[Value],
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            return writeln!(out);
        }
        Format::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut *out, row)?;
                writeln!(out)?;
            }
            return Ok(());
        }
        Format::Table | Format::Csv => {}
    }
    let flat: Vec<Vec<(String, String)>> = rows.iter().map(flatten).collect();
    let mut columns: Vec<String> = Vec::new();
    for row in &flat {
        for (k, _) in row {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let cell = |row: &[(String, String)], col: &str| -> String {
        row.iter()
            .find(|(k, _)| k == col)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    match format {
        // No rows, no columns: an empty answer, not one empty record.
        Format::Csv if flat.is_empty() => {}
        Format::Csv => {
            let mut w = csv_writer(&mut *out);
            w.write_record(&columns)?;
            for row in &flat {
                w.write_record(columns.iter().map(|c| cell(row, c)))?;
            }
            w.flush()?;
        }
        Format::Table | Format::Json | Format::Jsonl => {
            if flat.is_empty() {
                return writeln!(out, "(no rows)");
            }
            let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
            for row in &flat {
                for (i, c) in columns.iter().enumerate() {
                    widths[i] = widths[i].max(cell(row, c).len());
                }
            }
            let line = |vals: Vec<String>| -> String {
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(columns.clone()))?;
            for row in &flat {
                writeln!(
                    out,
                    "{}",
                    line(columns.iter().map(|c| cell(row, c)).collect())
                )?;
            }
            writeln!(out, "({} rows)", flat.len())?;
        }
    }
    Ok(())
}

fn flatten(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Value::Object(m) = v {
        flatten_into("", m, &mut out);
    } else {
        out.push(("value".into(), scalar(v)));
    }
    out
}

fn flatten_into(prefix: &str, m: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (k, v) in m {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => flatten_into(&name, inner, out),
            _ => {
                if let (Some(base), Some(us)) = (name.strip_suffix("_us"), v.as_i64())
                    && us != i64::MAX
                    && us > 0
                {
                    out.push((base.to_string(), format_ts(us)));
                }
                out.push((name, scalar(v)));
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        // 16-byte ids print as hex.
        Value::Array(a) if a.len() == 16 => match bytes_of(a) {
            Some(b) => Hex(&b).to_string(),
            None => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// A count with thousands separators (`1,234,567`), rounded, never
/// negative: what `top` shows of shards' entities.
pub(crate) fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .filter_map(|g| std::str::from_utf8(g).ok())
        .collect();
    groups.join(",")
}

/// Whether writing failed because the reader went away (`| head`): not an
/// error of the command's. CSV wraps the `io::Error` in its own, which
/// `csv`'s `From` wraps again as an `io::Error` of kind `Other`.
pub(crate) fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && broken_pipe(inner)
            {
                return true;
            }
        }
        if let Some(csv::ErrorKind::Io(io)) = e.downcast_ref::<csv::Error>().map(csv::Error::kind)
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The bytes an array of numbers holds, if each is under 256 (how
/// serde_json gives a byte array).
pub(crate) fn bytes_of(a: &[Value]) -> Option<Vec<u8>> {
    a.iter()
        .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

/// Bytes as two lowercase hex digits each.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Rows written one at a time, as they are read: CSV (the first row's
/// columns make the header) or JSON lines.
pub(crate) enum RowWriter<W: Write> {
    /// CSV; the header is written with the first row.
    Csv {
        out: Box<csv::Writer<W>>,
        columns: Option<Vec<String>>,
    },
    /// One JSON object a line.
    Json(W),
    /// One JSON array, written a row at a time: `[` before the first,
    /// `,` between, `]` at [`RowWriter::finish`].
    JsonArray { out: W, rows: u64 },
}

/// RFC 4180 with `\n` line ends, quoting only where needed.
fn csv_writer<W: Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out)
}

impl<W: Write> RowWriter<W> {
    pub(crate) fn new(out: W, csv: bool) -> Self {
        if csv {
            RowWriter::Csv {
                out: Box::new(csv_writer(out)),
                columns: None,
            }
        } else {
            RowWriter::Json(out)
        }
    }

    /// A writer of one JSON array.
    pub(crate) fn json_array(out: W) -> Self {
        RowWriter::JsonArray { out, rows: 0 }
    }

    pub(crate) fn write(&mut self, row: &Value) -> std::io::Result<()> {
        match self {
            RowWriter::Json(out) => {
                serde_json::to_writer(&mut *out, row)?;
                writeln!(out)
            }
            RowWriter::JsonArray { out, rows } => {
                out.write_all(if *rows == 0 { b"[\n" } else { b",\n" })?;
                *rows += 1;
                serde_json::to_writer(&mut *out, row).map_err(std::io::Error::from)
            }
            RowWriter::Csv { out, columns } => {
                let flat = flatten(row);
                let columns = match columns {
                    Some(c) => c,
                    None => {
                        let names: Vec<String> = flat.iter().map(|(k, _)| k.clone()).collect();
                        out.write_record(&names)?;
                        columns.insert(names)
                    }
                };
                out.write_record(columns.iter().map(|c| {
                    flat.iter()
                        .find(|(k, _)| k == c)
                        .map_or("", |(_, v)| v.as_str())
                }))?;
                Ok(())
            }
        }
    }

    /// Writes `row` as one JSON line straight from its type, where this
    /// writer writes JSON lines (`None` for CSV, whose columns come from
    /// a row's `Value`). Only for rows whose `Value` would be written as
    /// it is: no field a caller rewrites first.
    pub(crate) fn write_json_line<T: serde::Serialize>(
        &mut self,
        row: &T,
    ) -> Option<std::io::Result<()>> {
        match self {
            RowWriter::Json(out) => Some(
                serde_json::to_writer(&mut *out, row)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out)),
            ),
            RowWriter::JsonArray { out, rows } => {
                let sep: &[u8] = if *rows == 0 { b"[\n" } else { b",\n" };
                *rows += 1;
                Some(
                    out.write_all(sep)
                        .and_then(|()| serde_json::to_writer(&mut *out, row).map_err(Into::into)),
                )
            }
            RowWriter::Csv { .. } => None,
        }
    }

    pub(crate) fn finish(self) -> std::io::Result<()> {
        match self {
            RowWriter::Json(mut out) => out.flush(),
            RowWriter::JsonArray { mut out, rows } => {
                out.write_all(if rows == 0 { b"[]\n" } else { b"\n]\n" })?;
                out.flush()
            }
            RowWriter::Csv { mut out, .. } => out.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_reader_that_went_away_is_told_from_a_failure_in_every_format() {
        let rows = vec![serde_json::json!({"a": 1})];
        for format in [Format::Table, Format::Csv, Format::Json] {
            let e = print_rows(&rows, format, &mut Gone).err();
            assert!(
                e.as_ref().is_some_and(|e| broken_pipe(e)),
                "{format:?}: {e:?}"
            );
        }
        let other = std::io::Error::other("disk full");
        assert!(!broken_pipe(&other));
    }

    #[test]
    fn query_and_export_write_json_and_json_lines_alike() -> std::io::Result<()> {
        let rows = vec![serde_json::json!({"a": 1}), serde_json::json!({"a": 2})];
        let mut lines = Vec::new();
        print_rows(&rows, Format::Jsonl, &mut lines)?;
        assert_eq!(String::from_utf8_lossy(&lines), "{\"a\":1}\n{\"a\":2}\n");
        let mut array = RowWriter::json_array(Vec::new());
        for r in &rows {
            array.write(r)?;
        }
        let RowWriter::JsonArray { out, .. } = &array else {
            return Err(std::io::Error::other("not an array writer"));
        };
        let text = String::from_utf8_lossy(out).into_owned() + "\n]\n";
        let parsed: Vec<Value> = serde_json::from_str(&text)?;
        assert_eq!(parsed, rows);
        let mut empty = Vec::new();
        RowWriter::json_array(&mut empty).finish()?;
        assert_eq!(empty, b"[]\n");
        Ok(())
    }

    #[test]
    fn an_empty_csv_answer_is_empty() -> std::io::Result<()> {
        let mut out = Vec::new();
        print_rows(&[], Format::Csv, &mut out)?;
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
        Ok(())
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        let shown: Vec<String> = [0.0, 7.4, 999.0, 1_000.0, 1_234_567.5, -3.0]
            .into_iter()
            .map(grouped)
            .collect();
        assert_eq!(shown, ["0", "7", "999", "1,000", "1,234,568", "0"]);
    }

    #[test]
    fn csv_quotes_and_flattens() -> std::io::Result<()> {
        let rows =
            vec![serde_json::json!({"a": 1, "k": {"device": 2}, "s": "x,y", "ts_us": 1_000_000})];
        let mut out = Vec::new();
        print_rows(&rows, Format::Csv, &mut out)?;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text,
            "a,k.device,s,ts,ts_us\n1,2,\"x,y\",1970-01-01T00:00:01Z,1000000\n"
        );
        Ok(())
    }

    #[test]
    fn table_aligns_columns() -> std::io::Result<()> {
        let rows = vec![
            serde_json::json!({"sku": 1, "n": 100}),
            serde_json::json!({"sku": 22, "n": 3}),
        ];
        let mut out = Vec::new();
        print_rows(&rows, Format::Table, &mut out)?;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("sku  n\n1    100\n22   3\n"), "{text}");
        assert!(text.ends_with("(2 rows)\n"));
        Ok(())
    }
}
