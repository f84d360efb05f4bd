//! `/metrics` as Prometheus reads it: a real scrape of a server that
//! ingested a stream passes `promtool check metrics`, every metric has its
//! `# HELP`, histograms have buckets that fit what they measure, and the
//! build and process figures are there.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::crash::loadgen_args;
use crate::process::{ServeOpts, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool (Debian package prometheus) on PATH when built; .ci/run installs it"
)]
async fn a_real_scrape_passes_promtool_and_describes_every_metric() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let args = loadgen_args(&opts, &dir.path().join("acked.json"), 4_000, 0, 5)?;
    let report = tillstream_loadgen::run::run(args).await?;
    anyhow::ensure!(report.ok, "{:?}", report.failures);
    let (status, body) = server.get("/metrics")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");

    promtool_lints_clean(&body)?;
    let scrape = tillstream_engine::scrape::Scrape::parse(&body);

    // The report's CPU time is the server process's, read from this
    // endpoint over the run: at most what it has used by now.
    let cpu = report
        .cpu
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no CPU time in the report"))?;
    assert_eq!(cpu.scope, tillstream_loadgen::meter::CpuScope::Server);
    let total = scrape
        .get("tillstream_process_cpu_seconds")
        .ok_or_else(|| anyhow::anyhow!("no tillstream_process_cpu_seconds"))?;
    assert!(
        (0.0..=total).contains(&cpu.seconds),
        "{cpu:?}, server total {total}"
    );
    let per_event = cpu.seconds * 1e6 / report.events_acked as f64;
    assert!((cpu.us_per_event - per_event).abs() <= 0.0005, "{cpu:?}");

    // The report's server ack latency is the histogram's, read over the
    // run: a fresh server wrote every one of its Acks in it.
    let acks = report
        .server_ack_latency_ms
        .ok_or_else(|| anyhow::anyhow!("no server ack latency in the report"))?;
    let written = scrape
        .get("tillstream_ack_latency_seconds_count")
        .ok_or_else(|| anyhow::anyhow!("no tillstream_ack_latency_seconds_count"))?;
    assert_eq!(acks.count as f64, written, "{acks:?}");
    assert!(acks.p50 > 0.0 && acks.p50 <= acks.p99, "{acks:?}");
    // So are its journal appends: every group commit of this server.
    let appends = report
        .server_journal_appends_ms
        .ok_or_else(|| anyhow::anyhow!("no journal appends in the report"))?;
    let groups = scrape
        .get("tillstream_journal_append_duration_seconds_count")
        .ok_or_else(|| anyhow::anyhow!("no tillstream_journal_append_duration_seconds_count"))?;
    assert_eq!(appends.count as f64, groups, "{appends:?}");
    assert!(
        appends.count > 0 && appends.p50 <= appends.p99,
        "{appends:?}"
    );
    assert!(appends.over_100ms <= appends.over_50ms, "{appends:?}");

    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP"
        );
    }
    for needed in [
        "tillstream_build_info{version=",
        "tillstream_ready 1",
        "tillstream_store_poisoned 0",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "tillstream_process_cpu_seconds",
        "tillstream_flushes_total",
        // A latency histogram with sub-millisecond buckets.
        "tillstream_ack_latency_seconds_bucket{le=\"0.0005\"}",
    ] {
        assert!(body.contains(needed), "no {needed} in the scrape");
    }
    Ok(())
}

/// A scrape holds only what that run registered: the ScyllaDB driver's
/// gauges, say, appear only with `--store scylla`. So every name the
/// server can export goes through promtool's lint too (a word such as
/// "minutes" or "milliseconds" in a name fails it: base units only).
#[test]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool (Debian package prometheus) on PATH when built; .ci/run installs it"
)]
fn every_metric_the_server_can_export_passes_promtools_lint() -> anyhow::Result<()> {
    let mut body = String::new();
    let mut names = 0;
    for name in tillstream_engine::exported_metric_names() {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        body.push_str(&format!(
            "# HELP {name} a catalogued metric\n# TYPE {name} {kind}\n{name} 0\n"
        ));
        names += 1;
    }
    anyhow::ensure!(names > 50, "only {names} names in the catalogue");
    promtool_lints_clean(&body)
}

/// Runs `promtool check metrics` on an exposition: it must pass, and its
/// lint (which exits 0 while still naming problems, such as a counter
/// without `_total`) must say nothing.
fn promtool_lints_clean(body: &str) -> anyhow::Result<()> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    promtool
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(body.as_bytes())?;
    let out = promtool.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool check metrics:\n{said}");
    anyhow::ensure!(said.trim().is_empty(), "promtool check metrics:\n{said}");
    Ok(())
}
