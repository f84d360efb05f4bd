//! What `deploy/` hands an operator, checked against the server it
//! deploys: the Prometheus files pass promtool and their alerts fire when
//! they should, the dashboard and the alerts name only metrics a real
//! scrape holds, the Kubernetes manifests parse and their probes, ports
//! and settings are the server's own, and the compose file parses and
//! mounts files that exist. No container engine runs here: nothing is
//! started from these files (deploy/README.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::crash::loadgen_args;
use crate::process::{ServeOpts, ServerProcess};

mod kubernetes;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_docs(path: &Path) -> anyhow::Result<Vec<Yaml>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    YamlLoader::load_from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn str_of(y: &Yaml) -> Option<&str> {
    y.as_str()
}

/// The metric names in a PromQL expression (`tillstream_*`, `process_*`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["tillstream_", "process_"] {
        for (at, _) in expr.match_indices(prefix) {
            let before = expr[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> anyhow::Result<Vec<String>> {
    let path = deploy_dir().join("grafana/dashboards/tillstream.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut out = Vec::new();
    let panels = dash["panels"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no panels"))?;
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    Ok(out)
}

/// Every alert's `expr` in alerts.yml, by alert name.
fn alert_exprs() -> anyhow::Result<Vec<(String, String)>> {
    let docs = yaml_docs(&deploy_dir().join("prometheus/alerts.yml"))?;
    let mut out = Vec::new();
    for group in docs[0]["groups"].as_vec().into_iter().flatten() {
        for rule in group["rules"].as_vec().into_iter().flatten() {
            let name = str_of(&rule["alert"]).unwrap_or_default().to_owned();
            let expr = str_of(&rule["expr"]).unwrap_or_default().to_owned();
            out.push((name, expr));
        }
    }
    Ok(out)
}

#[test]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool (Debian package prometheus) on PATH when built; .ci/run installs it"
)]
fn prometheus_files_pass_promtool_and_each_alert_fires_when_it_should() -> anyhow::Result<()> {
    let dir = deploy_dir().join("prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        // Each alert fed the series that must raise it, and a healthy node.
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()?;
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The expected alerts cover every rule.
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml"))?;
    for (alert, _) in alert_exprs()? {
        if alert != "TillstreamConfigReloadFailed" {
            assert!(
                tests.contains(&alert),
                "alerts_test.yml never tests {alert}"
            );
        }
    }
    Ok(())
}

/// The dashboard and the alert rules refer only to metrics a running
/// server exports: a scrape after a real stream. ScyllaDB's driver
/// figures appear only with `--store scylla`, and the cluster's gauges and
/// histograms only with `--cluster` (which needs ScyllaDB), so those must
/// be among the names the server describes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_a_real_scrape_holds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let args = loadgen_args(&opts, &dir.path().join("acked.json"), 2_000, 0, 3)?;
    let report = tillstream_loadgen::run::run(args).await?;
    anyhow::ensure!(report.ok, "{:?}", report.failures);
    // The paths the Kubernetes probes ask answer 200 on a serving node.
    for path in kubernetes::probe_paths()? {
        assert_eq!(server.get(&path)?.0, 200, "{path}");
    }
    // The rows reach the tables within a flush interval of their acks,
    // and the write histograms hold samples only once a write has run.
    anyhow::ensure!(
        server
            .wait_metric("tillstream_flushes_total", 1.0, Duration::from_secs(30))
            .is_some(),
        "no write of the tables 30 s after the stream"
    );
    let (status, body) = server.get("/metrics")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let scraped: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let described: BTreeSet<&str> = tillstream_engine::exported_metric_names().collect();

    let mut exprs = dashboard_exprs()?;
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    exprs.extend(alert_exprs()?.into_iter().map(|(_, e)| e));
    let mut unknown = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let ok = scraped.contains(name.as_str())
                || (name.starts_with("tillstream_scylla_") && described.contains(name.as_str()))
                || (name.starts_with("tillstream_cluster_")
                    && described.contains(histogram_base(&name)));
            if !ok {
                unknown.insert(name);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "named by the dashboard or alerts but not on /metrics: {unknown:?}"
    );
    // What the issue asks the dashboard to show is there.
    let all = exprs.join("\n");
    for needed in [
        "tillstream_events_received_total",
        "tillstream_ack_latency_seconds_bucket",
        "tillstream_shard_inflight_bytes",
        "tillstream_flush_duration_seconds_bucket",
        "tillstream_events_rejected_total",
        "tillstream_connections_active",
        "tillstream_flush_failures_total",
        "tillstream_cluster_members",
        "tillstream_cluster_stores_owned",
        "tillstream_cluster_handoffs_total",
        "tillstream_cluster_adoptions_total",
        "tillstream_cluster_redirects_total",
    ] {
        assert!(all.contains(needed), "nothing shows {needed}");
    }
    Ok(())
}

/// A histogram's name without the suffix of its series (`_bucket`,
/// `_sum`, `_count`).
fn histogram_base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// compose.yaml parses, has the services the README names, mounts files
/// that exist, sets variables serve reads, and Prometheus scrapes the
/// server where compose runs it.
#[test]
fn compose_file_parses_and_mounts_files_that_exist() -> anyhow::Result<()> {
    let dir = deploy_dir();
    let compose = &yaml_docs(&dir.join("compose.yaml"))?[0];
    let services = compose["services"]
        .as_hash()
        .ok_or_else(|| anyhow::anyhow!("no services"))?;
    let names: BTreeSet<&str> = services.keys().filter_map(str_of).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "scylla",
            "schema",
            "tillstream",
            "prometheus",
            "grafana",
            "loadgen"
        ])
    );
    for (name, svc) in services {
        for v in svc["volumes"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(str_of)
        {
            if let Some(rel) = v.strip_prefix("./") {
                let host = rel.split(':').next().unwrap_or_default();
                assert!(dir.join(host).exists(), "{name:?} mounts missing {host}");
            }
        }
    }
    let loadgen = &compose["services"]["loadgen"];
    assert_eq!(str_of(&loadgen["profiles"][0]), Some("bench"));
    let serve_vars = kubernetes::env_vars_of(&["serve"])?;
    for (k, _) in compose["services"]["tillstream"]["environment"]
        .as_hash()
        .into_iter()
        .flatten()
    {
        let k = str_of(k).unwrap_or_default();
        assert!(serve_vars.contains(k), "serve reads no {k}");
    }
    let prom = &yaml_docs(&dir.join("prometheus/prometheus.yml"))?[0];
    let target = str_of(&prom["scrape_configs"][0]["static_configs"][0]["targets"][0]);
    assert_eq!(target, Some("tillstream:7401"));
    assert!(
        compose["services"]["tillstream"]["ports"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(str_of)
            .any(|p| p.ends_with(":7401/tcp")),
        "compose publishes the HTTP port Prometheus scrapes"
    );
    // The Dockerfile builds with a toolchain the workspace accepts and
    // checks health where the server answers.
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
    assert!(dockerfile.contains("EXPOSE 7400/udp 7401/tcp"));
    assert!(dockerfile.contains("http://127.0.0.1:7401/healthz"));
    let cargo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))?;
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| anyhow::anyhow!("no rust-version"))?;
    assert!(
        dockerfile.contains(&format!("FROM rust:{msrv}")),
        "the build image is not rust:{msrv}"
    );
    Ok(())
}
