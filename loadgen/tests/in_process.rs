//! One-command runs against an in-process server, end to end: generate,
//! send over QUIC, acknowledge, verify.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tillstream_engine::{Server, ServerConfig};
use tillstream_loadgen::cli::Args;
use tillstream_loadgen::fleet::{self, RunConfig};
use tillstream_loadgen::generator::FleetSpec;
use tillstream_loadgen::run::run;
use tillstream_loadgen::workload;

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
    assert_eq!(r.device_threads, None, "the devices shared the runtime");
    // In process, the CPU time is this process's: server and devices.
    let cpu = r
        .cpu
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no CPU time"))?;
    assert_eq!(
        cpu.scope,
        tillstream_loadgen::meter::CpuScope::ServerAndDevices
    );
    assert!(cpu.seconds >= 0.0, "{cpu:?}");
    assert!(
        (cpu.us_per_event - cpu.seconds * 1e6 / 5000.0).abs() <= 0.0005,
        "{cpu:?}"
    );
    // The server's own ack latency, from its histogram (this process's,
    // which other tests of this binary share: some acks, not a count),
    // and how late the devices' runtime ran.
    let server = r
        .server_ack_latency_ms
        .ok_or_else(|| anyhow::anyhow!("no server ack latency: {}", r.summary()))?;
    assert!(server.count > 0 && server.p50 <= server.p99, "{server:?}");
    let journal = r
        .server_journal_appends_ms
        .ok_or_else(|| anyhow::anyhow!("no journal appends: {}", r.summary()))?;
    assert!(
        journal.count > 0 && journal.p50 <= journal.p99,
        "{journal:?}"
    );
    let lag = r
        .device_runtime_lag_ms
        .ok_or_else(|| anyhow::anyhow!("no runtime lag"))?;
    assert!(lag.count > 0 && lag.p50 <= lag.max, "{lag:?}");
    // Loopback carries the server's largest UDP payload, which a
    // connection finds by probing up from QUIC's 1,200 bytes.
    assert_eq!(
        r.path_mtu,
        tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD,
        "{}",
        r.summary()
    );
    assert!(r.mtu_probes > 0, "{}", r.summary());
    // Each batch took a packet or more, and a run on loopback at this
    // pace loses next to none of them.
    assert!(r.quic_sent_packets >= r.batches, "{}", r.summary());
    assert!(
        r.quic_lost_packets * 10 < r.quic_sent_packets,
        "{}",
        r.summary()
    );
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
        // The devices on a runtime of their own, beside the server's.
        "--device-threads",
        "1",
    ])?;
    let r = run(a).await?;
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.device_threads, Some(1));
    // 2,000 events at 4,000/s take about half a second, not much less.
    assert!(r.seconds >= 0.45, "{}", r.summary());
    assert!(r.events_per_s <= 4_400.0, "{}", r.summary());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_sample_replays() -> anyhow::Result<()> {
    // Shipped with the tests (tests/data/README.md), so this always runs.
    let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/online-retail-sample.csv");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_with_the_same_device_ids_fails_and_stores_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let small = [
        "--events",
        "400",
        "--stores",
        "1",
        "--terminals-per-store",
        "2",
        "--sensors-per-store",
        "0",
        "--batch-size",
        "20",
        "--data-dir",
        &data,
        "--run-id",
        "7",
    ];
    let first = run(args(&small)?).await?;
    assert!(first.ok, "{}", first.summary());
    // Same data directory, same run id: the server holds these ids' seqs.
    let second = run(args(&small)?).await?;
    assert!(!second.ok, "{}", second.summary());
    assert_eq!(second.events_acked, 0, "{}", second.summary());
    assert!(
        second.failures.iter().any(|f| f.contains("--run-id")),
        "{:?}",
        second.failures
    );
    Ok(())
}

/// Issue 70: a paced run of the default fleet had shelf counts refused as
/// `count_too_late` (a sensor's clock seconds behind the tills' put its
/// counts of a busy SKU behind more than the 1,024 newer movements the
/// server orders a count against). The generator's own test holds its
/// clocks to account deterministically (`generator::tests`); this one
/// holds a whole paced run to "nothing refused", at a pace where no
/// stall of a loaded machine puts a sensor a second behind its tills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_fleet_has_no_event_refused() -> anyhow::Result<()> {
    let a = args(&["--events", "30000", "--rate", "10000"])?;
    let r = run(a).await?;
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.events_rejected, 0, "{}", r.summary());
    assert!(r.rejected_by_code.is_empty(), "{:?}", r.rejected_by_code);
    Ok(())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_device_ids_fail_the_run_even_before_they_connect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut scfg = ServerConfig::new(dir.path());
    scfg.listen = "127.0.0.1:0".parse()?;
    scfg.shards = 1;
    let server = Server::start(scfg).await?;
    let spec = FleetSpec {
        stores: 1,
        terminals_per_store: 2,
        sensors_per_store: 0,
        skus: 50,
        events: 400,
        seed: 1,
        start_us: now_us(),
        step_us: 20,
    };
    let cfg = RunConfig {
        server: server.quic_addr(),
        seeds: Vec::new(),
        server_name: "localhost".into(),
        ca_pem: std::fs::read(server.cert_path())?,
        credentials: tillstream_loadgen::credentials::Credentials::of_server(&server)?,
        rate: 0.0,
        give_up_after: Duration::from_secs(60),
        max_inflight: 8,
        // Sends start before any Welcome: the check must not depend on it.
        connect_wait: Duration::ZERO,
        endpoint: tillstream_client::EndpointOptions::default(),
    };
    let first = fleet::run(workload::build(&spec, 20, None)?, &cfg).await?;
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    assert_eq!(first.events_acked, 400);
    let second = fleet::run(workload::build(&spec, 20, None)?, &cfg).await?;
    assert_eq!(
        second.events_acked, 0,
        "batches the server already had are not acknowledged: {:?}",
        second.failures
    );
    assert!(second.stats.stale_batches > 0, "{:?}", second.stats);
    assert!(
        second.failures.iter().any(|f| f.contains("--run-id")),
        "{:?}",
        second.failures
    );
    server.shutdown().await?;
    Ok(())
}

