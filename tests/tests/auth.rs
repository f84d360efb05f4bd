//! Identity and authorization end to end: real QUIC, real TLS client
//! certificates, tokens signed with the server's own key, the revocation
//! list on disk, the HTTP API's roles and the audit log.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tillstream_auth::ca::DeviceCa;
use tillstream_auth::token::{SigningKey, TokenRequest};
use tillstream_auth::{Method, Role, revocation};
use tillstream_client::{EndpointOptions, client_endpoint, client_tls_with_identity};
use tillstream_engine::{AuthConfig, Server};
use tillstream_engine_core::testkit::{count, line, sale};
use tillstream_protocol::frame::{self, decode};
use tillstream_protocol::*;
use tillstream_storage::{RowRef, Table};
use tillstream_tests::raw::{RawSession, read_msg};
use tillstream_tests::{Tokens, caught_up, endpoint_for, now_us, test_config};

use crate::process::{ServeOpts, ServerProcess};

mod key_rotation;

const AUTH_FAILED: u16 = 11;

/// A server with its HTTP API, revocations looked at every 100 ms.
async fn server(dir: &Path) -> anyhow::Result<Server> {
    let mut cfg = test_config(dir, 2);
    cfg.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.flush_interval = Duration::from_millis(1);
    cfg.auth.revocation_poll = Duration::from_millis(100);
    Ok(Server::start(cfg).await?)
}

/// Says Hello with `token` on a fresh connection; returns the answer's
/// type and, for a Reject, its code and reason.
async fn hello_answer(
    endpoint: &tillstream_client::ClientEndpoint,
    addr: SocketAddr,
    device: u64,
    token: &[u8],
) -> anyhow::Result<(MsgType, u16, String)> {
    let (_conn, _send, _recv, t, payload) =
        tillstream_tests::raw::hello(endpoint, addr, device, token).await?;
    Ok(match t {
        MsgType::Reject => {
            let r = decode::<Reject>(&payload)?;
            (t, r.code, r.reason.to_string())
        }
        t => (t, 0, String::new()),
    })
}

fn token(
    key: &SigningKey,
    device: u64,
    store: u32,
    role: Role,
    ttl: u64,
) -> anyhow::Result<String> {
    let (t, _) = key.issue(&TokenRequest {
        device: Some(device),
        store: Some(store),
        role,
        ttl: Duration::from_secs(ttl),
    })?;
    Ok(t)
}

fn server_key(server: &Server) -> anyhow::Result<SigningKey> {
    let path = server
        .signing_key_path()
        .ok_or_else(|| anyhow::anyhow!("authentication is off"))?;
    Ok(SigningKey::load(path)?)
}

/// The audit log's lines whose `event` is `event`.
fn audited(dir: &Path, event: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    // The writer thread flushes each line as it comes; give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect())
}

use tillstream_tests::raw::batch_frame as batch;

