//! Golden bytes: a change to the wire format (rkyv features, field order,
//! a new field) changes these bytes and fails this test. That is a protocol
//! version change: bump `PROTOCOL_VERSION`, keep accepting the old one, and
//! only then regenerate with `TILLSTREAM_BLESS=1 cargo test -p tillstream-protocol --test golden`.

use tillstream_protocol::frame::{FrameHeader, HEADER_LEN, ValidatedBatch, aligned, encode_to_vec};
use tillstream_protocol::*;

fn golden_batch() -> Batch {
    Batch {
        seq: 3,
        sent_at_us: 1_750_000_000_000_000,
        events: vec![
            Event::Sale(Sale {
                ts_us: 1_750_000_000_000_001,
                store: 2,
                terminal: 1,
                operator: 4,
                txn: [7; 16],
                currency: *b"EUR",
                lines: vec![SaleLine {
                    sku: 55,
                    quantity: 3,
                    unit_price: 199,
                    discount: 10,
                    tax: 40,
                }],
                tenders: vec![Tender {
                    method: TenderMethod::Contactless,
                    amount: 627,
                    tip: 0,
                }],
                customer: None,
            }),
            Event::Count(ShelfCount {
                ts_us: 1_750_000_000_000_002,
                store: 2,
                sku: 55,
                level: 40,
            }),
        ],
    }
}

#[test]
fn batch_frame_bytes_are_stable() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/batch_v1.bin");
    let frame = encode_to_vec(&golden_batch()).expect("encode");
    if std::env::var_os("TILLSTREAM_BLESS").is_some() {
        std::fs::write(path, &frame).expect("write fixture");
    }
    let fixture = std::fs::read(path).expect("fixture exists");
    assert_eq!(frame, fixture, "wire bytes changed: see this file's doc");

    // The stored bytes still decode to the same batch.
    let header = FrameHeader::parse(&fixture, frame::DEFAULT_MAX_PAYLOAD).expect("header");
    header.check_payload(&fixture[HEADER_LEN..]).expect("crc");
    let v = ValidatedBatch::new(aligned(&fixture[HEADER_LEN..]), 16).expect("valid");
    assert_eq!(v.get().seq.to_native(), 3);
    assert_eq!(v.get().events.len(), 2);
}
