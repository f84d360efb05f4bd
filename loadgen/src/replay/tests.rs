use std::io::Write;

use tillstream_protocol::frame::{HEADER_LEN, aligned};
use tillstream_protocol::{ArchivedEvent, ValidatedBatch};

use super::*;

#[test]
fn prices_to_pence_exactly() {
    assert_eq!(pence("5.06"), Some(506));
    assert_eq!(pence("0.85"), Some(85));
    assert_eq!(pence("10.79"), Some(1079));
    assert_eq!(pence("3"), Some(300));
    assert_eq!(pence("3.5"), Some(350));
    assert_eq!(pence(".5"), Some(50));
    assert_eq!(pence("0.00"), Some(0));
    assert_eq!(pence("1.005"), Some(101));
    assert_eq!(pence("1.004"), Some(100));
    assert_eq!(pence("-11062.06"), Some(-1_106_206));
    assert_eq!(pence(""), None);
    assert_eq!(pence("."), None);
    assert_eq!(pence("1,5"), None);
    assert_eq!(pence("abc"), None);
    assert_eq!(pence("99999999999999999999"), None);
}

#[test]
fn both_date_formats() {
    // 2010-12-06 10:08 UTC and 2011-02-20 11:39 UTC.
    assert_eq!(parse_date("12/06/2010 10:08"), Some(1_291_630_080_000_000));
    assert_eq!(parse_date("2/20/11 11:39"), Some(1_298_201_940_000_000));
    assert_eq!(parse_date("1/1/70 0:00"), Some(3_155_760_000_000_000));
    assert_eq!(parse_date("13/01/2011 10:00"), None);
    assert_eq!(parse_date("2/30/2011 10:00"), None);
    assert_eq!(parse_date("2/3/2011"), None);
    assert_eq!(parse_date("2/3/2011 24:00"), None);
    assert_eq!(parse_date("x/3/2011 10:00"), None);
}

#[test]
fn sku_hash_is_stable_and_case_blind() {
    assert_eq!(sku_of("85123A"), sku_of(" 85123a "));
    assert_ne!(sku_of("85123A"), sku_of("85123B"));
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
}

const SAMPLE: &str = "\
X.1;X;InvoiceNo;StockCode;Description;Quantity;InvoiceDate;UnitPrice;CustomerID;Country
1;1;537240;84347;ROTATING SILVER ANGELS T-LIGHT HLDR;2;12/06/2010 10:08;5.06;NA;United Kingdom
2;2;537240;22229;\"LETTER \"\"E\"\" BLING KEY RING\";3;12/06/2010 10:08;0.85;16466;United Kingdom
3;3;544299;16161P;WRAP ENGLISH ROSE;25;2/17/11 12:55;0.42;13178;France
4;4;C544300;16161P;WRAP ENGLISH ROSE;-2;2/17/11 13:00;0.42;13178;France
5;5;544301;22222;BROKEN;two;2/17/11 13:00;0.42;NA;France
6;6;544302;22223;BAD DATE;1;2/31/11 13:00;0.42;NA;France
7;7;544303;22224;NO PRICE;1;2/17/11 13:00;;NA;France
8;8;544304;22225;SHORT
";

#[test]
fn replays_a_small_export_and_counts_bad_rows() -> anyhow::Result<()> {
    let mut f = tempfile::NamedTempFile::new()?;
    f.write_all(SAMPLE.as_bytes())?;
    let (work, info) = build(f.path(), 10, None, 2)?;
    assert_eq!(info.rows, 8);
    assert_eq!(info.used_rows, 4);
    assert_eq!(
        info.bad_rows.values().sum::<u64>(),
        4,
        "{:?}",
        info.bad_rows
    );
    assert_eq!(info.bad_rows.get("bad_quantity"), Some(&1));
    assert_eq!(info.bad_rows.get("bad_date"), Some(&1));
    assert_eq!(info.bad_rows.get("bad_price"), Some(&1));
    assert_eq!(info.bad_rows.get("short_row"), Some(&1));
    assert_eq!((info.invoices, info.stores), (3, 2));
    assert_eq!(work.events, 3);
    assert_eq!(work.devices.len(), 4, "2 tills in each of 2 countries");
    let (mut sales, mut refunds, mut lines) = (0, 0, 0);
    for d in &work.devices {
        for b in &d.batches {
            let v = ValidatedBatch::new(aligned(&b.batch.frame[HEADER_LEN..]), 4096)?;
            for ev in v.get().events.iter() {
                match ev {
                    ArchivedEvent::Sale(s) => {
                        sales += 1;
                        lines += s.lines.len();
                        assert!(s.lines.iter().all(|l| l.quantity.to_native() > 0));
                        assert_eq!(s.store.to_native(), d.store);
                    }
                    ArchivedEvent::Refund(r) => {
                        refunds += 1;
                        assert_eq!(r.lines[0].quantity.to_native(), 2);
                    }
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
        }
    }
    assert_eq!((sales, refunds, lines), (2, 1, 3));
    Ok(())
}

#[test]
fn the_shipped_sample_replays() -> anyhow::Result<()> {
    // The copy shipped with the tests (tests/data/README.md): always here.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/online-retail-sample.csv");
    let (work, info) = build(&path, 128, None, 2)?;
    assert_eq!(info.rows, 5_000);
    assert_eq!(
        info.used_rows + info.bad_rows.values().sum::<u64>(),
        info.rows
    );
    assert_eq!(info.invoices, work.events);
    assert!(info.stores >= 20, "{info:?}");
    Ok(())
}
