use proptest::prelude::*;

use super::*;
use crate::message::*;

fn sale(ts_us: i64) -> Event {
    Event::Sale(Sale {
        ts_us,
        store: 7,
        terminal: 3,
        operator: 11,
        txn: [9; 16],
        currency: *b"GBP",
        lines: vec![
            SaleLine {
                sku: 1001,
                quantity: 2,
                unit_price: 250,
                discount: 0,
                tax: 100,
            },
            SaleLine {
                sku: 1002,
                quantity: 1,
                unit_price: 999,
                discount: 100,
                tax: 180,
            },
        ],
        tenders: vec![
            Tender {
                method: TenderMethod::Card,
                amount: 1000,
                tip: 0,
            },
            Tender {
                method: TenderMethod::Cash,
                amount: 629,
                tip: 50,
            },
        ],
        customer: Some(42),
    })
}

pub(crate) fn sample_batch() -> Batch {
    Batch {
        seq: 5,
        sent_at_us: 1_700_000_000_000_000,
        events: vec![
            sale(1_700_000_000_000_001),
            Event::Refund(Refund {
                ts_us: 1_700_000_000_000_002,
                store: 7,
                terminal: 3,
                operator: 11,
                txn: [1; 16],
                original_txn: Some([9; 16]),
                currency: *b"GBP",
                lines: vec![SaleLine {
                    sku: 1001,
                    quantity: 1,
                    unit_price: 250,
                    discount: 0,
                    tax: 50,
                }],
                tenders: vec![Tender {
                    method: TenderMethod::Card,
                    amount: 300,
                    tip: 0,
                }],
            }),
            Event::Movement(StockMovement {
                ts_us: 1_700_000_000_000_003,
                store: 7,
                sku: 1001,
                delta: 24,
                reason: MovementKind::Receipt,
            }),
            Event::Count(ShelfCount {
                ts_us: 1_700_000_000_000_004,
                store: 7,
                sku: 1002,
                level: 17,
            }),
            Event::Health(DeviceHealth {
                ts_us: 1_700_000_000_000_005,
                store: 7,
                battery_pct: 255,
                temperature_dc: 215,
                uptime_s: 3600,
                queue_depth: 0,
                rssi_dbm: -61,
            }),
        ],
    }
}

/// Splits a frame into its checked header and aligned payload.
fn split(frame: &[u8]) -> Result<(FrameHeader, PayloadBuf), FrameError> {
    let header = FrameHeader::parse(frame, DEFAULT_MAX_PAYLOAD)?;
    let payload = frame.get(HEADER_LEN..).unwrap_or_default();
    header.check_payload(payload)?;
    Ok((header, aligned(payload)))
}

#[test]
fn batch_round_trips_through_a_frame() -> Result<(), FrameError> {
    let batch = sample_batch();
    let frame = encode_to_vec(&batch)?;
    let (header, payload) = split(&frame)?;
    assert_eq!(header.msg_type, MsgType::Batch);
    assert_eq!(header.version, crate::PROTOCOL_VERSION);
    let validated = ValidatedBatch::new(payload, 4096)?;
    let archived = validated.get();
    assert_eq!(archived.seq.to_native(), 5);
    assert_eq!(archived.events.len(), 5);
    let back: Batch =
        rkyv::deserialize::<Batch, rancor::Error>(archived).map_err(|e| FrameError::Invalid {
            what: "Batch",
            reason: e.to_string(),
        })?;
    assert_eq!(back, batch);
    Ok(())
}

