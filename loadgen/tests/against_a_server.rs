//! The loadgen against a server elsewhere (`--server`, here another server
//! in this process): what it says, and when, if the server or its HTTP API
//! does not answer (issue 70, items 5 and 11).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tillstream_engine::{Server, ServerConfig};
use tillstream_loadgen::cli::Args;
use tillstream_loadgen::fleet::{self, RunConfig};
use tillstream_loadgen::generator::FleetSpec;
use tillstream_loadgen::run::run;
use tillstream_loadgen::workload;

/// How long the devices' QUIC handshake waits for an answer (their idle
/// timeout): a server that does not answer is named by then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server on loopback whose HTTP API is on a port of its own, not the
/// next one after its QUIC port.
async fn server(dir: &std::path::Path) -> anyhow::Result<Server> {
    let mut cfg = ServerConfig::new(dir);
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.http = Some("127.0.0.1:0".parse()?);
    cfg.shards = 1;
    Ok(Server::start(cfg).await?)
}

/// A small run against `quic`, trusting `server`'s certificate and, unless
/// `extra` says otherwise, signing tokens with its key.
fn args_for(server: &Server, quic: &str, extra: &[&str]) -> anyhow::Result<Args> {
    let cert = server.cert_path().to_string_lossy().into_owned();
    let key = server
        .signing_key_path()
        .context("the server signs tokens")?
        .to_string_lossy()
        .into_owned();
    let mut v = vec![
        "tillstream-loadgen",
        "--server",
        quic,
        "--ca",
        &cert,
        "--events",
        "300",
        "--stores",
        "1",
        "--terminals-per-store",
        "2",
        "--sensors-per-store",
        "1",
        "--batch-size",
        "20",
        "--give-up-after",
        "20",
    ];
    if !extra.contains(&"--auth") {
        v.extend(["--token-key", &key]);
    }
    v.extend_from_slice(extra);
    Ok(Args::try_parse_from(v)?)
}

/// Issue 70, item 5: `--http` defaulted to port 7401 whatever `--server`
/// said, and `--verify` failed once the whole run was streamed. Now the
/// address is checked first, and the error names it and `--http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_whose_http_api_does_not_answer_fails_before_streaming() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let quic = server.quic_addr();
    let http = server.http_addr().context("the server serves HTTP")?;
    anyhow::ensure!(
        http.port() != quic.port() + 1,
        "the ports happen to pair; nothing to test"
    );
    let derived = format!("http://127.0.0.1:{}", quic.port() + 1);
    let got = run(args_for(&server, &quic.to_string(), &["--verify"])?).await;
    let summary = got.as_ref().map(|r| r.summary()).unwrap_or_default();
    let err = got
        .err()
        .with_context(|| format!("the run should have failed before streaming:\n{summary}"))?;
    let text = format!("{err:#}");
    assert!(text.contains(&derived) && text.contains("--http"), "{text}");
    server.tables_caught_up(Duration::from_secs(10)).await;
    assert!(
        server.store().watermarks()?.is_empty(),
        "no device sent anything"
    );

    // With --http, the same run verifies.
    let url = format!("http://{http}");
    let r = run(args_for(
        &server,
        &quic.to_string(),
        &["--verify", "--http", &url],
    )?)
    .await?;
    assert!(r.ok, "{}", r.summary());
    server.shutdown().await?;
    Ok(())
}

/// Issue 70, item 11: a loadgen whose server does not answer said nothing
/// of it, and failed 30 s later. Now it names the address and why, within
/// a few handshake timeouts, before it prepares or sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_is_named_before_anything_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    // A UDP port held by a socket that never answers: a server gone
    // quiet, or a firewall that drops.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?;
    let started = Instant::now();
    let got = run(args_for(&server, &addr.to_string(), &["--auth", "none"])?).await;
    let elapsed = started.elapsed();
    let summary = got.as_ref().map(|r| r.summary()).unwrap_or_default();
    let err = got
        .err()
        .with_context(|| format!("the run should not have started:\n{summary}"))?;
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("cannot connect to {addr}")),
        "{text}"
    );
    assert!(elapsed < 3 * HANDSHAKE_TIMEOUT, "{elapsed:?}: {text}");
    server.shutdown().await?;
    Ok(())
}

/// `--server` takes the nodes of a cluster, comma-separated: every
/// device gets them all as seeds, so one that does not answer (the first,
/// here) costs the devices that start there one handshake timeout, and
/// the run goes on at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_servers_survives_a_silent_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let list = format!("{},{}", silent.local_addr()?, server.quic_addr());
    let r = run(args_for(&server, &list, &[])?).await?;
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.events_acked, 300);
    assert_eq!(r.redirects, 0, "a single node owns every store");
    server.shutdown().await?;
    Ok(())
}

/// Issue 70, item 11: "gave up after 5 s" came after 17 s, the wait for
/// connections and the teardown on top. A fleet now gives up within its
/// stated time of its first dial, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_gives_up_in_the_time_it_states() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?;
    let give_up = Duration::from_secs(3);
    let spec = FleetSpec {
        stores: 1,
        terminals_per_store: 3,
        sensors_per_store: 0,
        skus: 50,
        events: 300,
        seed: 1,
        start_us: 1_767_225_600_000_000,
        step_us: 20,
    };
    let cfg = RunConfig {
        server: addr,
        seeds: Vec::new(),
        server_name: "localhost".into(),
        ca_pem: std::fs::read(server.cert_path())?,
        credentials: tillstream_loadgen::credentials::Credentials::None,
        rate: 0.0,
        give_up_after: give_up,
        max_inflight: 1,
        connect_wait: Duration::from_secs(10),
        endpoint: tillstream_client::EndpointOptions::default(),
    };
    let started = Instant::now();
    let got = fleet::run(workload::build(&spec, 20, None)?, &cfg).await;
    let elapsed = started.elapsed();
    let text = match got {
        Ok(out) => out.failures.join("; "),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        text.contains(&format!("cannot connect to {addr}")),
        "{text}"
    );
    assert!(text.contains("3 s"), "{text}");
    assert!(elapsed < 3 * give_up, "{elapsed:?}: {text}");
    server.shutdown().await?;
    Ok(())
}