/// The replayed sample, queried, gives the totals the CSV itself gives:
/// computed here from the file with nothing of the replay's code but the
/// rule that a StockCode names one product, and compared exactly (pence,
/// units), for the net takings and the ten best-selling products.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replayed_sample_queries_to_the_csvs_own_totals() -> anyhow::Result<()> {
    use std::collections::HashMap;
    use tillstream_storage::{Bucket, Query, TopBy};

    let csv_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/online-retail-sample.csv");
    // The file's own totals: net units per product, net pence overall.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_path(&csv_path)?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow::anyhow!("no {name} column"))
    };
    let (stock, qty, price) = (col("StockCode")?, col("Quantity")?, col("UnitPrice")?);
    let mut units: HashMap<String, i64> = HashMap::new();
    let mut net_pence = 0i64;
    for row in reader.records() {
        let row = row?;
        let q: i64 = row[qty].trim().parse()?;
        // Pence from the decimal text: "2.1" is 210, "0.85" is 85.
        let (pounds, frac) = row[price]
            .trim()
            .split_once('.')
            .unwrap_or((row[price].trim(), ""));
        let frac = format!("{frac:0<2}");
        let p: i64 = pounds.parse::<i64>()? * 100 + frac[..2].parse::<i64>()?;
        *units
            .entry(row[stock].trim().to_ascii_uppercase())
            .or_default() += q;
        net_pence += q * p;
    }
    let mut best: Vec<i64> = units.values().copied().collect();
    best.sort_unstable_by(|a, b| b.cmp(a));
    best.truncate(10);

    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let path = csv_path.to_string_lossy().into_owned();
    let r = run(args(&["--replay-csv", &path, "--data-dir", &data])?).await?;
    assert!(r.ok, "{}", r.summary());
    let info = r
        .generator
        .csv
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no csv info"))?;
    assert!(
        info.bad_rows.is_empty(),
        "every sample row is valid, so the totals above are the replay's: {:?}",
        info.bad_rows
    );

    let store = tillstream_embedded::EmbeddedStore::open(&dir.path().join("store"))?;
    tillstream_engine::recover(&store)?;
    let buckets = store.sales_by_time(None, i64::MIN + 1, i64::MAX, Bucket::Day)?;
    let net: i64 = buckets.iter().map(|b| b.net).sum();
    assert_eq!(net, net_pence, "net takings in pence");
    let top = store.top_skus(None, i64::MIN + 1, i64::MAX, TopBy::Quantity, 10)?;
    let got: Vec<i64> = top.iter().map(|t| t.quantity).collect();
    assert_eq!(got, best, "net units of the ten best-selling products");

    // The replay named its products and stores: answers carry the
    // StockCode and Description of the CSV beside the hashed SKU id.
    let catalog = store.catalog()?;
    assert_eq!(catalog.products.len(), units.len());
    assert!(catalog.stores.iter().any(|s| s.name == "United Kingdom"));
    let q = tillstream_engine::questions::Question::TopSkus {
        store: None,
        range: Default::default(),
        by: TopBy::Quantity,
        limit: 1,
    };
    let answer = q.answer(&store)?;
    let code = answer[0]["sku_code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        units.get(&code).copied(),
        best.first().copied(),
        "{answer:?}"
    );
    assert!(
        answer[0]["sku_name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{answer:?}"
    );
    Ok(())
}

/// Refused events are counted by the code the server gave each: here a
/// server whose clock bound the fleet's events are past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_counted_by_the_servers_code() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut scfg = ServerConfig::new(dir.path());
    scfg.listen = "127.0.0.1:0".parse()?;
    scfg.shards = 1;
    scfg.max_clock_skew = Duration::from_secs(1);
    let server = Server::start(scfg).await?;
    let spec = FleetSpec {
        stores: 1,
        terminals_per_store: 2,
        sensors_per_store: 1,
        skus: 50,
        events: 300,
        seed: 1,
        // A minute ahead of the server's clock, which allows one second.
        start_us: now_us() + 60_000_000,
        step_us: 20,
    };
    let cfg = RunConfig {
        server: server.quic_addr(),
        seeds: Vec::new(),
        server_name: "localhost".into(),
        ca_pem: std::fs::read(server.cert_path())?,
        credentials: tillstream_loadgen::credentials::Credentials::of_server(&server)?,
        rate: 0.0,
        give_up_after: Duration::from_secs(60),
        max_inflight: 4,
        connect_wait: Duration::from_secs(10),
        endpoint: tillstream_client::EndpointOptions::default(),
    };
    let out = fleet::run(workload::build(&spec, 20, None)?, &cfg).await?;
    server.shutdown().await?;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.events_rejected, 300);
    let future = tillstream_protocol::RejectCode::FutureTimestamp.as_u16();
    assert_eq!(
        out.stats.rejected_by_code,
        std::collections::BTreeMap::from([(future, 300)])
    );
    Ok(())
}
