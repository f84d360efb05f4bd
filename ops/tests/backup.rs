//! `tillstream backup` and `restore` carry the credentials (issue 70,
//! item 3): a server restored on a new machine is the same server to its
//! devices. Its signing key, TLS pair, device CA and revocation list come
//! back with the store, the secret files kept private; `--no-credentials`
//! leaves them out and says what that costs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tillstream_client::client_endpoint;
use tillstream_tests::{DeviceScript, device_with, now_us, prepare, script};

mod common;

use common::{BIN, Serve, run, serve_banner};

/// What a backup holds of a server that made a device CA and revoked a
/// credential: every credential but none of the others' files.
const NAMES: [&str; 6] = [
    "signing_key",
    "tls_cert",
    "tls_key",
    "device_ca_cert",
    "device_ca_key",
    "revocation_list",
];

/// Each credential's place below a data directory, where `serve` finds it.
const PLACES: [(&str, &str); 6] = [
    ("signing_key", "auth/signing.key"),
    ("tls_cert", "tls/cert.pem"),
    ("tls_key", "tls/key.pem"),
    ("device_ca_cert", "auth/ca/ca.pem"),
    ("device_ca_key", "auth/ca/ca.key"),
    ("revocation_list", "auth/revoked.jsonl"),
];

fn serve(data: &Path) -> anyhow::Result<Serve> {
    let args = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let more = ["--shards", "1", "--revocation-poll-ms", "50"];
    Ok(serve_banner(data, &[&args[..], &more[..]].concat(), &[])?.0)
}

/// `tillstream ARGS` without a data directory: its output.
fn tillstream(args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN).args(args).output()?)
}

/// The JSON a command printed, or an error with what it said instead.
fn json_of(out: &Output) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `tillstream token issue ...` on `data`: the token.
fn issue(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["token", "issue"];
    all.extend(args);
    let (code, token, err) = run(&all, data)?;
    anyhow::ensure!(code == 0, "token issue: {err}");
    Ok(token.trim().to_string())
}

/// The permission bits of `path`.
fn mode(path: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// The names a report lists under `credentials.<list>`, sorted.
fn names(report: &serde_json::Value, list: &str) -> Vec<String> {
    let mut out: Vec<String> = report["credentials"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Sends a device's batches to `quic`, trusting the certificate `ca`,
/// and waits for all to be acknowledged (a device that was not let in
/// never is).
fn stream(ca: &Path, quic: SocketAddr, token: &str, s: &DeviceScript) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let endpoint = client_endpoint(&std::fs::read(ca)?, quic)?;
        // A resent queue: the batches the restored store already holds are
        // acknowledged again.
        let dev = device_with(&endpoint, quic, s.device, token.as_bytes().to_vec(), true);
        for b in prepare(s)? {
            dev.send(b).await?;
        }
        let acked = dev
            .wait_acked(s.batches.len() as u64, Duration::from_secs(20))
            .await;
        dev.close().await;
        anyhow::Ok(acked?)
    })
}

/// A server on `data` with a device CA, a revoked API token, and a
/// device that streamed with a token issued before any backup: the
/// device's token and script, the revoked token, and an admin token.
struct Provisioned {
    device_token: String,
    script: DeviceScript,
    revoked: String,
    admin: String,
}

fn provision(data: &Path, server: &Serve) -> anyhow::Result<Provisioned> {
    let t0 = now_us() - 3_600_000_000;
    let script = script(700, 4, true, 6, 10, t0);
    let device_token = issue(
        data,
        &["--device", "700", "--store", "4", "--role", "terminal"],
    )?;
    let first: DeviceScript = DeviceScript {
        batches: script.batches[..3].to_vec(),
        ..script.clone()
    };
    stream(
        &data.join("tls/cert.pem"),
        server.quic,
        &device_token,
        &first,
    )?;
    let revoked = issue(data, &["--role", "analyst"])?;
    let (code, _, err) = run(&["token", "revoke", "--token", &revoked], data)?;
    anyhow::ensure!(code == 0, "token revoke: {err}");
    let admin = issue(data, &["--role", "admin"])?;
    Ok(Provisioned {
        device_token,
        script,
        revoked,
        admin,
    })
}

/// GET `path` of `base` with a bearer token: the status.
fn status_of(base: &str, path: &str, token: &str) -> anyhow::Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Ok(agent
        .get(&format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()?
        .status()
        .as_u16())
}

