//! Replay of a real retail export (`online-retail-sample.csv`, UCI "Online
//! Retail"): one invoice is one sale (or a refund, for cancellations and
//! negative quantities), one country is one store, the invoice's tills are
//! picked by hashing the invoice number, a StockCode becomes a SKU by
//! hashing it, and UnitPrice (GBP, decimal) becomes pence exactly.
//!
//! Rows that cannot be parsed are counted by reason and reported, never
//! silently dropped. Prices in the export include VAT, so lines carry no
//! separate tax.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use tillstream_protocol::{Event, Refund, Sale, SaleLine, Tender, TenderMethod};

use crate::generator::{CURRENCY, device_id};
use crate::report::CsvInfo;
use crate::workload::{Batcher, Workload};

/// FNV-1a, 64 bits: a stable hash for SKUs, tills and transaction ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The SKU of a StockCode (case-insensitive, trimmed).
pub fn sku_of(stock_code: &str) -> u64 {
    tillstream_storage::catalog::sku_of(stock_code)
}

/// A decimal price in pounds to pence, exactly (half up past two decimals).
pub fn pence(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let digits: Vec<i64> = frac.bytes().map(|b| i64::from(b - b'0')).collect();
    let cents = digits.first().copied().unwrap_or(0) * 10 + digits.get(1).copied().unwrap_or(0);
    let round = i64::from(digits.get(2).copied().unwrap_or(0) >= 5);
    let v = whole.checked_mul(100)?.checked_add(cents + round)?;
    Some(if neg { -v } else { v })
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `12/06/2010 10:08` or `2/20/11 11:39` (month/day/year, UTC) to µs.
pub fn parse_date(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut dp = date.split('/');
    let (m, d, y) = (dp.next()?, dp.next()?, dp.next()?);
    if dp.next().is_some() {
        return None;
    }
    let (m, d, mut y): (i64, i64, i64) = (m.parse().ok()?, d.parse().ok()?, y.parse().ok()?);
    if y < 100 {
        y += 2000;
    }
    let (h, min) = time.trim().split_once(':')?;
    let (h, min): (i64, i64) = (h.parse().ok()?, min.parse().ok()?);
    let month_days = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] || h > 23 || min > 59 {
        return None;
    }
    if h < 0 || min < 0 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3_600 + min * 60;
    Some(secs * 1_000_000)
}

/// One parsed row.
#[derive(Debug, Clone)]
struct Row {
    invoice: String,
    line: SaleLine,
    ts_us: i64,
    customer: Option<u64>,
    country: String,
}

/// Column positions, found by header name.
struct Columns {
    invoice: usize,
    stock: usize,
    quantity: usize,
    date: usize,
    price: usize,
    customer: usize,
    country: usize,
    description: Option<usize>,
}

impl Columns {
    fn find(headers: &csv::StringRecord) -> anyhow::Result<Self> {
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .with_context(|| format!("the CSV has no {name} column"))
        };
        Ok(Self {
            invoice: col("InvoiceNo")?,
            stock: col("StockCode")?,
            quantity: col("Quantity")?,
            date: col("InvoiceDate")?,
            price: col("UnitPrice")?,
            customer: col("CustomerID")?,
            country: col("Country")?,
            description: headers.iter().position(|h| h.trim() == "Description"),
        })
    }

    fn parse(&self, r: &csv::StringRecord) -> Result<Row, &'static str> {
        let get = |i: usize| r.get(i).map(str::trim).ok_or("short_row");
        let invoice = get(self.invoice)?;
        if invoice.is_empty() {
            return Err("missing_invoice");
        }
        let stock = get(self.stock)?;
        if stock.is_empty() {
            return Err("missing_stock_code");
        }
        let quantity: i32 = get(self.quantity)?.parse().map_err(|_| "bad_quantity")?;
        if quantity == 0 {
            return Err("zero_quantity");
        }
        let ts_us = parse_date(get(self.date)?).ok_or("bad_date")?;
        let unit_price = pence(get(self.price)?).ok_or("bad_price")?;
        if unit_price < 0 {
            return Err("negative_price");
        }
        let customer = match get(self.customer)? {
            "" | "NA" => None,
            c => Some(
                c.split('.')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or("bad_customer")?,
            ),
        };
        let country = get(self.country)?;
        if country.is_empty() {
            return Err("missing_country");
        }
        Ok(Row {
            invoice: invoice.to_owned(),
            line: SaleLine {
                sku: sku_of(stock),
                quantity,
                unit_price,
                discount: 0,
                tax: 0,
            },
            ts_us,
            customer,
            country: country.to_owned(),
        })
    }
}