#[test]
fn small_messages_round_trip() -> Result<(), FrameError> {
    let hello = Hello {
        version: 1,
        device: 77,
        token: b"tok".to_vec(),
    };
    let (h, p) = split(&encode_to_vec(&hello)?)?;
    assert_eq!(h.msg_type, MsgType::Hello);
    assert_eq!(decode::<Hello>(&p)?, hello);

    let welcome = Welcome {
        durable_seq: 12,
        limits: Limits::default(),
    };
    let (_, p) = split(&encode_to_vec(&welcome)?)?;
    assert_eq!(decode::<Welcome>(&p)?, welcome);

    let ack = Ack {
        durable_seq: 9,
        rejected: vec![RejectedRef {
            seq: 9,
            idx: 3,
            code: 100,
        }],
    };
    let (_, p) = split(&encode_to_vec(&ack)?)?;
    assert_eq!(decode::<Ack>(&p)?, ack);

    let err = Error {
        code: 5,
        batch_seq: 3,
        reason: "bad".into(),
    };
    let (_, p) = split(&encode_to_vec(&err)?)?;
    assert_eq!(decode::<Error>(&p)?, err);

    let reject = Reject {
        code: 11,
        reason: "no".into(),
    };
    let (_, p) = split(&encode_to_vec(&reject)?)?;
    assert_eq!(decode::<Reject>(&p)?, reject);

    let redirect = Redirect {
        store: 12,
        epoch: 4,
        owner: "tillstream-2.tillstream.retail.svc:7400".into(),
    };
    let (h, p) = split(&encode_to_vec(&redirect)?)?;
    assert_eq!(h.msg_type, MsgType::Redirect);
    assert_eq!(decode::<Redirect>(&p)?, redirect);
    Ok(())
}

#[test]
fn message_types_decode_from_their_byte() {
    for t in [
        MsgType::Hello,
        MsgType::Welcome,
        MsgType::Reject,
        MsgType::Batch,
        MsgType::Ack,
        MsgType::Error,
        MsgType::Redirect,
    ] {
        assert_eq!(MsgType::from_u8(t as u8), Some(t));
    }
    assert_eq!(MsgType::Redirect as u8, 7);
    assert_eq!(MsgType::from_u8(0), None);
    assert_eq!(MsgType::from_u8(8), None);
}

/// A server answers a device in the version its `Hello` stated: the
/// payload is the same, only byte 4 differs, and both versions parse.
#[test]
fn frames_of_every_accepted_version_parse() -> Result<(), FrameError> {
    let batch = sample_batch();
    let current = encode_to_vec(&batch)?;
    assert_eq!(current[4], crate::PROTOCOL_VERSION);
    for version in crate::MIN_PROTOCOL_VERSION..=crate::PROTOCOL_VERSION {
        let frame = encode_to_vec_versioned(&batch, version)?;
        assert_eq!(frame[4], version);
        assert_eq!(frame[..4], current[..4]);
        assert_eq!(frame[5..], current[5..], "only the version byte differs");
        let (header, payload) = split(&frame)?;
        assert_eq!(header.version, version);
        assert_eq!(ValidatedBatch::new(payload, 4096)?.get().seq.to_native(), 5);
    }
    Ok(())
}

#[test]
fn a_version_outside_the_accepted_range_is_not_encoded() {
    for version in [0, crate::PROTOCOL_VERSION + 1, u8::MAX] {
        let mut out = vec![1, 2, 3];
        let err = encode_versioned(&sample_batch(), version, &mut out).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert_eq!(out, [1, 2, 3], "nothing appended");
    }
}

#[test]
fn truncated_frames_are_refused() -> Result<(), FrameError> {
    let frame = encode_to_vec(&sample_batch())?;
    for cut in [0, 1, 8, HEADER_LEN - 1] {
        assert!(matches!(
            FrameHeader::parse(&frame[..cut], DEFAULT_MAX_PAYLOAD),
            Err(FrameError::Truncated { .. })
        ));
    }
    let header = FrameHeader::parse(&frame, DEFAULT_MAX_PAYLOAD)?;
    let short = &frame[HEADER_LEN..frame.len() - 1];
    assert!(matches!(
        header.check_payload(short),
        Err(FrameError::Truncated { .. })
    ));
    // A payload cut short but with a recomputed CRC still fails bytecheck.
    let cut = aligned(&frame[HEADER_LEN..frame.len() - 9]);
    assert!(matches!(
        ValidatedBatch::new(cut, 4096),
        Err(FrameError::Invalid { .. })
    ));
    Ok(())
}

#[test]
fn oversized_frames_are_refused_before_reading_the_payload() {
    let mut header = Vec::new();
    FrameHeader::write(MsgType::Batch, &[], &mut header);
    header[8..12].copy_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_le_bytes());
    let err = FrameHeader::parse(&header, DEFAULT_MAX_PAYLOAD).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert!(!err.keeps_framing());
}

