//! Validated access of a batch frame: header parse, CRC, bytecheck, and a
//! walk over every event — what the session does once per batch.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tillstream_engine_core::testkit;
use tillstream_protocol::Batch;
use tillstream_protocol::frame::{self, DEFAULT_MAX_PAYLOAD, FrameHeader, HEADER_LEN, aligned};

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol_validate");
    group.sample_size(20);
    for events in [1usize, 64, 256] {
        let evs = (0..events)
            .map(|i| {
                let sku = i as u64 % 97;
                let lines = vec![
                    testkit::line(sku, 1, 199),
                    testkit::line(sku + 1, 2, 99),
                    testkit::line(sku + 2, 1, 450),
                ];
                testkit::sale(1_760_000_000_000_000 + i as i64, 1, 1, lines)
            })
            .collect();
        let batch = Batch {
            seq: 1,
            sent_at_us: 0,
            events: evs,
        };
        let bytes = frame::encode_to_vec(&batch).expect("encode");
        let payload = aligned(&bytes[HEADER_LEN..]);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(
            BenchmarkId::new("header_crc_bytecheck", events),
            &events,
            |b, _| {
                b.iter(|| {
                    let h = FrameHeader::parse(&bytes, DEFAULT_MAX_PAYLOAD).expect("header");
                    h.check_payload(&payload).expect("crc");
                    let archived = frame::access::<Batch>(&payload).expect("valid");
                    let mut ts = 0i64;
                    for e in archived.events.iter() {
                        ts = ts.wrapping_add(e.ts_us());
                    }
                    ts
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
