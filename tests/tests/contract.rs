//! The HTTP API against its OpenAPI document, on a real server holding
//! the shipped Online Retail sample (issue 70, items 12 and 13):
//!
//! - every endpoint's live answer is held to the document's schema for
//!   it (each field documented, of its type; none missing), and the
//!   refusals are the document's `{"error"}` bodies;
//! - schemathesis (PyPI), the contract fuzzer that found the document
//!   promising more than the server took, runs every check against the
//!   live server with an analyst's token, and finds nothing. Compiled as
//!   ignored unless `TILLSTREAM_SCHEMATHESIS` named its `st` when this
//!   crate was built (`.ci/run` installs it; see `tests/build.rs`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tillstream_engine::questions::{ENDPOINTS, check::check, openapi};

use crate::process::{ServeOpts, ServerProcess};

/// A server with the sample replayed into it, and an analyst's token.
async fn sample_server(dir: &Path) -> anyhow::Result<(ServerProcess, String)> {
    let opts = ServeOpts::new(&dir.join("data"), &dir.join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../loadgen/tests/data/online-retail-sample.csv");
    let args = <tillstream_loadgen::cli::Args as clap::Parser>::try_parse_from(
        crate::crash::loadgen_target(&opts).into_iter().chain([
            format!("--replay-csv={}", csv.display()),
            "--run-id=1".into(),
        ]),
    )?;
    // The loadgen verifies through the server at the end, which waits for
    // its tables to hold everything acknowledged: the answers are whole.
    let report = tillstream_loadgen::run::run(args).await?;
    ensure!(report.ok, "the replay failed: {:?}", report.failures);
    let key = opts.data_dir.join(tillstream_auth::token::SIGNING_KEY);
    let analyst = tillstream_tests::Tokens::from_key(&key)?.api(tillstream_auth::Role::Analyst)?;
    Ok((server, analyst))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// `method url` with the token and JSON body, if any: the status, the
/// content type and the body as JSON (`Value::String` of the text when it
/// is not JSON).
fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String, Value)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let agent = agent();
    let mut resp = match (method, body) {
        ("POST", Some(b)) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(b)?
        }
        ("POST", None) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_empty()?
        }
        ("DELETE", _) => agent.delete(url).call()?,
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()?
        }
    };
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, kind, body))
}

/// The schema the document gives `method path`'s answer of `status`.
fn answer_schema(doc: &Value, path: &str, method: &str, status: u16) -> anyhow::Result<Value> {
    let mut r = doc["paths"][path][method]["responses"][status.to_string()].clone();
    if let Some(p) = r["$ref"].as_str() {
        r = doc
            .pointer(p.trim_start_matches('#'))
            .cloned()
            .context("a dangling $ref")?;
    }
    r["content"]["application/json"]["schema"]
        .as_object()
        .map(|s| Value::Object(s.clone()))
        .with_context(|| format!("{method} {path}: no JSON schema for {status}"))
}

