//! Writes the seed corpora: real frames and payloads encoded with the
//! protocol's own types, one file per input, into `corpus/<target>/`
//! (beside this crate's Cargo.toml, or under the directory given as the
//! first argument).
//!
//! `cargo run --example seed` (a plain build; no fuzzer flags needed).

use std::error::Error as StdError;
use std::fs;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;

use tillstream_engine_core::testkit::{count, health, line, movement, refund, sale};
use tillstream_engine_core::validate::{DEFAULT_MAX_FUTURE_US, Y2000_US};
use tillstream_protocol::frame::{HEADER_LEN, encode_to_vec};
use tillstream_protocol::{
    Ack, Batch, Error, Event, Hello, Limits, MovementKind, PROTOCOL_VERSION, Refund, Reject,
    RejectedRef, Sale, SaleLine, StockMovement, Tender, TenderMethod, Welcome,
};

type R<T = ()> = Result<T, Box<dyn StdError>>;

const NOW: i64 = 1_700_000_000_000_000;
const MINUTE: i64 = 60_000_000;

fn main() -> R {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));

    let hellos = [
        Hello {
            version: PROTOCOL_VERSION,
            device: 1,
            token: Vec::new(),
        },
        Hello {
            version: PROTOCOL_VERSION,
            device: 0xDEAD_BEEF_0000_0042,
            token: b"v1.device-42.0123456789abcdef".to_vec(),
        },
        Hello {
            version: 9,
            device: u64::MAX,
            token: vec![0xA5; 300],
        },
    ];
    let batches = batches();

    let mut hello_frames = Vec::new();
    for h in &hellos {
        hello_frames.push(encode_to_vec(h)?);
    }
    let mut batch_frames = Vec::new();
    for b in &batches {
        batch_frames.push(encode_to_vec(b)?);
    }
    let server_frames = vec![
        encode_to_vec(&Welcome {
            durable_seq: 17,
            limits: Limits::default(),
        })?,
        encode_to_vec(&Ack {
            durable_seq: 3,
            rejected: vec![
                RejectedRef {
                    seq: 3,
                    idx: 1,
                    code: 2,
                },
                RejectedRef {
                    seq: 3,
                    idx: 4,
                    code: 5,
                },
            ],
        })?,
        encode_to_vec(&Error {
            code: 4,
            batch_seq: 9,
            reason: "checksum mismatch".into(),
        })?,
        encode_to_vec(&Reject {
            code: 1,
            reason: "unknown device".into(),
        })?,
    ];

    // frame_header: whole frames of every type.
    let all: Vec<&Vec<u8>> = hello_frames
        .iter()
        .chain(&batch_frames)
        .chain(&server_frames)
        .collect();
    write(&root, "frame_header", all.iter().map(|f| f.as_slice()))?;
    // batch_validate and core_apply: Batch payloads (no header).
    let payloads: Vec<&[u8]> = batch_frames.iter().map(|f| &f[HEADER_LEN..]).collect();
    write(&root, "batch_validate", payloads.iter().copied())?;
    write(&root, "core_apply", payloads.iter().copied())?;
    // hello: Hello frames, and the server's small frames.
    write(
        &root,
        "hello",
        hello_frames.iter().chain(&server_frames).map(Vec::as_slice),
    )?;
    // credentials: tokens signed with the target's test key (device and
    // API roles), one expired, and a device certificate's DER.
    write(&root, "credentials", credentials()?.iter().map(Vec::as_slice))?;
    Ok(())
}

/// The fuzz target's test key (fuzz_targets/credentials.rs).
const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEuKKbC0dYv0bl3WDapyID3W93NT++e7DEODRYevaARF
-----END PRIVATE KEY-----
";

fn credentials() -> R<Vec<Vec<u8>>> {
    use std::time::Duration;
    use tillstream_auth::Role;
    use tillstream_auth::token::{SigningKey, TokenRequest};
    let key = SigningKey::from_pem(TEST_KEY_PEM)?;
    let mut out = Vec::new();
    for (device, store, role, ttl) in [
        (Some(7), Some(3), Role::Terminal, 86_400 * 365 * 9),
        (Some(u64::MAX), Some(u32::MAX), Role::ShelfSensor, 60),
        (None, None, Role::Analyst, 3600),
    ] {
        let (t, _) = key.issue(&TokenRequest {
            device,
            store,
            role,
            ttl: Duration::from_secs(ttl),
        })?;
        out.push(t.into_bytes());
    }
    let dir = std::env::temp_dir().join(format!("tillstream-fuzz-seed-{}", std::process::id()));
    let ca = tillstream_auth::ca::DeviceCa::init(&dir)?;
    let cert = ca.issue(42, 9, Role::ShelfSensor, Duration::from_secs(3600))?;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .next()
        .ok_or("no certificate")??;
    out.push(der.to_vec());
    let _ = fs::remove_dir_all(&dir);
    Ok(out)
}

