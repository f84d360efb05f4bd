//! Golden bytes: a change to the wire format (rkyv features, field order,
//! a new field) changes these bytes and fails this test. That is a protocol
//! version change: bump `PROTOCOL_VERSION`, keep accepting the old one, and
//! only then regenerate with `TILLSTREAM_BLESS=1 cargo test -p tillstream-protocol --test golden`.
//!
//! The fixtures: a batch frame of version 1 (`batch_v1.bin`, what devices
//! of the first build send, which servers still accept), the same batch in
//! version 2 (`batch_v2.bin`: only the header's version byte differs), and
//! a version-2 `Redirect` (`redirect_v2.bin`).

use tillstream_protocol::frame::{
    FrameHeader, HEADER_LEN, ValidatedBatch, aligned, decode, encode_to_vec,
    encode_to_vec_versioned,
};
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

/// Compares `frame` with the fixture `name` (writing it first under
/// `TILLSTREAM_BLESS`) and returns the fixture's bytes.
fn fixture(name: &str, frame: &[u8]) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("TILLSTREAM_BLESS").is_some() {
        std::fs::write(&path, frame).expect("write fixture");
    }
    let fixture = std::fs::read(&path).expect("fixture exists");
    assert_eq!(
        frame, fixture,
        "wire bytes of {name} changed: see this file's doc"
    );
    fixture
}

/// The stored bytes of a batch frame parse as `version` and still decode
/// to the golden batch.
fn assert_golden_batch(fixture: &[u8], version: u8) {
    let header = FrameHeader::parse(fixture, frame::DEFAULT_MAX_PAYLOAD).expect("header");
    assert_eq!(header.version, version);
    assert_eq!(header.msg_type, MsgType::Batch);
    header.check_payload(&fixture[HEADER_LEN..]).expect("crc");
    let v = ValidatedBatch::new(aligned(&fixture[HEADER_LEN..]), 16).expect("valid");
    assert_eq!(v.get().seq.to_native(), 3);
    assert_eq!(v.get().events.len(), 2);
}

#[test]
fn batch_frame_bytes_are_stable() {
    let frame = encode_to_vec_versioned(&golden_batch(), 1).expect("encode");
    let fixture = fixture("batch_v1.bin", &frame);
    assert_eq!(fixture[4], 1, "a version-1 frame");
    // Devices of version 1 are still accepted.
    assert_golden_batch(&fixture, 1);
}

#[test]
fn version_2_batch_frame_differs_only_in_the_version_byte() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(MIN_PROTOCOL_VERSION, 1, "servers still accept version 1");
    let frame = encode_to_vec(&golden_batch()).expect("encode");
    let fixture = fixture("batch_v2.bin", &frame);
    let mut v1 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/batch_v1.bin"
    ))
    .expect("v1 fixture exists");
    v1[4] = 2;
    assert_eq!(fixture, v1, "the v1 frame with header byte 4 = 2");
    assert_golden_batch(&fixture, 2);
}

#[test]
fn redirect_frame_bytes_are_stable() {
    let redirect = Redirect {
        store: 2,
        epoch: 9,
        owner: "10.0.0.2:7400".into(),
    };
    let frame = encode_to_vec(&redirect).expect("encode");
    let fixture = fixture("redirect_v2.bin", &frame);
    // TLST, version 2, type 7, no flags.
    assert_eq!(fixture[..8], [0x54, 0x4c, 0x53, 0x54, 2, 7, 0, 0]);
    let header = FrameHeader::parse(&fixture, frame::DEFAULT_MAX_PAYLOAD).expect("header");
    assert_eq!(header.msg_type, MsgType::Redirect);
    header.check_payload(&fixture[HEADER_LEN..]).expect("crc");
    let back = decode::<Redirect>(&aligned(&fixture[HEADER_LEN..])).expect("valid");
    assert_eq!(back, redirect);
}
