//! The `tillstream` binary as an operator runs it: a real `serve` process,
//! devices streaming to it, the HTTP endpoints, a SIGTERM drain, then
//! `verify` and `query` on the data directory it left.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tillstream_client::client_endpoint;
use tillstream_tests::{DeviceScript, device, now_us, prepare, script};

mod common;

use common::{BIN, Serve, run, serve_banner};

fn serve(data: &Path) -> anyhow::Result<Serve> {
    serve_with(data, &[])
}

/// `serve`, with settings given as their `TILLSTREAM_*` variables.
fn serve_with(data: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<Serve> {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--shards",
        "2",
    ];
    Ok(serve_banner(data, &args, envs)?.0)
}

fn stream(data: &Path, quic: SocketAddr, scripts: &[DeviceScript]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ca = std::fs::read(data.join("tls/cert.pem"))?;
        let endpoint = client_endpoint(&ca, quic)?;
        for s in scripts {
            // Provisioned as an operator would: `tillstream token issue`.
            let (device_id, store) = (s.device.to_string(), s.store.to_string());
            let role = if s.till { "terminal" } else { "shelf-sensor" };
            let (code, token, err) = run(
                &[
                    "token", "issue", "--device", &device_id, "--store", &store, "--role", role,
                ],
                data,
            )?;
            anyhow::ensure!(code == 0, "token issue failed: {err}");
            let dev = device(&endpoint, quic, s.device, token.trim().as_bytes().to_vec());
            for b in prepare(s)? {
                dev.send(b).await?;
            }
            let last = s.batches.len() as u64;
            dev.wait_acked(last, Duration::from_secs(60)).await?;
            dev.close().await;
        }
        anyhow::Ok(())
    })
}