/// Reads acks until `seq` is durable; returns every rejected reference.
async fn acked_through(raw: &mut RawSession, seq: u64) -> anyhow::Result<Vec<(u32, u16)>> {
    let mut rejected = Vec::new();
    loop {
        let (t, p) = read_msg(&mut raw.recv).await?;
        anyhow::ensure!(t == MsgType::Ack, "expected Ack, got {t:?}");
        let a = decode::<Ack>(&p)?;
        rejected.extend(a.rejected.iter().map(|r| (r.idx, r.code)));
        if a.durable_seq >= seq {
            return Ok(rejected);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_borrowed_credentials_are_refused_at_hello() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let endpoint = endpoint_for(&server)?;
    let addr = server.quic_addr();
    let key = server_key(&server)?;

    // The control: a token of this server's key, for this device.
    let good = token(&key, 1, 1, Role::Terminal, 60)?;
    let (t, ..) = hello_answer(&endpoint, addr, 1, good.as_bytes()).await?;
    assert_eq!(t, MsgType::Welcome);

    let forged = token(&SigningKey::generate()?, 2, 1, Role::Terminal, 60)?;
    let expired = token(&key, 3, 1, Role::Terminal, 1)?;
    let analyst = key
        .issue(&TokenRequest {
            device: None,
            store: None,
            role: Role::Analyst,
            ttl: Duration::from_secs(60),
        })?
        .0;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cases: [(&str, u64, &[u8], &str); 5] = [
        ("forged", 2, forged.as_bytes(), "signature"),
        ("expired", 3, expired.as_bytes(), "expired"),
        (
            "another device's",
            4,
            good.as_bytes(),
            "credential is for device 1",
        ),
        ("an API token", 5, analyst.as_bytes(), "HTTP API"),
        ("no credential", 6, b"", "no credential"),
    ];
    for (what, device, tok, why) in cases {
        let (t, code, reason) = hello_answer(&endpoint, addr, device, tok).await?;
        assert_eq!(t, MsgType::Reject, "{what}: was not refused");
        assert_eq!(code, AUTH_FAILED, "{what}: {reason}");
        assert!(reason.contains(why), "{what}: reason {reason:?}");
    }
    let failures = audited(dir.path(), "auth_failed")?;
    assert_eq!(failures.len(), 5, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f["peer"].is_string() && f["reason"].is_string())
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_closes_its_live_connection_even_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let endpoint = endpoint_for(&server)?;
    let key = server_key(&server)?;
    let (tok, claims) = key.issue(&TokenRequest {
        device: Some(9),
        store: Some(1),
        role: Role::Terminal,
        ttl: Duration::from_secs(600),
    })?;
    let mut raw = RawSession::open(&endpoint, server.quic_addr(), 9, tok.as_bytes()).await?;
    raw.send
        .write_all(&batch(
            1,
            vec![sale(now_us(), 1, 1, vec![line(5, 1, 100)])],
        )?)
        .await?;
    acked_through(&mut raw, 1).await?;

    // What `tillstream token revoke` does: a line in the list on disk.
    let revoked_at = Instant::now();
    assert!(revocation::revoke(
        dir.path(),
        &claims.id,
        Method::Token,
        "lost till"
    )?);
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed()).await?;
    let took = revoked_at.elapsed();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::VarInt::from_u32(u32::from(AUTH_FAILED))
            );
            assert_eq!(&c.reason[..], b"credential revoked");
        }
        other => anyhow::bail!("closed otherwise: {other:?}"),
    }
    eprintln!("revocation reached the live connection in {took:?}");
    let (t, code, reason) = hello_answer(&endpoint, server.quic_addr(), 9, tok.as_bytes()).await?;
    assert_eq!((t, code), (MsgType::Reject, AUTH_FAILED), "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(audited(dir.path(), "connection_closed")?.len(), 1);
    assert_eq!(audited(dir.path(), "revoked")?.len(), 1);
    server.shutdown().await?;

    // The list is on disk: a restarted server still refuses the token.
    let server = self::server(dir.path()).await?;
    let endpoint = endpoint_for(&server)?;
    let (t, code, _) = hello_answer(&endpoint, server.quic_addr(), 9, tok.as_bytes()).await?;
    assert_eq!((t, code), (MsgType::Reject, AUTH_FAILED));
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ca_certificates_are_accepted_and_another_cas_are_not() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = DeviceCa::init(dir.path())?;
    let server = server(dir.path()).await?;
    let trust = std::fs::read(server.cert_path())?;
    let endpoint = client_endpoint(&trust, server.quic_addr())?;
    let opts = EndpointOptions::default();
    let connect = |tls: quinn::ClientConfig| {
        let endpoint = endpoint.clone();
        let addr = server.quic_addr();
        async move {
            endpoint
                .connect_with(tls, addr, "localhost")?
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let hello = |conn: quinn::Connection, device: u64| async move {
        let (mut send, mut recv) = conn.open_bi().await?;
        let h = Hello {
            version: PROTOCOL_VERSION,
            device,
            token: Vec::new(),
        };
        send.write_all(&frame::encode_to_vec(&h)?).await?;
        let (t, _) = read_msg(&mut recv).await?;
        anyhow::Ok((t, conn, send, recv))
    };

    let ours = ca.issue(21, 1, Role::ShelfSensor, Duration::from_secs(3600))?;
    let tls = client_tls_with_identity(
        &trust,
        ours.cert_pem.as_bytes(),
        ours.key_pem.as_bytes(),
        &opts,
    )?
    .quinn_config();
    let (t, conn, ..) = hello(connect(tls.clone()).await?, 21).await?;
    assert_eq!(t, MsgType::Welcome, "a certificate of the device CA");
    // The certificate names device 21: it cannot say Hello as another.
    let (t, ..) = hello(connect(tls).await?, 22).await?;
    assert_eq!(t, MsgType::Reject);

    let other = tempfile::tempdir()?;
    let theirs =
        DeviceCa::init(other.path())?.issue(21, 1, Role::ShelfSensor, Duration::from_secs(3600))?;
    let tls = client_tls_with_identity(
        &trust,
        theirs.cert_pem.as_bytes(),
        theirs.key_pem.as_bytes(),
        &opts,
    )?
    .quinn_config();
    let refused = match connect(tls).await {
        Err(e) => e.to_string(),
        Ok(conn) => match hello(conn, 21).await {
            Err(e) => e.to_string(),
            Ok((t, ..)) => anyhow::bail!("a certificate of another CA got {t:?}"),
        },
    };
    eprintln!("another CA's certificate: {refused}");
    assert!(!audited(dir.path(), "handshake_failed")?.is_empty());

    // Revoking the certificate's serial closes its connection.
    revocation::revoke(dir.path(), &ours.claims.id, Method::Certificate, "stolen")?;
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await?;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outside_a_credentials_store_or_role_are_refused_and_kept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let endpoint = endpoint_for(&server)?;
    let tokens = Tokens::of(&server)?;
    let now = now_us();

    // A till of store 1 sells in store 2 and counts a shelf.
    let till = tokens.device(31, 1, true)?;
    let mut raw = RawSession::open(&endpoint, server.quic_addr(), 31, &till).await?;
    raw.send
        .write_all(&batch(
            1,
            vec![
                sale(now, 1, 1, vec![line(5, 1, 100)]),
                sale(now, 2, 1, vec![line(5, 1, 100)]),
                count(now, 1, 5, 10),
            ],
        )?)
        .await?;
    let till_refused = acked_through(&mut raw, 1).await?;
    assert_eq!(
        till_refused,
        [
            (1, RejectCode::WrongStore.as_u16()),
            (2, RejectCode::NotPermitted.as_u16())
        ]
    );

    // A shelf sensor of store 1 sends a sale.
    let sensor = tokens.device(32, 1, false)?;
    let mut raw = RawSession::open(&endpoint, server.quic_addr(), 32, &sensor).await?;
    raw.send
        .write_all(&batch(
            1,
            vec![count(now, 1, 5, 10), sale(now, 1, 1, vec![line(5, 1, 100)])],
        )?)
        .await?;
    let sensor_refused = acked_through(&mut raw, 1).await?;
    assert_eq!(sensor_refused, [(1, RejectCode::NotPermitted.as_u16())]);

    // Nothing refused is dropped: each is a row of rejected_events.
    caught_up(&server).await?;
    let mut kept = Vec::new();
    server.store().scan(Table::RejectedEvents, &mut |row| {
        if let RowRef::Rejected(r) = row {
            kept.push((r.key.device, r.code));
        }
    })?;
    kept.sort_unstable();
    assert_eq!(
        kept,
        [
            (31, RejectCode::WrongStore.as_u16()),
            (31, RejectCode::NotPermitted.as_u16()),
            (32, RejectCode::NotPermitted.as_u16())
        ]
    );
    let audit = audited(dir.path(), "authz_refused")?;
    assert_eq!(audit.len(), 2, "{audit:?}");
    server.shutdown().await?;
    Ok(())
}

fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let resp = match method {
        "GET" => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()?
        }
        _ => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(body.unwrap_or(serde_json::json!({})))?
        }
    };
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_analysts_queries_and_admins_everything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let tokens = Tokens::of(&server)?;
    let base = format!(
        "http://{}",
        server
            .http_addr()
            .ok_or_else(|| anyhow::anyhow!("no HTTP API"))?
    );
    let analyst = tokens.api(Role::Analyst)?;
    let admin = tokens.api(Role::Admin)?;
    let device = String::from_utf8(tokens.device(5, 1, true)?)?;
    let revoke = serde_json::json!({ "id": "abcd", "kind": "token", "reason": "test" });
    let calls = tokio::task::spawn_blocking(move || {
        let u = |p: &str| format!("{base}{p}");
        anyhow::Ok(vec![
            (
                "healthz, no token",
                http("GET", &u("/healthz"), None, None)?,
                200,
            ),
            (
                "readyz, no token",
                http("GET", &u("/readyz"), None, None)?,
                200,
            ),
            (
                "metrics, open by default",
                http("GET", &u("/metrics"), None, None)?,
                200,
            ),
            (
                "settings, no token",
                http("GET", &u("/v1/settings"), None, None)?,
                401,
            ),
            (
                "settings, a device token",
                http("GET", &u("/v1/settings"), Some(&device), None)?,
                401,
            ),
            (
                "settings, analyst",
                http("GET", &u("/v1/settings"), Some(&analyst), None)?,
                200,
            ),
            (
                "watermarks, analyst",
                http("GET", &u("/v1/watermarks"), Some(&analyst), None)?,
                200,
            ),
            (
                "verify, analyst",
                http("POST", &u("/v1/verify"), Some(&analyst), None)?,
                200,
            ),
            (
                "revoke, analyst",
                http(
                    "POST",
                    &u("/v1/revoke"),
                    Some(&analyst),
                    Some(revoke.clone()),
                )?,
                403,
            ),
            (
                "revoke, admin",
                http("POST", &u("/v1/revoke"), Some(&admin), Some(revoke))?,
                200,
            ),
        ])
    })
    .await??;
    for (what, got, want) in calls {
        assert_eq!(got, want, "{what}");
    }
    assert!(revocation::load(dir.path())?.contains("abcd"));
    let denied = audited(dir.path(), "api_denied")?;
    assert_eq!(denied.len(), 3, "{denied:?}");
    server.shutdown().await?;

    // `--metrics-auth`: scrapers need a token too.
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path(), 1);
    cfg.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.auth.metrics_open = false;
    let server = Server::start(cfg).await?;
    let analyst = Tokens::of(&server)?.api(Role::Analyst)?;
    let url = format!(
        "http://{}/metrics",
        server
            .http_addr()
            .ok_or_else(|| anyhow::anyhow!("no HTTP API"))?
    );
    let (open, scraped) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            http("GET", &url, None, None)?,
            http("GET", &url, Some(&analyst), None)?,
        ))
    })
    .await??;
    assert_eq!((open, scraped), (401, 200));
    server.shutdown().await?;
    Ok(())
}

