//! JSON lines straight from the rows' types, the same bytes as through
//! their `Value` and `readable` (`export.rs`).
//!
//! Why: building each row's `serde_json::Value` (a map whose keys are
//! hashed with SipHash, every field boxed) was most of an export's time:
//! 8.9 s for the 10.9 M stock movements of a 4 M-event store, 7 s for
//! its 3.5 M sales. Rows with no byte field are written as they are; a
//! sale's two byte fields are written as `readable` leaves them. Refused
//! events and dead letters, rare, keep the `Value` path, as does CSV.
//! Rows with a store or a SKU get the catalogue's names after their own
//! fields, as `Names::add_to` puts them in a `Value`.

use std::fmt;
use std::io::Write;

use serde::ser::{Serialize, SerializeStruct, Serializer};
use tillstream_storage::catalog::Names;
use tillstream_storage::{RowRef, SaleRow};

use crate::output::{Hex, RowWriter};

/// Writes `row` as one JSON line without its `Value`; `None` for a row
/// that takes the `Value` path, and for CSV.
pub(super) fn write_direct<W: Write>(
    writer: &mut RowWriter<W>,
    names: &Names<'_>,
    row: &RowRef<'_>,
) -> Option<std::io::Result<()>> {
    let product = |store, sku| {
        let (sku_code, sku_name) = names.product(sku);
        ProductNames {
            sku_code,
            sku_name,
            store_name: names.store(store),
        }
    };
    let store = |store| StoreName {
        store_name: names.store(store),
    };
    match row {
        RowRef::Sale(r) => writer.write_json_line(&Named {
            row: ReadableSale(r),
            names: store(r.store),
        }),
        RowRef::SaleLine(r) => writer.write_json_line(&Named {
            row: r,
            names: product(r.store, r.sku),
        }),
        RowRef::Movement(r) => writer.write_json_line(&Named {
            row: r,
            names: product(r.store, r.sku),
        }),
        RowRef::Level(r) => writer.write_json_line(&Named {
            row: r,
            names: product(r.store, r.sku),
        }),
        RowRef::Rollup(r) => writer.write_json_line(&Named {
            row: r,
            names: store(r.store),
        }),
        RowRef::Health(r) => writer.write_json_line(&Named {
            row: r,
            names: store(r.store),
        }),
        RowRef::Watermark(r) => writer.write_json_line(r),
        RowRef::Batch(r) => writer.write_json_line(r),
        RowRef::Rejected(_) | RowRef::DeadLetter(_) => None,
    }
}

/// A row, then the names of its ids.
#[derive(serde::Serialize)]
struct Named<R, N> {
    #[serde(flatten)]
    row: R,
    #[serde(flatten)]
    names: N,
}

/// The catalogue's names of a row's SKU and store.
#[derive(serde::Serialize)]
struct ProductNames<'a> {
    sku_code: &'a str,
    sku_name: &'a str,
    store_name: &'a str,
}

/// The catalogue's name of a row's store.
#[derive(serde::Serialize)]
struct StoreName<'a> {
    store_name: &'a str,
}

/// A sale as `readable` leaves its `Value`: the transaction id in hex,
/// the currency as its letters (in hex where they are not printable
/// ASCII). Its fields in `SaleRow`'s order: the test below compares the
/// two paths, so a field added to `SaleRow` and not here fails it.
struct ReadableSale<'a>(&'a SaleRow);

impl Serialize for ReadableSale<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_struct("SaleRow", 18)?;
        m.serialize_field("store", &r.store)?;
        m.serialize_field("ts_us", &r.ts_us)?;
        m.serialize_field("key", &r.key)?;
        m.serialize_field("kind", &r.kind)?;
        m.serialize_field("terminal", &r.terminal)?;
        m.serialize_field("operator", &r.operator)?;
        m.serialize_field("txn", &HexStr(&r.txn))?;
        if super::printable(&r.currency) {
            m.serialize_field("currency", &Letters(&r.currency))?;
        } else {
            m.serialize_field("currency", &HexStr(&r.currency))?;
        }
        m.serialize_field("lines", &r.lines)?;
        m.serialize_field("items", &r.items)?;
        m.serialize_field("gross_minor", &r.gross)?;
        m.serialize_field("discount_minor", &r.discount)?;
        m.serialize_field("tax_minor", &r.tax)?;
        m.serialize_field("tendered_minor", &r.tendered)?;
        m.serialize_field("tip_minor", &r.tip)?;
        m.serialize_field("tenders", &r.tenders)?;
        m.serialize_field("tender_methods", &r.tender_methods)?;
        m.serialize_field("customer", &r.customer.map(OptionalId))?;
        m.end()
    }
}

/// A 64-bit id as `tillstream_storage::json` writes it: a string.
struct OptionalId(u64);

impl Serialize for OptionalId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        tillstream_storage::json::id(&self.0, s)
    }
}

/// Bytes as a JSON string of their hex (`output::Hex`).
struct HexStr<'a>(&'a [u8]);

impl Serialize for HexStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Hex(self.0))
    }
}

/// Printable ASCII bytes as the string they spell.
struct Letters<'a>(&'a [u8]);

impl fmt::Display for Letters<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|&b| write!(f, "{}", char::from(b)))
    }
}

