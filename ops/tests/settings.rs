//! `serve`'s settings as an operator gives them: the config file against
//! the variables and flags, `check-config` and `serve` judging a file
//! alike, host names, ports in use, the HTTP API's 405s and banner, and
//! `--print-config`.

use std::path::Path;
use std::process::Command;

mod common;

use common::{BIN, run, serve_banner};

/// The config file: a flag beats its variable, which beats the file, which
/// beats the default; check-config names a bad key and exits 78, and
/// refuses a port that is taken.
#[test]
fn a_config_file_sits_between_the_variables_and_the_defaults() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tillstream.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\nhttp = \"off\"\nmax-connections = 500\n\
             max_clock_skew_s = 60\nidle-timeout-s = 45\nscylla-password = \"hunter2\"\n"
        ),
    )?;
    let print = |extra: &[&str], env: Option<(&str, &str)>| -> anyhow::Result<String> {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&file)
            .args(extra)
            .arg("--print-config");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let shown = print(
        &["--max-connections", "7"],
        Some(("TILLSTREAM_IDLE_TIMEOUT_S", "99")),
    )?;
    for line in [
        "max-connections = 7  # flag",
        "idle-timeout-s = 99  # env",
        "max-clock-skew-s = 60  # file",
        "max-frame-buffers-mib = 256  # default",
        "scylla-password = \"<redacted>\"  # file",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line:?} in\n{shown}");
    }
    assert!(!shown.contains("hunter2"));

    let check = |path: &Path| -> anyhow::Result<(i32, String)> {
        let out = Command::new(BIN).arg("check-config").arg(path).output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, err) = check(&file)?;
    assert_eq!(code, 0, "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max-conections = 5\n")?;
    let (code, err) = check(&bad)?;
    assert_eq!(code, 78);
    assert!(err.contains("unknown key `max-conections`"), "{err}");
    std::fs::write(&bad, "quic-window-kib = 1\n")?;
    let (code, err) = check(&bad)?;
    assert_eq!(code, 78);
    assert!(err.contains("quic-window-kib"), "{err}");
    // A port in use is a config error too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    std::fs::write(&bad, format!("http = \"{}\"\n", taken.local_addr()?))?;
    let (code, err) = check(&bad)?;
    assert_eq!(code, 78);
    assert!(err.contains("`http`"), "{err}");
    Ok(())
}

/// `check-config FILE` and `serve --config FILE` judge a file the same
/// way: every bad key is named (a misspelt one with the key it likely
/// meant), each error is printed once, and both exit 78.
#[test]
fn check_config_and_serve_refuse_the_same_keys_all_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tillstream.toml");
    std::fs::write(
        &file,
        "max-conections = 5\nshards = 0\nquic-window-kib = 1\nhttp = \"off\"\n",
    )?;
    let data = dir.path().join("data");
    let check = Command::new(BIN).arg("check-config").arg(&file).output()?;
    let serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    for (what, out) in [("check-config", &check), ("serve", &serve)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {err}");
        for says in [
            "unknown key `max-conections` (did you mean `max-connections`?)",
            "`shards`",
            "`quic-window-kib`",
        ] {
            assert!(err.contains(says), "{what}: no {says:?} in\n{err}");
        }
        for line in err.lines() {
            assert!(line.matches("error").count() <= 1, "{what}: {line}");
        }
        assert!(!err.contains("--help"), "{what}: {err}");
    }
    assert!(!data.exists(), "serve made its data directory");

    // What only serve refused before: no shard at all.
    std::fs::write(&file, "shards = 0\nhttp = \"off\"\n")?;
    let out = Command::new(BIN)
        .args(["check-config", "--no-environment"])
        .arg(&file)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("`shards`"), "{err}");
    Ok(())
}

/// `--listen` and `--http` take host names, and serve says what each
/// resolved to.
#[test]
fn serve_listens_on_host_names_and_says_where() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, lines) = serve_banner(
        &dir.path().join("data"),
        &["--listen", "localhost:0", "--http", "localhost:0"],
        &[],
    )?;
    let all = lines.join("\n");
    assert!(server.quic.ip().is_loopback(), "{all}");
    assert!(server.http.ip().is_loopback(), "{all}");
    for flag in ["--listen localhost:0", "--http localhost:0"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(flag) && l.contains("resolved to")),
            "no line says what {flag} resolved to:\n{all}"
        );
    }
    Ok(())
}

/// A port in use stops serve before it makes anything in the data
/// directory, with one error naming the flag and the port.
#[test]
fn a_port_in_use_is_refused_before_the_data_directory_is_made() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (udp_at, tcp_at) = (udp.local_addr()?.to_string(), tcp.local_addr()?.to_string());
    for (flag, args) in [
        ("--listen", ["--listen", udp_at.as_str(), "--http", "off"]),
        (
            "--http",
            ["--listen", "127.0.0.1:0", "--http", tcp_at.as_str()],
        ),
    ] {
        let data = dir.path().join(flag.trim_start_matches('-'));
        let (code, _, err) = run(&[&["serve"][..], &args[..]].concat(), &data)?;
        assert_ne!(code, 0, "{flag}: {err}");
        assert!(!data.exists(), "{flag}: the data directory was made");
        let port = if flag == "--listen" { &udp_at } else { &tcp_at };
        assert!(err.contains(flag) && err.contains(port.as_str()), "{err}");
        assert_eq!(err.matches("os error").count(), 1, "{err}");
    }
    Ok(())
}

/// A method the HTTP API does not take on a path is a 405 that says
/// which it takes, in the header and in a JSON body; the banner names
/// the query API and its OpenAPI document.
#[test]
fn a_wrong_method_is_a_json_405_and_the_banner_names_the_query_api() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, lines) = serve_banner(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        &[],
    )?;
    let banner = lines
        .iter()
        .find(|l| l.starts_with("HTTP API on"))
        .cloned()
        .unwrap_or_default();
    assert!(
        banner.contains("/api/v1/") && banner.contains("/api/v1/openapi.json"),
        "{banner}"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://{}", server.http);
    for (method, path, allowed) in [
        ("GET", "/v1/verify", "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/api/v1/sales", "GET"),
    ] {
        let mut response = match method {
            "GET" => agent.get(&format!("{base}{path}")).call()?,
            "POST" => agent.post(&format!("{base}{path}")).send_empty()?,
            _ => agent.delete(&format!("{base}{path}")).call()?,
        };
        assert_eq!(response.status(), 405, "{method} {path}");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow:?}");
        let body: serde_json::Value = response.body_mut().read_json()?;
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(allowed), "{method} {path}: {body}");
    }
    Ok(())
}

/// `--print-config` shows every key a config file may set, set or not,
/// and what it prints is a config file check-config accepts.
#[test]
fn print_config_shows_every_key_and_reads_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["serve", "--print-config"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [
        "auth",
        "audit-log",
        "max-handshakes",
        "shards",
        "journal-dir",
    ] {
        assert!(
            shown.lines().any(|l| {
                let l = l.trim_start_matches("# ");
                l.starts_with(&format!("{key} ")) || l.starts_with(&format!("{key}:"))
            }),
            "no {key} in\n{shown}"
        );
    }
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &shown)?;
    let out = Command::new(BIN)
        .args(["check-config", "--no-environment"])
        .arg(&file)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
