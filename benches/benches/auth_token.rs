//! What authentication costs: one token check per connection (signature,
//! claims, expiry), and issuing one (what the loadgen does per simulated
//! device before the clock starts). Nothing of it runs per event.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tillstream_auth::Role;
use tillstream_auth::token::{SigningKey, TokenRequest};

fn auth_token(c: &mut Criterion) {
    let key = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => panic!("key: {e}"),
    };
    let req = TokenRequest {
        device: Some(4_294_967_301),
        store: Some(12),
        role: Role::Terminal,
        ttl: Duration::from_secs(86_400),
    };
    let token = match key.issue(&req) {
        Ok((t, _)) => t,
        Err(e) => panic!("issue: {e}"),
    };
    let now = tillstream_auth::now_s();
    let mut group = c.benchmark_group("auth_token");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("verify_per_connection", |b| {
        b.iter(|| match key.verify(black_box(&token), now) {
            Ok(c) => black_box(c.store),
            Err(e) => panic!("verify: {e}"),
        });
    });
    group.bench_function("issue", |b| {
        b.iter(|| match key.issue(black_box(&req)) {
            Ok((t, _)) => black_box(t.len()),
            Err(e) => panic!("issue: {e}"),
        });
    });
    group.finish();
}

criterion_group!(benches, auth_token);
criterion_main!(benches);