fn write<'a>(root: &Path, target: &str, inputs: impl Iterator<Item = &'a [u8]>) -> R {
    let dir = root.join(target);
    fs::create_dir_all(&dir)?;
    let mut n = 0;
    for (i, bytes) in inputs.enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), bytes)?;
        n += 1;
    }
    println!("{}: {n} seeds", dir.display());
    Ok(())
}

fn batches() -> Vec<Batch> {
    let sale_many = Event::Sale(Sale {
        ts_us: NOW - 5 * MINUTE,
        store: 3,
        terminal: 12,
        operator: 77,
        txn: *b"0123456789abcdef",
        currency: *b"GBP",
        lines: vec![
            line(1001, 2, 199),
            SaleLine {
                sku: 1002,
                quantity: 1,
                unit_price: 2_500,
                discount: 250,
                tax: 450,
            },
            line(1003, 12, 35),
            line(1001, 1, 199),
        ],
        tenders: vec![
            Tender {
                method: TenderMethod::GiftCard,
                amount: 1_000,
                tip: 0,
            },
            Tender {
                method: TenderMethod::Contactless,
                amount: 2_068,
                tip: 150,
            },
        ],
        customer: Some(555_123),
    });
    let refund_orig = Event::Refund(Refund {
        ts_us: NOW - MINUTE,
        store: 3,
        terminal: 12,
        operator: 77,
        txn: *b"fedcba9876543210",
        original_txn: Some(*b"0123456789abcdef"),
        currency: *b"GBP",
        lines: vec![line(1002, 1, 2_500)],
        tenders: vec![Tender {
            method: TenderMethod::Card,
            amount: 2_250,
            tip: 0,
        }],
    });
    let transfer = Event::Movement(StockMovement {
        ts_us: NOW - 2 * MINUTE,
        store: 3,
        sku: 1003,
        delta: 48,
        reason: MovementKind::TransferIn,
    });
    let transfer_out = Event::Movement(StockMovement {
        ts_us: NOW - 2 * MINUTE,
        store: 3,
        sku: 1001,
        delta: -6,
        reason: MovementKind::TransferOut,
    });
    vec![
        // A till's day: sales, a refund, stock, a count, a ping.
        Batch {
            seq: 1,
            sent_at_us: NOW,
            events: vec![
                sale(NOW - 10 * MINUTE, 1, 4, vec![line(10, 2, 150), line(11, 1, 300)]),
                sale_many,
                refund(NOW - 3 * MINUTE, 1, 4, vec![line(10, 1, 150)]),
                refund_orig,
                movement(NOW - 20 * MINUTE, 1, 10, 24),
                movement(NOW - 4 * MINUTE, 1, 11, -2),
                transfer,
                transfer_out,
                count(NOW - 30 * MINUTE, 1, 10, 40),
                count(NOW - MINUTE, 3, 1003, 60),
                health(NOW, 1),
            ],
        },
        // One of each, small.
        Batch {
            seq: 2,
            sent_at_us: NOW + 1,
            events: vec![sale(NOW, 2, 1, vec![line(7, 1, 100)])],
        },
        Batch {
            seq: 3,
            sent_at_us: 0,
            events: vec![movement(NOW, 2, 7, 5), count(NOW, 2, 7, 0), health(NOW, 2)],
        },
        // Events the rules refuse: zero delta, negative level, no lines,
        // a stamp too far ahead, one before 2000, a bad quantity and a
        // negative price.
        Batch {
            seq: 4,
            sent_at_us: -1,
            events: vec![
                movement(NOW, 1, 10, 0),
                count(NOW, 1, 10, -5),
                sale(NOW, 1, 4, Vec::new()),
                sale(NOW + DEFAULT_MAX_FUTURE_US + 1, 1, 4, vec![line(10, 1, 1)]),
                health(Y2000_US - 1, 1),
                sale(NOW, 1, 4, vec![line(10, 0, 1)]),
                refund(NOW, 1, 4, vec![line(10, 1, -1)]),
            ],
        },
        // An empty batch, and a late count before a newer movement.
        Batch {
            seq: u64::MAX,
            sent_at_us: i64::MIN,
            events: Vec::new(),
        },
        Batch {
            seq: 5,
            sent_at_us: 42,
            events: vec![
                movement(NOW, 1, 10, 3),
                count(NOW - 3 * 60 * MINUTE, 1, 10, 8),
                count(NOW - 10 * MINUTE, 1, 10, 9),
            ],
        },
    ]
}