#[test]
fn batches_over_the_event_limit_are_refused() -> Result<(), FrameError> {
    let frame = encode_to_vec(&sample_batch())?;
    let (_, payload) = split(&frame)?;
    let err = ValidatedBatch::new(payload, 4).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BatchTooLarge);
    Ok(())
}

#[test]
fn seq_zero_is_a_protocol_violation() -> Result<(), FrameError> {
    let mut b = sample_batch();
    b.seq = 0;
    let (_, payload) = split(&encode_to_vec(&b)?)?;
    let err = ValidatedBatch::new(payload, 4096).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProtocolViolation);
    Ok(())
}

#[test]
fn header_fields_are_checked() -> Result<(), FrameError> {
    let frame = encode_to_vec(&sample_batch())?;
    let mut bad = frame.clone();
    bad[0] = b'X';
    assert_eq!(
        FrameHeader::parse(&bad, DEFAULT_MAX_PAYLOAD)
            .unwrap_err()
            .code(),
        ErrorCode::BadMagic
    );
    let mut bad = frame.clone();
    bad[4] = 99;
    assert_eq!(
        FrameHeader::parse(&bad, DEFAULT_MAX_PAYLOAD)
            .unwrap_err()
            .code(),
        ErrorCode::UnsupportedVersion
    );
    let mut bad = frame.clone();
    bad[5] = 200;
    assert_eq!(
        FrameHeader::parse(&bad, DEFAULT_MAX_PAYLOAD)
            .unwrap_err()
            .code(),
        ErrorCode::UnknownMessageType
    );
    let mut bad = frame.clone();
    bad[6] = 1;
    assert_eq!(
        FrameHeader::parse(&bad, DEFAULT_MAX_PAYLOAD)
            .unwrap_err()
            .code(),
        ErrorCode::ProtocolViolation
    );
    Ok(())
}

#[test]
fn a_flipped_payload_bit_fails_the_checksum() -> Result<(), FrameError> {
    let mut frame = encode_to_vec(&sample_batch())?;
    let mid = HEADER_LEN + (frame.len() - HEADER_LEN) / 2;
    frame[mid] ^= 0x10;
    let header = FrameHeader::parse(&frame, DEFAULT_MAX_PAYLOAD)?;
    let err = header.check_payload(&frame[HEADER_LEN..]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChecksumMismatch);
    assert!(err.keeps_framing());
    Ok(())
}

proptest! {
    /// Random bytes never panic the decoder; they are refused or (very
    /// rarely) accepted as a valid archive.
    #[test]
    fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ValidatedBatch::new(aligned(&bytes), 4096);
        let _ = decode::<Hello>(&aligned(&bytes));
        let _ = decode::<Ack>(&aligned(&bytes));
        let _ = decode::<Redirect>(&aligned(&bytes));
        let _ = FrameHeader::parse(&bytes, DEFAULT_MAX_PAYLOAD);
    }

    /// Corrupting any byte of a valid payload (with a fixed-up CRC) is
    /// either refused or still decodes to a batch: never a panic, never an
    /// out-of-bounds read.
    #[test]
    fn corrupted_payloads_never_panic(pos in 0usize..4096, val in any::<u8>()) {
        let frame = encode_to_vec(&sample_batch()).unwrap();
        let mut payload = frame[HEADER_LEN..].to_vec();
        let at = pos % payload.len();
        payload[at] = val;
        if let Ok(v) = ValidatedBatch::new(aligned(&payload), 4096) {
            // Reading every event of an accepted archive must be safe.
            for e in v.get().events.iter() {
                let _ = e.ts_us();
            }
        }
    }

    /// Any header bytes parse or fail cleanly, and a parsed header never
    /// claims more than the limit.
    #[test]
    fn random_headers(bytes in proptest::array::uniform16(any::<u8>()), max in 0u32..(1 << 21)) {
        if let Ok(h) = FrameHeader::parse(&bytes, max) {
            prop_assert!(h.len <= max);
        }
    }
}