/// Reads `path` and prepares one sale or refund per invoice, cut into
/// batches of `batch_size` per till (or fewer, once `max_wait` events of
/// the replay went by since their first), `tills` tills per country.
pub fn build(
    path: &Path,
    batch_size: u32,
    max_wait: Option<u64>,
    tills: u32,
) -> anyhow::Result<(Workload, CsvInfo)> {
    if tills == 0 || tills > crate::generator::MAX_DEVICES_PER_STORE {
        bail!("--terminals-per-store must be between 1 and 65536 for a replay");
    }
    let mut rd = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let cols = Columns::find(rd.headers().context("reading the CSV header")?)?;
    let mut info = CsvInfo {
        file: path.display().to_string(),
        ..CsvInfo::default()
    };
    let mut invoices: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut names: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = rd.position().line();
        match rd.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                info.rows += 1;
                *info.bad_rows.entry("csv_error".into()).or_default() += 1;
                tracing::warn!(line, error = %e, "unreadable CSV row");
                if e.is_io_error() {
                    return Err(e).context("reading the CSV");
                }
                continue;
            }
        }
        info.rows += 1;
        match cols.parse(&record) {
            Ok(row) => {
                info.used_rows += 1;
                let text = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").trim();
                names.entry(row.line.sku).or_insert_with(|| {
                    (
                        text(Some(cols.stock)).to_owned(),
                        text(cols.description).to_owned(),
                    )
                });
                invoices.entry(row.invoice.clone()).or_default().push(row);
            }
            Err(reason) => {
                *info.bad_rows.entry(reason.into()).or_default() += 1;
                tracing::debug!(line, reason, "CSV row skipped");
            }
        }
    }
    let countries: BTreeSet<&str> = invoices
        .values()
        .flatten()
        .map(|r| r.country.as_str())
        .collect();
    let store_of: BTreeMap<&str, u32> =
        countries.iter().zip(1u32..).map(|(c, s)| (*c, s)).collect();
    info.stores = store_of.len() as u64;
    info.invoices = invoices.len() as u64;
    info.catalog = tillstream_storage::catalog::Catalog {
        products: names
            .into_iter()
            .map(|(sku, (code, name))| tillstream_storage::catalog::Product {
                sku,
                code,
                name,
                category: String::new(),
            })
            .collect(),
        stores: store_of
            .iter()
            .map(|(country, store)| tillstream_storage::catalog::StoreInfo {
                store: *store,
                name: (*country).to_owned(),
                country: (*country).to_owned(),
            })
            .collect(),
    };

    // Devices: `tills` per store; events in time order across the chain.
    let devices: Vec<(u64, u32, tillstream_auth::Role)> = (1..=store_of.len() as u32)
        .flat_map(|s| {
            (0..tills).map(move |t| (device_id(s, t), s, tillstream_auth::Role::Terminal))
        })
        .collect();
    let mut events: Vec<(i64, usize, Event)> = invoices
        .iter()
        .filter_map(|(inv, rows)| {
            let first = rows.first()?;
            let store = *store_of.get(first.country.as_str())?;
            let till = (fnv1a(inv.as_bytes()) % u64::from(tills)) as u32;
            let d = (store as usize - 1) * tills as usize + till as usize;
            Some((first.ts_us, d, invoice_event(inv, rows, store, till)))
        })
        .collect();
    events.sort_by_key(|(ts, d, _)| (*ts, *d));
    let mut batcher = Batcher::new(devices, batch_size).max_wait(max_wait);
    for (_, d, ev) in events {
        batcher.push(d, ev)?;
    }
    Ok((batcher.finish()?, info))
}

/// The sale (or refund, for a cancellation or returned goods) of one invoice.
fn invoice_event(invoice: &str, rows: &[Row], store: u32, terminal: u32) -> Event {
    let refund = invoice.starts_with('C') || rows.iter().all(|r| r.line.quantity < 0);
    let lines: Vec<SaleLine> = rows
        .iter()
        .map(|r| SaleLine {
            quantity: r.line.quantity.saturating_abs(),
            ..r.line
        })
        .collect();
    let total: i64 = lines.iter().map(SaleLine::amount).sum();
    let h = fnv1a(invoice.as_bytes());
    let mut txn = [0u8; 16];
    txn[..8].copy_from_slice(&h.to_le_bytes());
    txn[8..].copy_from_slice(&fnv1a(&h.to_le_bytes()).to_le_bytes());
    let ts_us = rows.first().map_or(0, |r| r.ts_us);
    let tenders = vec![Tender {
        method: TenderMethod::Card,
        amount: total,
        tip: 0,
    }];
    if refund {
        return Event::Refund(Refund {
            ts_us,
            store,
            terminal,
            operator: 0,
            txn,
            original_txn: None,
            currency: CURRENCY,
            lines,
            tenders,
        });
    }
    Event::Sale(Sale {
        ts_us,
        store,
        terminal,
        operator: 0,
        txn,
        currency: CURRENCY,
        lines,
        tenders,
        customer: rows.iter().find_map(|r| r.customer),
    })
}

#[cfg(test)]
mod tests;
