//! End to end over loopback QUIC: a fleet of tills streams a seeded
//! workload (the loadgen's generator and batcher) through a fresh
//! in-process server with the embedded store, as `tillstream-loadgen`
//! does, and the time from the first send to the last ack is measured.
//! Every iteration starts a server over a new directory (not timed), so
//! each run begins with an empty store and cold entities. Throughput is in
//! events.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tillstream_engine::{Server, ServerConfig};
use tillstream_loadgen::fleet::{self, RunConfig};
use tillstream_loadgen::generator::FleetSpec;
use tillstream_loadgen::workload::Workload;

const EVENTS: u64 = 32_768;

/// 4 stores of 4 tills and a shelf sensor each, batches of 128.
fn workload() -> Workload {
    let spec = FleetSpec {
        stores: 4,
        terminals_per_store: 4,
        sensors_per_store: 1,
        skus: 5_000,
        events: EVENTS,
        seed: 7,
        start_us: 1_767_225_600_000_000, // 2026-01-01
        step_us: 20,
    };
    match tillstream_loadgen::workload::build(&spec, 128, None) {
        Ok(w) => w,
        Err(e) => panic!("workload: {e}"),
    }
}

/// One run against a fresh server: the time from first send to last ack.
async fn one_run(work: Workload) -> Duration {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no temp dir: {e}"),
    };
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = match Server::start(cfg).await {
        Ok(s) => s,
        Err(e) => panic!("server: {e}"),
    };
    let ca_pem = match std::fs::read(server.cert_path()) {
        Ok(p) => p,
        Err(e) => panic!("certificate: {e}"),
    };
    let creds = match tillstream_loadgen::credentials::Credentials::of_server(&server) {
        Ok(c) => c,
        Err(e) => panic!("signing key: {e}"),
    };
    let rc = RunConfig::flat_out(
        server.quic_addr(),
        ca_pem,
        creds,
        4,
        Duration::from_secs(30),
    );
    let out = match fleet::run(work, &rc).await {
        Ok(o) => o,
        Err(e) => panic!("fleet: {e}"),
    };
    assert!(out.complete(EVENTS), "not every event was acknowledged");
    let _ = server.shutdown().await;
    out.elapsed
}

fn e2e_quic(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let work = workload();
    let mut group = c.benchmark_group("e2e_quic");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(EVENTS));
    group.bench_function("20_devices_32k_events_batches_of_128", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_run(work.clone()).await;
                }
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, e2e_quic);
criterion_main!(benches);