/// `--auth none` is loud: at start, in /readyz's body and in a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_authentication_says_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    opts.extra = vec!["--auth=none".into()];
    let server = ServerProcess::start(&opts)?;
    let (code, body) = tokio::task::spawn_blocking({
        let url = format!("{}/readyz", opts.http_url());
        move || crate::process::http_get(&url)
    })
    .await??;
    assert_eq!(code, 200);
    assert!(body.contains("authentication is off"), "{body}");
    assert_eq!(server.metric("tillstream_auth_enabled")?, 0.0);
    let log = std::fs::read_to_string(&opts.log)?;
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    // And it takes a device with no credential at all.
    let endpoint = client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    RawSession::open(&endpoint, opts.quic, 77, b"").await?;
    let _ = AuthConfig::none();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_session_closes_its_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path()).await?;
    let endpoint = endpoint_for(&server)?;
    let key = server_key(&server)?;
    let tok = token(&key, 12, 1, Role::Terminal, 2)?;
    let raw = RawSession::open(&endpoint, server.quic_addr(), 12, tok.as_bytes()).await?;
    let closed = tokio::time::timeout(Duration::from_secs(6), raw.conn.closed()).await?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(&c.reason[..], b"credential expired");
        }
        other => anyhow::bail!("closed otherwise: {other:?}"),
    }
    server.shutdown().await?;
    Ok(())
}

