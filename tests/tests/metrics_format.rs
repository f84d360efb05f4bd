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
    assert!(out.status.success(), "promtool check metrics:\n{said}");
    // promtool's lint (exit 0) still names problems, such as a counter
    // without `_total`; there must be none.
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");

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
        "tillstream_flushes_total",
        // A latency histogram with sub-millisecond buckets.
        "tillstream_ack_latency_seconds_bucket{le=\"0.0005\"}",
    ] {
        assert!(body.contains(needed), "no {needed} in the scrape");
    }
    Ok(())
}