/// Every endpoint's answer on the sample is what the document says it is,
/// and so is each kind of refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_answer_is_what_the_document_says() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, analyst) = sample_server(dir.path()).await?;
    let base = server.opts.http_url();
    let doc = openapi();
    let served = tokio::task::spawn_blocking({
        let base = base.clone();
        move || call("GET", &format!("{base}/api/v1/openapi.json"), None, None)
    })
    .await??;
    assert_eq!(
        served.2, doc,
        "the server serves the document this build makes"
    );

    let checks = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let t = Some(analyst.as_str());
        // The query API, with the parameters' examples (the sample's
        // store, product and year) and without.
        for e in ENDPOINTS {
            let path = format!("/api/v1/{}", e.name);
            let schema = answer_schema(&doc, &path, "get", 200)?;
            let example: Vec<String> = e
                .params
                .iter()
                .filter_map(|p| {
                    p.example
                        .map(|v| format!("{}={}", p.name, v.replace(' ', "%20")))
                })
                .collect();
            let required: Vec<String> = e
                .params
                .iter()
                .filter(|p| p.required)
                .filter_map(|p| {
                    p.example
                        .map(|v| format!("{}={}", p.name, v.replace(' ', "%20")))
                })
                .collect();
            let mut rows = 0;
            for query in [example.join("&"), required.join("&")] {
                let (status, kind, body) = call("GET", &format!("{base}{path}?{query}"), t, None)?;
                ensure!(status == 200, "{path}?{query}: {status} {body}");
                ensure!(kind.starts_with("application/json"), "{path}: {kind}");
                check(&doc, &schema, &body)
                    .map_err(|why| anyhow::anyhow!("{path}?{query}: {why}"))?;
                rows += body.as_array().map_or(0, Vec::len);
            }
            // The sample has no health reports (its tills send none), and
            // no deliveries: no SKU has stock, none is dead stock. The
            // engine's own test holds rows of both to the document.
            let none_here = ["health", "dead-stock"].contains(&e.name);
            ensure!(
                rows > 0 || none_here,
                "{path} answered no rows on the sample"
            );
        }
        // `/v1/*` and the probes.
        for (method, path, body) in [
            ("get", "/v1/settings", None),
            ("get", "/v1/watermarks", None),
            ("post", "/v1/verify", None),
            ("post", "/v1/verify", Some(json!({ "expected": [] }))),
        ] {
            let (status, _, answer) = call(
                &method.to_uppercase(),
                &format!("{base}{path}"),
                t,
                body.as_ref(),
            )?;
            ensure!(status == 200, "{method} {path}: {status} {answer}");
            check(&doc, &answer_schema(&doc, path, method, 200)?, &answer)
                .map_err(|why| anyhow::anyhow!("{method} {path}: {why}"))?;
        }
        let (status, kind, _) = call("GET", &format!("{base}/metrics"), None, None)?;
        ensure!(
            status == 200 && kind.starts_with("text/plain"),
            "/metrics: {status} {kind}"
        );
        // Refusals: each status the document names, with its body.
        let error = json!({ "$ref": "#/components/schemas/Error" });
        for (method, url, token, body, want) in [
            ("GET", format!("{base}/api/v1/sales"), None, None, 401),
            (
                "GET",
                format!("{base}/api/v1/sales?bucket=week"),
                t,
                None,
                400,
            ),
            (
                "GET",
                format!("{base}/api/v1/sales?bucket=day&bucket=hour"),
                t,
                None,
                400,
            ),
            (
                "GET",
                format!("{base}/api/v1/sales?from=2011-02-30"),
                t,
                None,
                400,
            ),
            (
                "GET",
                format!("{base}/api/v1/sales?store=Narnia"),
                t,
                None,
                404,
            ),
            ("GET", format!("{base}/api/v1/nope"), t, None, 404),
            ("GET", format!("{base}/nowhere"), t, None, 404),
            ("DELETE", format!("{base}/api/v1/sales"), t, None, 405),
            (
                "POST",
                format!("{base}/v1/catalog"),
                t,
                Some(json!({ "x": 1 })),
                403,
            ),
            (
                "POST",
                format!("{base}/v1/verify"),
                t,
                Some(json!({ "expected": 1 })),
                400,
            ),
            (
                "POST",
                format!("{base}/v1/verify"),
                t,
                Some(json!({ "unknown": 1 })),
                400,
            ),
        ] {
            let (status, kind, answer) = call(method, &url, token, body.as_ref())?;
            ensure!(
                status == want,
                "{method} {url}: {status}, not {want}: {answer}"
            );
            ensure!(
                kind.starts_with("application/json"),
                "{method} {url}: {kind}"
            );
            check(&doc, &error, &answer).map_err(|why| anyhow::anyhow!("{method} {url}: {why}"))?;
        }
        Ok(())
    });
    checks.await??;
    drop(server);
    Ok(())
}

/// schemathesis: every check, positive and negative data, over every
/// operation of the document, against the live server; exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_schemathesis),
    ignore = "needs schemathesis (PyPI): build with TILLSTREAM_SCHEMATHESIS naming its `st` (.ci/run installs it)"
)]
async fn schemathesis_finds_the_server_true_to_its_document() -> anyhow::Result<()> {
    let st = option_env!("TILLSTREAM_SCHEMATHESIS").unwrap_or("st");
    let dir = tempfile::tempdir()?;
    let (server, analyst) = sample_server(dir.path()).await?;
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    // A fixed seed: what CI finds, a person finds again. Another through
    // TILLSTREAM_SCHEMATHESIS_SEED.
    let seed = std::env::var("TILLSTREAM_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261129".into());
    let url = format!("{}/api/v1/openapi.json", server.opts.http_url());
    let started = std::time::Instant::now();
    // Its output to files, polled with a deadline: std's `Command` has no
    // timeout of its own, and a hung run must not hang CI.
    let (out_path, err_path) = (dir.path().join("st.out"), dir.path().join("st.err"));
    let mut child = std::process::Command::new(st)
        .args([
            "--no-color",
            "run",
            &url,
            "--checks",
            "all",
            "--max-examples",
            "25",
        ])
        .args(["--workers", "2", "--seed", &seed, "--request-timeout", "60"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {analyst}"))
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "tillstream_contract")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("running {st}"))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "schemathesis ran past 5 minutes:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = std::fs::read_to_string(&out_path)?;
    let stderr = std::fs::read_to_string(&err_path)?;
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains(" SUMMARY "))
        .collect();
    println!(
        "schemathesis ({st}, seed {seed}) in {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    ensure!(
        status.success(),
        "schemathesis exited {status}:\n{stdout}\n{stderr}"
    );
    ensure!(stdout.contains("passed"), "no test case passed:\n{stdout}");
    drop(server);
    Ok(())
}