impl Serialize for Letters<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{readable, to_value};
    use super::*;
    use tillstream_storage::catalog::{Catalog, Product, StoreInfo};
    use tillstream_storage::{
        BatchRow, DeviceHealthRow, EventKey, MovementReason, SaleKind, SaleLineRow, StockLevelRow,
        StockMovementRow, TerminalRollupRow, WatermarkRow,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The line a row gets through its `Value`, as `export` wrote every
    /// row before.
    /// A catalogue naming the SKU and the store of the rows below, so
    /// that both paths write names (and an unnamed SKU, 9, empty ones).
    fn catalog() -> Catalog {
        Catalog {
            products: vec![Product {
                sku: 1 << 40,
                code: "85123A".into(),
                name: "WHITE \"HANGING\" HEART".into(),
                category: String::new(),
            }],
            stores: vec![StoreInfo {
                store: 4,
                name: "United Kingdom".into(),
                country: String::new(),
            }],
        }
    }

    fn through_value(row: &RowRef<'_>) -> Result<String, Box<dyn std::error::Error>> {
        let mut v = to_value(row)?;
        readable(&mut v);
        if let Some(obj) = v.as_object_mut() {
            Names::new(&catalog()).add_to(obj);
        }
        let mut w = RowWriter::new(Vec::new(), false);
        w.write(&v)?;
        match w {
            RowWriter::Json(out) => Ok(String::from_utf8(out)?),
            _ => Err("a JSON lines writer became another".into()),
        }
    }

    fn direct(row: &RowRef<'_>) -> Result<String, Box<dyn std::error::Error>> {
        let mut w = RowWriter::new(Vec::new(), false);
        let catalog = catalog();
        write_direct(&mut w, &Names::new(&catalog), row).ok_or("the row took the Value path")??;
        match w {
            RowWriter::Json(out) => Ok(String::from_utf8(out)?),
            _ => Err("a JSON lines writer became another".into()),
        }
    }

    const KEY: EventKey = EventKey {
        device: u64::MAX - 1,
        seq: 7,
        idx: 3,
    };

    fn sale(currency: [u8; 3], customer: Option<u64>) -> SaleRow {
        SaleRow {
            store: 3,
            ts_us: 1_795_915_921_643_554,
            key: KEY,
            kind: SaleKind::Refund,
            terminal: 20,
            operator: 111,
            txn: [
                0, 1, 0x7f, 0x80, 0xff, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176,
            ],
            currency,
            lines: 4,
            items: -4,
            gross: i64::MIN,
            discount: 24,
            tax: i64::MAX,
            tendered: 1_541,
            tip: 0,
            tenders: 1,
            tender_methods: 255,
            customer,
        }
    }

    #[test]
    fn sales_write_the_bytes_their_value_does() -> TestResult {
        for s in [
            sale(*b"GBP", Some(47_621)),
            sale(*b"EUR", None),
            // Printable but needing escapes in JSON.
            sale(*b"\"\\~", None),
            // Not printable: hex, as `readable` leaves it.
            sale([0, b'G', 200], None),
            sale(*b"G P", None),
        ] {
            let row = RowRef::Sale(&s);
            assert_eq!(direct(&row)?, through_value(&row)?);
        }
        Ok(())
    }

    #[test]
    fn plain_rows_write_the_bytes_their_value_does() -> TestResult {
        let line = SaleLineRow {
            store: 4,
            sku: 1 << 40,
            ts_us: -5,
            key: KEY,
            line: 2,
            kind: SaleKind::Refund,
            quantity: -3,
            unit_price: 250,
            discount: 0,
            tax: i64::MIN,
            amount: i64::MAX,
        };
        let movement = StockMovementRow {
            store: 4,
            sku: 9,
            ts_us: 1_795_915_921_643_554,
            key: KEY,
            line: 0,
            reason: MovementReason::CountCorrection,
            delta: -2,
            counted: 40,
            level_after: 38,
            applied: true,
        };
        let counted = StockLevelRow {
            store: 1,
            sku: 2,
            level: -1,
            count_ts_us: Some(3),
            count_key: Some(KEY),
            updated_ts_us: 4,
            version: 5,
        };
        let uncounted = StockLevelRow {
            count_ts_us: None,
            count_key: None,
            ..counted
        };
        let rollup = TerminalRollupRow {
            store: 1,
            day: 20_421,
            terminal: 3,
            minute: 1_439,
            sales: 10,
            refunds: 1,
            gross: 12_345,
            tax: 1_234,
            refunded: -99,
        };
        let health = DeviceHealthRow {
            ts_us: 1,
            key: KEY,
            store: 2,
            battery_pct: 255,
            temperature_dc: -400,
            uptime_s: 86_400,
            queue_depth: 0,
            rssi_dbm: -90,
        };
        let watermark = WatermarkRow {
            device: 1,
            seq: 2,
            updated_at_us: 3,
        };
        let batch = BatchRow {
            device: 1,
            seq: 2,
            events: 128,
            received_at_us: 3,
            digest: 0x5eed,
        };
        let rows = [
            RowRef::SaleLine(&line),
            RowRef::Movement(&movement),
            RowRef::Level(&counted),
            RowRef::Level(&uncounted),
            RowRef::Rollup(&rollup),
            RowRef::Health(&health),
            RowRef::Watermark(&watermark),
            RowRef::Batch(&batch),
        ];
        for row in &rows {
            assert_eq!(direct(row)?, through_value(row)?);
        }
        // Ids past 2^53 as strings, names after the row's own fields.
        let named = direct(&rows[0])?;
        assert!(
            named.contains(r#""sku":"1099511627776""#)
                && named.contains(r#""device":"18446744073709551614""#)
                && named.ends_with(
                    r#""sku_code":"85123A","sku_name":"WHITE \"HANGING\" HEART","store_name":"United Kingdom"}
"#
                ),
            "{named}"
        );
        assert!(named.contains(r#""unit_price_minor":250"#), "{named}");
        // CSV takes the Value path, for its columns.
        let mut csv = RowWriter::new(Vec::new(), true);
        let catalog = catalog();
        assert!(write_direct(&mut csv, &Names::new(&catalog), &rows[0]).is_none());
        Ok(())
    }
}
