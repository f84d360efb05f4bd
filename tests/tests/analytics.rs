//! Analytics reading the cluster: the shipped Online Retail sample
//! (`loadgen/tests/data/`) replayed into a server on the Cassandra cluster
//! and into one on the embedded store gives the same answers to `query`,
//! `export` and `verify`; and the CQL docs/operating/scylladb.md shows an analyst, run
//! with `cqlsh` against the cluster, agrees with `query`. The cluster's
//! test is compiled as ignored unless the cluster is named at build time
//! (as for `cluster.rs`) and `cqlsh` (PyPI `cqlsh`) is on PATH.
//!
//! And on the embedded store alone: stock history in event-time order.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::cluster::{Cluster, hold, serve_opts};
use crate::process::{SERVER_BIN, ServeOpts, ServerProcess};

/// The sample the CQL examples of docs/operating/scylladb.md name values of.
fn sample_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadgen/tests/data/online-retail-sample.csv")
}

/// Replays the sample into `server` and stops it once its tables hold
/// everything; the manifest of what was acknowledged is `manifest`.
async fn replay(server: ServerProcess, manifest: &Path) -> anyhow::Result<()> {
    let opts = server.opts.clone();
    let args = <tillstream_loadgen::cli::Args as clap::Parser>::try_parse_from(
        crate::crash::loadgen_target(&opts).into_iter().chain([
            format!("--replay-csv={}", sample_csv().display()),
            format!("--manifest={}", manifest.display()),
            "--run-id=1".into(),
        ]),
    )?;
    let report = tillstream_loadgen::run::run(args).await?;
    ensure!(report.ok, "the replay failed: {:?}", report.failures);
    ensure!(report.events_acked == report.events_total && report.events_total > 0);
    let (status, _) = server.terminate(Duration::from_secs(240))?;
    ensure!(status.success(), "serve exited with {status}");
    Ok(())
}

/// Store 28 is the United Kingdom in the sample, and SKU
/// 4359830775492328649 its StockCode 85123A (docs/operating/scylladb.md, "Query
/// the tables with CQL").
const UK: &str = "--store 28";
const SKU: &str = "--sku 4359830775492328649";
/// The whole sample, as CSV.
const YEAR: &str = "--from 2010-12-01 --to 2011-12-10 --format csv";