#[test]
fn serve_drain_verify_and_query_as_processes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = serve(&data)?;
    let t0 = now_us() - 7_200_000_000;
    let scripts: Vec<DeviceScript> = (0..3u64)
        .map(|i| script(500 + i, 4, i < 2, 10, 20, t0))
        .collect();
    stream(&data, server.quic, &scripts)?;

    let base = format!("http://{}", server.http);
    let ready = ureq::get(&format!("{base}/readyz")).call()?;
    assert_eq!(ready.status(), 200);
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()?
        .into_body()
        .read_to_string()?;
    assert!(
        metrics.contains("tillstream_batches_received_total 30"),
        "{metrics}"
    );
    // Per-shard gauges are taken when the shards start: they are exported
    // only if the recorder was installed before that.
    assert!(
        metrics.contains("tillstream_shard_inflight_bytes{shard=\"0\"}"),
        "{metrics}"
    );
    // The API wants a token: an analyst's, issued as an operator would.
    let (code, analyst, err) = run(&["token", "issue", "--role", "analyst"], &data)?;
    assert_eq!(code, 0, "{err}");
    let unauthorized = ureq::post(&format!("{base}/v1/verify")).send_json(serde_json::json!({}));
    assert!(
        matches!(unauthorized, Err(ureq::Error::StatusCode(401))),
        "{unauthorized:?}"
    );
    let report: serde_json::Value = ureq::post(&format!("{base}/v1/verify"))
        .header("Authorization", &format!("Bearer {}", analyst.trim()))
        .send_json(serde_json::json!({}))?
        .into_body()
        .read_json()?;
    assert_eq!(report["ok"], true, "{report}");

    // The query API of the live server (the verify above waited for its
    // tables to catch up): each answer is kept to compare with the same
    // question asked of the stopped server's data directory.
    let token = analyst.trim().to_string();
    let live = |q: &[&str]| -> anyhow::Result<String> {
        let mut args = vec![
            "query",
            "--server-http",
            base.as_str(),
            "--api-token",
            &token,
        ];
        args.extend(["--format", "json"]);
        args.extend(q);
        let (code, out, err) = run(&args, &data)?;
        anyhow::ensure!(code == 0, "query {q:?} over HTTP: {err}");
        Ok(out)
    };
    let low: serde_json::Value =
        serde_json::from_str(&live(&["low-stock", "--below", "1000000"])?)?;
    let (store, sku) = (
        low[0]["store"].to_string(),
        low[0]["sku"].as_str().unwrap_or_default().to_owned(),
    );
    let questions: Vec<Vec<&str>> = vec![
        vec!["sales", "--bucket", "hour"],
        vec!["top-skus", "--by", "quantity", "--limit", "5"],
        vec!["top-skus", "--store", &store],
        vec!["stock-history", "--store", &store, "--sku", &sku],
        vec!["low-stock", "--below", "1000000"],
        vec!["watermarks"],
        vec!["terminals"],
        vec!["health"],
        vec!["basket-pairs", "--min-baskets", "1"],
        vec!["dead-stock", "--days", "0"],
    ];
    let mut answers = Vec::new();
    for q in &questions {
        let out = live(q)?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        assert!(!rows.is_empty(), "{q:?} answered nothing live");
        answers.push(out);
    }
    // Without a token the API refuses; a bad parameter is a clear error.
    let (code, _, err) = run(&["query", "--server-http", &base, "watermarks"], &data)?;
    assert_eq!(code, 2);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(
        &[
            "query",
            "--server-http",
            &base,
            "--api-token",
            &token,
            "sales",
            "--from",
            "2011-02-31",
        ],
        &data,
    )?;
    assert_eq!(code, 2);
    assert!(err.contains("400") && err.contains("2011-02-31"), "{err}");
    let openapi: serde_json::Value = ureq::get(&format!("{base}/api/v1/openapi.json"))
        .call()?
        .into_body()
        .read_json()?;
    assert!(
        openapi["paths"]["/api/v1/top-skus"]["get"].is_object(),
        "{openapi}"
    );

    // SIGTERM drains and exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let mut exited = None;
    for _ in 0..150 {
        if let Some(s) = server.child.try_wait()? {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = exited.ok_or_else(|| anyhow::anyhow!("serve did not exit after SIGTERM"))?;
    assert!(exited.success(), "serve exited with {exited}");

    let (code, out, err) = run(&["verify"], &data)?;
    assert_eq!(code, 0, "verify failed: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["ok"], true);
    assert_eq!(v["missing"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["events"], 3 * 10 * 20);

    // Offline, the same questions get the same answers, byte for byte.
    for (q, live) in questions.iter().zip(&answers) {
        let mut args = vec!["query", "--format", "json"];
        args.extend(q);
        let (code, out, err) = run(&args, &data)?;
        assert_eq!(code, 0, "{err}");
        assert_eq!(&out, live, "query {q:?}: offline and live differ");
    }

    // A catalogue puts names beside the ids.
    let products = dir.path().join("products.csv");
    std::fs::write(
        &products,
        format!("code,name,category,sku\nTILL-{sku},Blue mug,kitchen,{sku}\n"),
    )?;
    let stores = dir.path().join("stores.csv");
    std::fs::write(
        &stores,
        format!("store,name,country\n{store},Lyon Part-Dieu,FR\n"),
    )?;
    for file in [&products, &stores] {
        let (code, _, err) = run(&["catalog", "import", &file.to_string_lossy()], &data)?;
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(
        &[
            "query",
            "--format",
            "json",
            "stock-history",
            "--store",
            &store,
            "--sku",
            &sku,
        ],
        &data,
    )?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(rows[0]["sku_name"], "Blue mug", "{out}");
    assert_eq!(rows[0]["sku_code"], format!("TILL-{sku}"));
    assert_eq!(rows[0]["store_name"], "Lyon Part-Dieu");

    // Export: the same rows as CSV and as JSON lines, filtered by time.
    let (code, csv, err) = run(
        &["export", "--table", "sale_lines", "--format", "csv"],
        &data,
    )?;
    assert_eq!(code, 0, "{err}");
    let (code, jsonl, err) = run(&["export", "--table", "sale_lines"], &data)?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(!lines.is_empty());
    assert_eq!(csv.lines().count(), lines.len() + 1, "CSV has a header row");
    assert!(
        csv.lines().next().is_some_and(|h| h.contains("ts_us")),
        "{csv}"
    );
    let mut times: Vec<i64> = lines.iter().filter_map(|l| l["ts_us"].as_i64()).collect();
    times.sort_unstable();
    let mid = times[times.len() / 2];
    let from = tillstream_storage::time::format_ts(mid);
    let (code, later, err) = run(&["export", "--table", "sale_lines", "--from", &from], &data)?;
    assert_eq!(code, 0, "{err}");
    let kept = later.lines().count();
    let expected = times
        .iter()
        .filter(|&&t| t >= mid - mid % 1_000_000)
        .count();
    assert_eq!(kept, expected, "--from {from}");
    let (code, _, err) = run(
        &["export", "--table", "stock_levels", "--from", &from],
        &data,
    )?;
    assert_eq!(code, 2, "an error, not a failed check");
    assert!(err.contains("no event time"), "{err}");

    let (code, out, err) = run(&["query", "--format", "json", "watermarks"], &data)?;
    assert_eq!(code, 0, "{err}");
    let w: serde_json::Value = serde_json::from_str(&out)?;
    let seqs: Vec<u64> = w
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(seqs, vec![10, 10, 10], "{out}");

    let (code, out, err) = run(
        &[
            "query", "--format", "csv", "sales", "--store", "4", "--bucket", "hour",
        ],
        &data,
    )?;
    assert_eq!(code, 0, "{err}");
    let mut rows = out.lines();
    let header = rows.next().unwrap_or_default();
    assert!(
        header.starts_with("store,start,start_us,sales,refunds"),
        "{header}"
    );
    let sales: u64 = rows
        .filter_map(|l| l.split(',').nth(3)?.parse::<u64>().ok())
        .sum();
    assert!(sales > 0, "{out}");

    let (code, out, _) = run(
        &[
            "query", "--format", "table", "top-skus", "--store", "4", "--limit", "3",
        ],
        &data,
    )?;
    assert_eq!(code, 0);
    assert!(out.contains("(3 rows)"), "{out}");
    Ok(())
}

#[test]
fn verify_explains_a_missing_data_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (code, _, err) = run(&["verify"], &dir.path().join("nowhere"))?;
    assert_eq!(code, 2, "an error, not a failed check");
    assert!(err.contains("no store at"), "{err}");
    Ok(())
}

/// `token rotate-key`, `token keys` and `token retire-key` on a data
/// directory, as an operator runs them between restarts: what each did is
/// printed, and each mistake is refused with the file or key it concerns.
#[test]
fn token_key_rotation_commands_say_what_they_did_and_refuse_mistakes() -> anyhow::Result<()> {
    use tillstream_auth::keys::{Verifier, previous_keys_dir};
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (code, _, err) = run(&["token", "rotate-key"], &data)?;
    assert!(code != 0 && err.contains("no signing key"), "{err}");

    let old = Verifier::load_or_create(&data)?
        .0
        .signing()
        .kid()
        .to_owned();
    let (code, out, err) = run(&["token", "rotate-key"], &data)?;
    assert_eq!(code, 0, "{err}");
    let new = Verifier::load(&data)?.signing().kid().to_owned();
    assert!(
        out.contains(&format!("old key {old}")) && out.contains(&format!("new key {new}")),
        "{out}"
    );
    assert!(err.contains("retire-key"), "says what comes next: {err}");
    let (code, out, err) = run(&["token", "keys"], &data)?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("signing   {new}")) && out.contains(&format!("accepted  {old}")),
        "{out}"
    );

    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key\n")?;
    let bad_arg = bad.display().to_string();
    let (code, _, err) = run(&["token", "rotate-key", "--new-key", &bad_arg], &data)?;
    assert!(code != 0 && err.contains("bad.pem"), "{err}");
    let (code, _, err) = run(&["token", "retire-key", "--kid", &new], &data)?;
    assert!(code != 0 && err.contains("is the signing key"), "{err}");
    let (code, _, err) = run(&["token", "retire-key", "--kid", "0123456789abcdef"], &data)?;
    assert!(
        code != 0 && err.contains(&old),
        "lists the accepted keys: {err}"
    );
    // A file among the accepted keys that holds none is named: a server
    // would not start with it.
    let junk = previous_keys_dir(&data).join("junk.key");
    std::fs::write(&junk, "junk\n")?;
    let (code, _, err) = run(&["token", "keys"], &data)?;
    assert!(code != 0 && err.contains("junk.key"), "{err}");
    std::fs::remove_file(&junk)?;

    let (code, _, err) = run(&["token", "retire-key", "--kid", &old], &data)?;
    assert_eq!(code, 0, "{err}");
    assert!(Verifier::load(&data)?.accepted().is_empty());
    Ok(())
}

/// `serve --journal-dir` keeps the journal in another directory, and
/// what is acknowledged survives a SIGKILL there: with rows held back
/// from the tables (a long flush interval), the acknowledged batches are
/// in that journal alone, and `verify`, not told where it is, finds them
/// through `store/wal`'s link. A start that names another directory is
/// refused and says where the journal is.
#[test]
fn the_journal_lives_where_it_is_told_and_survives_a_kill_there() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (data, journal) = (dir.path().join("data"), dir.path().join("fast/wal"));
    let envs = [
        ("TILLSTREAM_JOURNAL_DIR", journal.as_os_str()),
        (
            "TILLSTREAM_FLUSH_INTERVAL_MS",
            std::ffi::OsStr::new("600000"),
        ),
    ];
    let mut server = serve_with(&data, &envs)?;
    let t0 = now_us() - 7_200_000_000;
    let scripts: Vec<DeviceScript> = (0..2u64)
        .map(|i| script(700 + i, 5, true, 6, 10, t0))
        .collect();
    stream(&data, server.quic, &scripts)?;
    server.child.kill()?;
    server.child.wait()?;
    let segments = std::fs::read_dir(&journal)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension() == Some("wal".as_ref()))
        })
        .count();
    assert!(segments >= 1, "no segment in {}", journal.display());
    let link = std::fs::read_link(data.join("store/wal"))?;
    assert_eq!(link, std::fs::canonicalize(&journal)?);

    let acked: Vec<serde_json::Value> = scripts
        .iter()
        .flat_map(|s| {
            (1..=s.batches.len() as u64)
                .map(move |seq| serde_json::json!({"device": s.device, "seq": seq, "events": 10}))
        })
        .collect();
    let expected = dir.path().join("acked.json");
    std::fs::write(&expected, serde_json::to_vec(&acked)?)?;
    let path = expected.to_str().ok_or_else(|| anyhow::anyhow!("path"))?;
    let (code, out, err) = run(&["verify", "--expected", path], &data)?;
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["ok"], true, "{report}");

    // Another directory: refused at start, saying where the journal is
    // (any port: a start that were not refused would bind and serve).
    let elsewhere = dir.path().join("other");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--journal-dir")
        .arg(&elsewhere)
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("serve started with a second journal directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("links there"), "{err}");
    Ok(())
}