/// A certificate that expired is refused on the next connection, also when
/// the client tries to resume its earlier TLS session (a resumed session
/// would reuse the certificate without checking it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_even_when_the_session_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = DeviceCa::init(dir.path())?;
    let server = server(dir.path()).await?;
    let trust = std::fs::read(server.cert_path())?;
    let endpoint = client_endpoint(&trust, server.quic_addr())?;
    let short = ca.issue(51, 1, Role::Terminal, Duration::from_secs(2))?;
    // One client config for both connections: it keeps its session tickets.
    let tls = client_tls_with_identity(
        &trust,
        short.cert_pem.as_bytes(),
        short.key_pem.as_bytes(),
        &EndpointOptions::default(),
    )?
    .quinn_config();
    let answer = |tls: quinn::ClientConfig| {
        let endpoint = endpoint.clone();
        let addr = server.quic_addr();
        async move {
            let conn = endpoint.connect_with(tls, addr, "localhost")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let h = Hello {
                version: PROTOCOL_VERSION,
                device: 51,
                token: Vec::new(),
            };
            send.write_all(&frame::encode_to_vec(&h)?).await?;
            let (t, _) = read_msg(&mut recv).await?;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(t)
        }
    };
    assert_eq!(answer(tls.clone()).await?, MsgType::Welcome);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    match answer(tls).await {
        Ok(t) => assert_eq!(t, MsgType::Reject, "an expired certificate got {t:?}"),
        Err(e) => eprintln!("refused in the handshake: {e}"),
    }
    server.shutdown().await?;
    Ok(())
}
