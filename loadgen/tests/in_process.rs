//! One-command runs against an in-process server, end to end: generate,
//! send over QUIC, acknowledge, verify.

use clap::Parser;
use tillstream_loadgen::cli::Args;
use tillstream_loadgen::run::run;

fn args(extra: &[&str]) -> anyhow::Result<Args> {
    let mut v = vec![
        "tillstream-loadgen",
        "--shards",
        "2",
        "--give-up-after",
        "120",
    ];
    v.extend_from_slice(extra);
    Ok(Args::try_parse_from(v)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_is_acknowledged_and_verified() -> anyhow::Result<()> {
    let a = args(&[
        "--events",
        "5000",
        "--stores",
        "3",
        "--terminals-per-store",
        "3",
        "--sensors-per-store",
        "1",
        "--batch-size",
        "50",
        "--verify",
    ])?;
    let r = run(a).await?;
    assert!(r.ok, "{}", r.summary());
    assert_eq!((r.events_acked, r.events_total), (5000, 5000));
    assert_eq!(r.devices, 12);
    assert_eq!(r.ack_latency_ms.count, r.batches);
    let v = r
        .verify
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no verify"))?;
    assert_eq!(v["ok"], serde_json::Value::Bool(true), "{v}");
    assert_eq!(v["missing"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(r.server["shards"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_run_keeps_to_its_rate() -> anyhow::Result<()> {
    let a = args(&[
        "--events",
        "2000",
        "--stores",
        "2",
        "--rate",
        "4000",
        "--batch-size",
        "20",
    ])?;
    let r = run(a).await?;
    assert!(r.ok, "{}", r.summary());
    // 2,000 events at 4,000/s take about half a second, not much less.
    assert!(r.seconds >= 0.45, "{}", r.summary());
    assert!(r.events_per_s <= 4_400.0, "{}", r.summary());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_sample_replays() -> anyhow::Result<()> {
    let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/online-retail-sample.csv");
    if !csv.exists() {
        eprintln!("skipped: {} not found", csv.display());
        return Ok(());
    }
    let path = csv.to_string_lossy().into_owned();
    let a = args(&[
        "--replay-csv",
        &path,
        "--terminals-per-store",
        "1",
        "--verify",
    ])?;
    let r = run(a).await?;
    assert!(r.ok, "{}", r.summary());
    let info = r
        .generator
        .csv
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no csv info"))?;
    assert_eq!(info.rows, 5_000);
    assert_eq!(r.events_acked, info.invoices);
    Ok(())
}
