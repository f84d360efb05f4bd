//! Criterion benchmarks of tillstream's hot path, one file per area under
//! `benches/`. Run with `cargo bench -p tillstream-benches`.