/// The whole of a disaster recovery: a backup written by the running
/// server, restored on a fresh data directory, serves the devices and
/// API clients of the old one with the credentials they already hold,
/// and refuses what was revoked.
#[test]
fn a_restored_server_accepts_the_credentials_issued_before_the_backup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (code, _, err) = run(&["ca", "init"], &data)?;
    assert_eq!(code, 0, "{err}");
    let server = serve(&data)?;
    let p = provision(&data, &server)?;

    // Written by the running server, which knows its own files.
    let backup = dir.path().join("backup");
    let out = tillstream(&[
        "backup".as_ref(),
        backup.as_os_str(),
        "--server-http".as_ref(),
        server.url().as_ref(),
        "--api-token".as_ref(),
        p.admin.as_ref(),
    ])?;
    let info = json_of(&out)?;
    assert_eq!(info["credentials"]["included"], true, "{info}");
    assert_eq!(names(&info, "files"), sorted(&NAMES), "{info}");
    // The answer is what the OpenAPI document says it is.
    let doc = tillstream_engine::questions::openapi();
    let schema = &doc["paths"]["/v1/backup"]["post"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert!(schema.is_object(), "no schema of the backup's answer");
    tillstream_engine::questions::check::check(&doc, schema, &info).map_err(anyhow::Error::msg)?;
    let creds = backup.join("credentials");
    assert_eq!(mode(&creds)?, 0o700);
    for (name, place) in PLACES {
        let copy = creds.join(place);
        assert_eq!(mode(&copy)?, 0o600, "{name}: {}", copy.display());
        assert_eq!(std::fs::read(&copy)?, std::fs::read(data.join(place))?);
    }
    server.stop()?;

    // Restored into a data directory of its own (another machine's).
    let restored = dir.path().join("elsewhere/data");
    let out = tillstream(&[
        "restore".as_ref(),
        backup.as_os_str(),
        "--data-dir".as_ref(),
        restored.as_os_str(),
    ])?;
    let said = json_of(&out)?;
    assert_eq!(said["verify"]["ok"], true, "{said}");
    assert_eq!(names(&said, "restored"), sorted(&NAMES), "{said}");
    for (name, place) in PLACES {
        let file = restored.join(place);
        let reported = said["credentials"]["restored"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["name"] == name))
            .and_then(|f| f["file"].as_str())
            .map(PathBuf::from);
        assert_eq!(reported.as_deref(), Some(file.as_path()), "{said}");
        assert_eq!(mode(&file)?, 0o600, "{name}");
        assert_eq!(std::fs::read(&file)?, std::fs::read(data.join(place))?);
    }

    // The device, trusting the old server's certificate and holding the
    // old token, is let in and acknowledged: its batches before the
    // backup again, the rest fresh.
    let again = serve(&restored)?;
    stream(
        &data.join("tls/cert.pem"),
        again.quic,
        &p.device_token,
        &p.script,
    )?;
    // The API token issued before the backup works; the revoked one not.
    assert_eq!(status_of(&again.url(), "/v1/watermarks", &p.admin)?, 200);
    assert_eq!(status_of(&again.url(), "/v1/watermarks", &p.revoked)?, 401);
    again.stop()?;

    // A stopped server's backup holds the same.
    let cold = dir.path().join("backup-cold");
    let out = tillstream(&[
        "backup".as_ref(),
        cold.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])?;
    let info = json_of(&out)?;
    assert_eq!(names(&info, "files"), sorted(&NAMES), "{info}");
    Ok(())
}

/// `--no-credentials` is named in the help with what it costs, leaves
/// the credentials out, and both backup and restore say so.
#[test]
fn no_credentials_leaves_them_out_and_says_so() -> anyhow::Result<()> {
    let help = tillstream(&["backup".as_ref(), "--help".as_ref()])?;
    // Words as a reader sees them, whatever the wrapping.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains("--no-credentials"), "{help}");
    assert!(help.contains("new signing key"), "{help}");

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    serve(&data)?.stop()?;
    let backup = dir.path().join("backup");
    let out = tillstream(&[
        "backup".as_ref(),
        backup.as_os_str(),
        "--no-credentials".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])?;
    let info = json_of(&out)?;
    assert_eq!(info["credentials"]["included"], false, "{info}");
    assert!(names(&info, "files").is_empty(), "{info}");
    let why = info["credentials"]["note"].as_str().unwrap_or_default();
    assert!(why.contains("--no-credentials"), "{info}");
    assert!(why.contains("new signing key"), "{info}");
    assert!(!backup.join("credentials").exists());

    let restored = dir.path().join("restored");
    let out = tillstream(&[
        "restore".as_ref(),
        backup.as_os_str(),
        "--data-dir".as_ref(),
        restored.as_os_str(),
    ])?;
    let said = json_of(&out)?;
    assert!(names(&said, "restored").is_empty(), "{said}");
    let note = said["credentials"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("no credentials"), "{said}");
    assert!(!restored.join("auth/signing.key").exists());
    Ok(())
}