/// With no cluster where `--scylla-nodes` points, `serve`, `verify` and
/// `schema apply` fail at once with an error that names the address, and
/// `serve` leaves no half-started server behind.
#[test]
fn an_unreachable_scylla_cluster_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nodes = format!("127.0.0.1:{port}");
    let cluster = ["--store", "scylla", "--scylla-nodes", nodes.as_str()];
    for cmd in [&["serve", "--http", "off"][..], &["verify"][..]] {
        let args: Vec<&str> = cmd.iter().chain(&cluster).copied().collect();
        let (code, _, err) = run(&args, dir.path())?;
        assert_ne!(code, 0, "{cmd:?}");
        assert!(
            err.contains(&nodes) && err.contains("connecting"),
            "{cmd:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["schema", "apply", "--scylla-nodes", nodes.as_str()])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("applying the schema") && err.contains(&nodes),
        "{err}"
    );
    Ok(())
}

/// Completions and the man page come from the same definition as --help;
/// with `--log-format json` even the final error is a JSON line.
#[test]
fn completions_man_page_and_json_errors() -> anyhow::Result<()> {
    let out = Command::new(BIN).args(["completions", "bash"]).output()?;
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_tillstream()") && script.contains("--scylla-nodes"));
    let out = Command::new(BIN).arg("man").output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH tillstream"));

    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["--log-format", "json", "verify", "--data-dir"])
        .arg(dir.path().join("nowhere"))
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON: {line:?}: {e}"))?;
        assert_eq!(v["level"], "ERROR", "{line}");
    }
    assert!(stderr.contains("no store at"), "{stderr}");
    Ok(())
}
