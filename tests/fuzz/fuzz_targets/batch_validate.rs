//! Arbitrary bytes as a Batch payload: copied into an aligned
//! `PayloadBuf` (as the session does) and validated by
//! `ValidatedBatch::try_new` (bytecheck, seq >= 1, event limit).
//!
//! Properties besides "no panic": a refused payload is handed back
//! unchanged; an accepted one keeps its bytes, and every field of every
//! event can be read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tillstream_protocol::frame::aligned;
use tillstream_protocol::{ArchivedEvent, ValidatedBatch};

/// `Limits::default().max_events_per_batch`.
const MAX_EVENTS: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    match ValidatedBatch::try_new(aligned(data), MAX_EVENTS) {
        Err((e, back)) => {
            assert_eq!(&back[..], data, "refused bytes not handed back");
            let _ = (e.code(), e.keeps_framing(), e.to_string());
        }
        Ok(b) => {
            assert_eq!(b.bytes(), data);
            assert_eq!(b.payload_len(), data.len());
            let batch = b.get();
            assert!(batch.seq.to_native() >= 1);
            assert!(batch.events.len() <= MAX_EVENTS as usize);
            let mut acc = batch.sent_at_us.to_native();
            for e in batch.events.iter() {
                acc = acc.wrapping_add(e.ts_us());
                let _ = e.kind_name();
                acc = acc.wrapping_add(read_all(e));
            }
            std::hint::black_box(acc);
        }
    }
});

/// Touches every field of an archived event.
fn read_all(e: &ArchivedEvent) -> i64 {
    let mut acc = 0i64;
    let lines = |acc: &mut i64, ls: &[tillstream_protocol::ArchivedSaleLine]| {
        for l in ls {
            *acc = acc
                .wrapping_add(l.amount())
                .wrapping_add(l.tax.to_native())
                .wrapping_add(l.sku.to_native() as i64);
        }
    };
    let tenders = |acc: &mut i64, ts: &[tillstream_protocol::ArchivedTender]| {
        for t in ts {
            *acc = acc
                .wrapping_add(t.amount.to_native())
                .wrapping_add(t.tip.to_native())
                .wrapping_add(i64::from(t.method.bit()));
        }
    };
    match e {
        ArchivedEvent::Sale(s) => {
            acc = acc.wrapping_add(i64::from(s.store.to_native() ^ s.terminal.to_native()));
            acc = acc.wrapping_add(i64::from(s.operator.to_native()));
            acc = acc.wrapping_add(i64::from(s.txn[0]) + i64::from(s.currency[2]));
            if let Some(c) = s.customer.as_ref() {
                acc = acc.wrapping_add(c.to_native() as i64);
            }
            lines(&mut acc, &s.lines);
            tenders(&mut acc, &s.tenders);
        }
        ArchivedEvent::Refund(r) => {
            acc = acc.wrapping_add(i64::from(r.store.to_native() ^ r.terminal.to_native()));
            if let Some(t) = r.original_txn.as_ref() {
                acc = acc.wrapping_add(i64::from(t[15]));
            }
            lines(&mut acc, &r.lines);
            tenders(&mut acc, &r.tenders);
        }
        ArchivedEvent::Movement(m) => {
            acc = acc
                .wrapping_add(i64::from(m.delta.to_native()))
                .wrapping_add(m.sku.to_native() as i64)
                .wrapping_add(m.reason as u8 as i64);
        }
        ArchivedEvent::Count(c) => {
            acc = acc
                .wrapping_add(c.level.to_native())
                .wrapping_add(c.sku.to_native() as i64);
        }
        ArchivedEvent::Health(h) => {
            acc = acc
                .wrapping_add(i64::from(h.battery_pct))
                .wrapping_add(i64::from(h.temperature_dc.to_native()))
                .wrapping_add(i64::from(h.uptime_s.to_native()))
                .wrapping_add(i64::from(h.queue_depth.to_native()))
                .wrapping_add(i64::from(h.rssi_dbm.to_native()));
        }
    }
    acc
}