/// `tillstream <command> <store> <rest>` (`args` split at whitespace): its
/// standard output. The store's flags come before a `query` question,
/// whose own `--store` is a store number.
fn tillstream(args: &str, store: &[String]) -> anyhow::Result<String> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let (command, rest) = args.split_first().context("no command")?;
    let out = Command::new(SERVER_BIN)
        .arg(command)
        .args(store)
        .args(rest)
        .output()
        .context("running tillstream")?;
    ensure!(
        out.status.success(),
        "tillstream {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Columns that differ between two replays of the same data: the server's
/// clock (they ran at different moments), and in the exported table a
/// movement's stored level after it, which follows the order the tills'
/// batches happened to arrive in (`stock-history`'s levels, in event time,
/// do not, so its answers keep them: `PER_RUN[..4]`).
const PER_RUN: [&str; 5] = [
    "updated_at",
    "updated_at_us",
    "received_at",
    "received_at_us",
    "level_after",
];

/// The rows of a CSV answer with its header, in a fixed order (the
/// cluster hands rows back in token order, not key order), without the
/// `drop` columns (a plain split on commas: a quoted name holding one
/// shifts the columns of its line alike in both answers).
fn sorted_lines(csv: &str, drop: &[&str]) -> Vec<String> {
    let header: Vec<&str> = csv.lines().next().unwrap_or("").split(',').collect();
    let keep: Vec<bool> = header.iter().map(|h| !drop.contains(h)).collect();
    let mut lines: Vec<String> = csv
        .lines()
        .map(|l| {
            if keep.iter().all(|&k| k) {
                return l.to_owned();
            }
            l.split(',')
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    if lines.len() > 1 {
        lines[1..].sort_unstable();
    }
    lines
}

/// The CQL statements of the ScyllaDB guide's `cql` block, on keyspace
/// `ks`.
fn readme_cql(ks: &str) -> anyhow::Result<Vec<String>> {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/analytics/cql.md"),
    )?;
    let block = readme
        .split("```cql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .context("docs/analytics/cql.md has no ```cql block")?;
    let text: String = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(text
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("tillstream.", &format!("{ks}.")))
        .collect())
}

/// The rows `cqlsh` prints for `cql`, each as its cells.
fn cqlsh(c: &Cluster, cql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let host = c.nodes.split(',').next().unwrap_or("127.0.0.1:9042");
    let (addr, port) = host.rsplit_once(':').unwrap_or((host, "9042"));
    let out = Command::new("cqlsh")
        .args([addr, port, "--no-color", "--request-timeout=60", "-e", cql])
        .output()
        .context("running cqlsh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "cqlsh -e {cql:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A header, a line of dashes, the rows, a blank line, "(N rows)".
    Ok(stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('-'))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(cassandra_cluster, has_cqlsh)),
    ignore = "needs a Cassandra cluster of deploy/cassandra/run.sh (build with TILLSTREAM_SCYLLA_NODES and TILLSTREAM_CASSANDRA_DIR set) and cqlsh (PyPI cqlsh) on PATH"
)]
async fn the_online_retail_sample_reads_the_same_from_the_cluster() -> anyhow::Result<()> {
    let hold = hold()?;
    let c = &hold.cluster;
    let dir = tempfile::tempdir()?;

    let embedded = ServeOpts::new(
        &dir.path().join("embedded"),
        &dir.path().join("embedded.log"),
        2,
    )?;
    let embedded_manifest = dir.path().join("embedded.json");
    replay(ServerProcess::start(&embedded)?, &embedded_manifest).await?;
    let ks = c.keyspace("retail")?;
    let cluster = serve_opts(c, &dir.path().join("cluster"), &ks, "retail")?;
    let cluster_manifest = dir.path().join("cluster.json");
    replay(ServerProcess::start(&cluster)?, &cluster_manifest).await?;

    let on_embedded = vec![format!("--data-dir={}", embedded.data_dir.display())];
    let on_cluster: Vec<String> = c
        .scylla_flags(&ks, "retail")
        .into_iter()
        .filter(|f| f.starts_with("--store") || f.starts_with("--scylla-"))
        .filter(|f| !f.starts_with("--scylla-node-id"))
        .collect();
    for (store, manifest) in [
        (&on_embedded, &embedded_manifest),
        (&on_cluster, &cluster_manifest),
    ] {
        let m = manifest.display().to_string();
        let report: serde_json::Value =
            serde_json::from_str(&tillstream(&format!("verify --expected {m}"), store)?)?;
        ensure!(
            report["ok"] == true && report["events"].as_u64() > Some(0),
            "{report}"
        );
    }

    let questions = [
        format!("query sales --bucket day {YEAR}"),
        format!("query sales --bucket hour {UK} {YEAR}"),
        format!("query top-skus --by revenue --limit 25 {YEAR}"),
        format!("query stock-history {UK} {SKU} {YEAR}"),
        "query low-stock --below=-20 --format csv".into(),
        "query terminals --format csv".into(),
        "query watermarks --format csv".into(),
        format!("query basket-pairs --limit 20 {YEAR}"),
        "export --table sales --format csv".into(),
        "export --table sale_lines --format csv".into(),
        "export --table stock_movements --format csv".into(),
        "export --table device_batches --format csv".into(),
    ];
    for q in &questions {
        let (a, b) = (tillstream(q, &on_embedded)?, tillstream(q, &on_cluster)?);
        ensure!(a.lines().count() > 1, "{q} answered nothing: {a}");
        let drop = if q.starts_with("export") {
            &PER_RUN[..]
        } else {
            &PER_RUN[..4]
        };
        assert_eq!(
            sorted_lines(&a, drop),
            sorted_lines(&b, drop),
            "{q}: the embedded store, then the cluster"
        );
    }

    // The guide's CQL, straight on the cluster's tables.
    let statements = readme_cql(&ks)?;
    ensure!(statements.len() >= 4, "{statements:?}");
    let day = tillstream(
        &format!("query sales --bucket day {UK} --from 2010-12-01 --to 2010-12-02 --format json"),
        &on_cluster,
    )?;
    let day: serde_json::Value = serde_json::from_str(&day)?;
    let history = tillstream(
        &format!("query stock-history {UK} {SKU} --from 2010-12-01 --to 2011-01-01 --format csv"),
        &on_cluster,
    )?;
    for cql in &statements {
        let rows = cqlsh(c, cql)?;
        ensure!(!rows.is_empty(), "no rows for {cql}");
        if cql.contains("count(*)") {
            let (sales, gross) = (&rows[0][0], &rows[0][1]);
            assert_eq!(sales, &day[0]["sales"].to_string(), "{cql}");
            assert_eq!(gross, &day[0]["gross_minor"].to_string(), "{cql}");
        }
        if cql.contains("stock_movements") {
            assert_eq!(rows.len(), history.lines().count() - 1, "{cql}");
        }
    }
    Ok(())
}

/// A JSON id as its digits, whether written as a number or as a string
/// (ids past 2^53 are strings, so that no JSON parser rounds them).
fn id_text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The replayed sample's stock history agrees, row by row, with a running
/// sum of its movements in event-time order (the sample has no shelf
/// counts; a count would set the sum to what it counted), although its
/// tills' batches arrive in no particular order; and the last row's
/// level is the SKU's current one. Then what an analyst trips over
/// (issue 70): codes for ids, ids JSON keeps whole, names in exports,
/// negative thresholds, swapped bounds, `| head`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_history_levels_follow_event_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    replay(
        ServerProcess::start(&opts)?,
        &dir.path().join("manifest.json"),
    )
    .await?;
    let store = vec![format!("--data-dir={}", opts.data_dir.display())];
    let sku = SKU.trim_start_matches("--sku ");

    let history: Vec<serde_json::Value> = serde_json::from_str(&tillstream(
        &format!("query stock-history {UK} {SKU} --format json"),
        &store,
    )?)?;
    let mut moves: Vec<serde_json::Value> =
        tillstream("export --table stock_movements --format jsonl", &store)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
    moves.retain(|m| m["store"] == 28 && id_text(&m["sku"]) == sku);
    let order = |m: &serde_json::Value| {
        let k = &m["key"];
        (
            m["ts_us"].as_i64(),
            m["reason"] == "count_correction",
            id_text(&k["device"]).parse::<u64>().ok(),
            k["seq"].as_u64(),
            k["idx"].as_u64(),
            m["line"].as_u64(),
        )
    };
    moves.sort_by_key(order);
    ensure!(moves.len() > 10, "the sample moves 85123A in the UK often");
    let mut level = 0i64;
    let mut want = Vec::new();
    for m in &moves {
        level = match m["reason"].as_str() {
            Some("count_correction") => m["counted"].as_i64().context("counted")?,
            _ => level + m["delta"].as_i64().context("delta")?,
        };
        want.push((m["ts_us"].as_i64(), m["delta"].as_i64(), Some(level)));
    }
    let got: Vec<_> = history
        .iter()
        .map(|h| {
            (
                h["ts_us"].as_i64(),
                h["delta"].as_i64(),
                h["level_after"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "stock history, then the running sum in time order"
    );

    let low: Vec<serde_json::Value> = serde_json::from_str(&tillstream(
        &format!("query low-stock {UK} --below=0 --format json"),
        &store,
    )?)?;
    let current = low
        .iter()
        .find(|l| id_text(&l["sku"]) == sku)
        .context("85123A is below 0 in the UK")?;
    assert_eq!(current["level"].as_i64(), Some(level));

    // An analyst names the store and the product as the catalogue does.
    let named = Command::new(SERVER_BIN)
        .arg("query")
        .args(&store)
        .args(["stock-history", "--store", "united kingdom"])
        .args(["--sku", "85123a", "--format", "json"])
        .output()?;
    ensure!(named.status.success(), "{named:?}");
    let named: Vec<serde_json::Value> = serde_json::from_slice(&named.stdout)?;
    assert_eq!(named, history, "by code and name, then by ids");
    for row in &history {
        assert_eq!(row["sku"], sku, "a 64-bit id is a JSON string");
        assert_eq!(row["sku_code"], "85123A");
        assert_eq!(row["store_name"], "United Kingdom");
    }
    ensure!(
        moves.iter().all(|m| m["sku_code"] == "85123A"),
        "an export names its products"
    );
    // A threshold below zero needs no `=`; swapped bounds are an error.
    tillstream("query low-stock --below -125 --format json", &store)?;
    let swapped = tillstream(
        "query sales --from 2011-01-02 --to 2011-01-01 --format json",
        &store,
    );
    ensure!(
        swapped
            .as_ref()
            .is_err_and(|e| e.to_string().contains("the range is empty")),
        "{swapped:?}"
    );
    // A reader that goes away (`| head`) ends no command with an error.
    for args in [
        "query sales --bucket hour --format csv",
        "query sales --bucket hour --format json",
        "export --table sale_lines --format csv",
        "export --table sale_lines",
    ] {
        let (command, rest) = args.split_once(' ').context("no command")?;
        let mut child = Command::new(SERVER_BIN)
            .arg(command)
            .args(&store)
            .args(rest.split_whitespace())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && !stderr.contains("error"),
            "{args} into a closed pipe: {} {stderr}",
            out.status
        );
    }
    Ok(())
}

/// A user who may read a stopped server's data directory but not write
/// it is told exactly what reading needs (the embedded store opens only
/// for writing), not that a server might hold it.
#[test]
#[ignore = "needs root to run the tool as another user (runuser); .ci/run runs it as root"]
fn a_reader_without_write_access_is_told_what_it_needs() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    let (status, _) = ServerProcess::start(&opts)?.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "serve exited with {status}");
    // Readable by everyone (a tempdir is 0700), writable by its owner.
    for d in [dir.path(), &opts.data_dir, &opts.data_dir.join("store")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let bin = dir.path().join("tillstream");
    std::fs::copy(SERVER_BIN, &bin)?;
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["query", "--data-dir"])
        .arg(&opts.data_dir)
        .arg("watermarks")
        .output()
        .context("running runuser")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "nobody read it: {stderr}");
    ensure!(
        stderr.contains("needs write access") && !stderr.contains("stop it"),
        "{stderr}"
    );
    Ok(())
}
