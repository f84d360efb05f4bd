//! Rotating the token signing key of a real `tillstream serve` with no
//! cut-over: `tillstream token rotate-key` keeps the old key as an
//! accepted one, so a device holding an old token streams on after the
//! restart while new tokens work too; `token retire-key` and a SIGHUP (or
//! a restart) then refuse the old tokens, closing their live connections.

use std::process::Command;

use anyhow::Context;
use tillstream_auth::keys::previous_keys_dir;
use tillstream_auth::token::SIGNING_KEY;

use super::*;
use crate::process::SERVER_BIN;

/// `tillstream ARGS`, which must succeed: its standard output and error.
fn tillstream(args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = Command::new(SERVER_BIN)
        .args(args)
        .output()
        .with_context(|| format!("running tillstream {args:?}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    anyhow::ensure!(out.status.success(), "tillstream {args:?} failed: {stderr}");
    Ok((stdout, stderr))
}

/// Says Hello as `device` with `token`, sends one sale past what is
/// durable and waits for its ack; returns the open session.
async fn stream_one(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    device: u64,
    token: &str,
) -> anyhow::Result<RawSession> {
    let mut raw = RawSession::open(endpoint, addr, device, token.as_bytes())
        .await
        .with_context(|| format!("device {device} was not welcomed"))?;
    let seq = raw.welcome.durable_seq + 1;
    let sale = sale(now_us(), 1, 1, vec![line(5, 1, 100)]);
    raw.send.write_all(&batch(seq, vec![sale])?).await?;
    let rejected = tokio::time::timeout(Duration::from_secs(20), acked_through(&mut raw, seq))
        .await
        .context("no ack within 20 s")??;
    anyhow::ensure!(rejected.is_empty(), "events refused: {rejected:?}");
    Ok(raw)
}

/// Waits up to 10 s until the server's log says `needle` (what `serve`
/// says just after it starts may follow its first healthy answer).
fn wait_log(path: &Path, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path)?;
        if log.contains(needle) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the log never said {needle:?}: {log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn restart(server: ServerProcess) -> anyhow::Result<ServerProcess> {
    let opts = server.opts.clone();
    let (status, _) = server.terminate(Duration::from_secs(60))?;
    anyhow::ensure!(status.success(), "serve exited with {status}");
    ServerProcess::start(&opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_keys_token_streams_after_rotate_key_until_the_key_is_retired() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    let data = opts.data_dir.clone();
    let data_arg = data.display().to_string();
    let server = ServerProcess::start(&opts)?;
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    let old = SigningKey::load(&data.join(SIGNING_KEY))?;
    let old_token = token(&old, 41, 1, Role::Terminal, 3600)?;
    stream_one(&endpoint, opts.quic, 41, &old_token).await?;

    // The rotation, while the server runs: it goes on with the keys it read.
    let (said, _) = tillstream(&["token", "rotate-key", "--data-dir", &data_arg])?;
    let new = SigningKey::load(&data.join(SIGNING_KEY))?;
    assert_ne!(new.kid(), old.kid());
    assert!(
        said.contains(old.kid()) && said.contains(new.kid()),
        "{said}"
    );
    let kept = previous_keys_dir(&data).join(format!("{}.key", old.kid()));
    assert!(kept.exists(), "{said}");
    let (listed, _) = tillstream(&["token", "keys", "--data-dir", &data_arg])?;
    assert!(
        listed.contains(&format!("signing   {}", new.kid()))
            && listed.contains(&format!("accepted  {}", old.kid())),
        "{listed}"
    );

    // After a restart the old token still streams, and a new one does too.
    let server = restart(server)?;
    stream_one(&endpoint, opts.quic, 41, &old_token).await?;
    let new_token = token(&new, 42, 1, Role::Terminal, 3600)?;
    stream_one(&endpoint, opts.quic, 42, &new_token).await?;
    wait_log(
        &opts.log,
        &format!("tokens of [{}] are accepted too", old.kid()),
    )?;
    // Which key verified is counted: the operator's sign that old tokens
    // are still in use.
    let (_, scrape) = server.get("/metrics")?;
    let by_accepted = scrape
        .lines()
        .find_map(|l| l.strip_prefix("tillstream_auth_token_keys_used_total{key=\"accepted\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(by_accepted, Some(1.0), "{scrape}");

    // Retired: SIGHUP closes the old token's live connection and refuses
    // it from then on, with no restart.
    let live = stream_one(&endpoint, opts.quic, 41, &old_token).await?;
    let (_, said) = tillstream(&[
        "token",
        "retire-key",
        "--data-dir",
        &data_arg,
        "--kid",
        old.kid(),
    ])?;
    assert!(!kept.exists(), "{said}");
    crate::reload::hangup(&server)?;
    let closed = tokio::time::timeout(Duration::from_secs(10), live.conn.closed()).await?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::VarInt::from_u32(u32::from(AUTH_FAILED))
            );
            assert_eq!(&c.reason[..], b"token key retired");
        }
        other => anyhow::bail!("closed otherwise: {other:?}"),
    }
    let (t, code, reason) = hello_answer(&endpoint, opts.quic, 41, old_token.as_bytes()).await?;
    assert_eq!((t, code), (MsgType::Reject, AUTH_FAILED), "{reason}");
    stream_one(&endpoint, opts.quic, 42, &new_token).await?;
    let closed = audited(&data, "connection_closed")?;
    assert!(
        closed.iter().any(|c| c["reason"] == "token key retired"),
        "{closed:?}"
    );
    assert_eq!(audited(&data, "token_keys")?.len(), 1);
    wait_log(
        &opts.log,
        &format!("token keys now: signing {}, accepted []", new.kid()),
    )?;

    // And after a restart, without the old key's file, it stays refused.
    let server = restart(server)?;
    let (t, code, reason) = hello_answer(&endpoint, opts.quic, 41, old_token.as_bytes()).await?;
    assert_eq!((t, code), (MsgType::Reject, AUTH_FAILED), "{reason}");
    assert!(reason.contains("signing key"), "{reason}");
    stream_one(&endpoint, opts.quic, 42, &new_token).await?;
    drop(server);
    Ok(())
}