/// A restore never replaces a credential that is there already and
/// differs (a server started on the directory made its own); the same
/// one is left as it is.
#[test]
fn a_restore_refuses_to_replace_different_credentials() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (data, other) = (dir.path().join("data"), dir.path().join("other"));
    serve(&data)?.stop()?;
    serve(&other)?.stop()?;
    let backup = dir.path().join("backup");
    json_of(&tillstream(&[
        "backup".as_ref(),
        backup.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])?)?;

    let restored = dir.path().join("restored");
    std::fs::create_dir_all(restored.join("auth"))?;
    let theirs = std::fs::read(other.join("auth/signing.key"))?;
    std::fs::write(restored.join("auth/signing.key"), &theirs)?;
    let restore = || {
        tillstream(&[
            "restore".as_ref(),
            backup.as_os_str(),
            "--data-dir".as_ref(),
            restored.as_os_str(),
        ])
    };
    let out = restore()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("auth/signing.key"), "{err}");
    assert!(err.contains("differs"), "{err}");
    // Refused before anything was written.
    assert!(!restored.join("store").exists());
    assert!(!restored.join("tls").exists());
    assert_eq!(std::fs::read(restored.join("auth/signing.key"))?, theirs);

    // The backup's own key in place already: left, and said so.
    std::fs::copy(
        data.join("auth/signing.key"),
        restored.join("auth/signing.key"),
    )?;
    let said = json_of(&restore()?)?;
    assert_eq!(names(&said, "restored").len(), 3, "{said}");
    let key = said["credentials"]["restored"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == "signing_key").cloned())
        .unwrap_or_default();
    assert_eq!(key["already_there"], true, "{said}");
    Ok(())
}

/// A TLS pair `serve --tls-cert/--tls-key` named outside the data
/// directory is backed up from there, and restored to the data
/// directory's own place, where `serve` finds it without the flags.
#[test]
fn tls_files_named_by_flags_are_carried_and_placed_in_the_data_dir() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    serve(&data)?.stop()?;
    // The operator's own pair, outside the data directory.
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc)?;
    let (cert, key) = (etc.join("server.pem"), etc.join("server.key"));
    std::fs::rename(data.join("tls/cert.pem"), &cert)?;
    std::fs::rename(data.join("tls/key.pem"), &key)?;

    let backup = dir.path().join("backup");
    let out = Command::new(BIN)
        .arg("backup")
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data)
        .env("TILLSTREAM_TLS_CERT", &cert)
        .env("TILLSTREAM_TLS_KEY", &key)
        .output()?;
    let info = json_of(&out)?;
    let file = |report: &serde_json::Value, list: &str, name: &str| {
        report["credentials"][list]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_default()
    };
    let tls_cert = file(&info, "files", "tls_cert");
    assert_eq!(tls_cert["from"].as_str().map(PathBuf::from), Some(cert));
    assert_eq!(tls_cert["flag"], "--tls-cert", "{info}");
    assert_eq!(file(&info, "files", "tls_key")["flag"], "--tls-key");

    let restored = dir.path().join("restored");
    let said = json_of(&tillstream(&[
        "restore".as_ref(),
        backup.as_os_str(),
        "--data-dir".as_ref(),
        restored.as_os_str(),
    ])?)?;
    let placed = file(&said, "restored", "tls_key");
    assert_eq!(
        placed["file"].as_str().map(PathBuf::from),
        Some(restored.join("tls/key.pem")),
        "{said}"
    );
    assert!(
        placed["note"]
            .as_str()
            .is_some_and(|n| n.contains("--tls-key")),
        "{said}"
    );
    assert_eq!(
        std::fs::read(restored.join("tls/key.pem"))?,
        std::fs::read(&key)?
    );
    // The server restored there uses it without the flags.
    let again = serve(&restored)?;
    drop(again);
    Ok(())
}
