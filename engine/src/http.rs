//! The HTTP API: `/metrics` (Prometheus), `/healthz`, `/readyz`, the
//! `/v1/*` endpoints that remote tools use (verify, settings, watermarks,
//! revoke), and the query API `/api/v1/*` (`tillstream query
//! --server-http`; described at `/api/v1/openapi.json`).
//!
//! Every endpoint but `/healthz`, `/readyz`, the OpenAPI document (and `/metrics`, unless
//! configured closed) needs a bearer token: role `analyst` reads (settings,
//! watermarks, verify), role `admin` does everything (also revoke). With
//! `--auth none` the API is open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tillstream_storage::Backend;
use tillstream_storage::verify::{ExpectedBatch, verify};
use tokio::sync::watch;

use crate::audit::Record;
use crate::ctx::EngineCtx;
use crate::{EngineError, ServerSettings, metrics};

mod body;
use body::json_body;
use tillstream_auth::{Method, Role};

#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub(crate) ctx: Arc<EngineCtx>,
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) settings: ServerSettings,
    /// The QUIC socket, for its buffer and drop figures.
    pub(crate) udp: crate::udp::ServerSocket,
    /// Where this server's credentials are, for `POST /v1/backup`.
    pub(crate) credentials: crate::backup::CredentialSources,
}

/// Binds and serves until `shutdown` turns true.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), EngineError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EngineError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| EngineError::Bind { addr, source })?;
    let _ = metrics::handle();
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/settings", get(settings))
        .route("/v1/cluster", get(cluster))
        .route("/v1/watermarks", get(watermarks))
        .route("/v1/verify", post(verify_handler))
        .route("/v1/revoke", post(revoke_handler))
        .route("/v1/backup", post(backup_handler))
        .route("/v1/catalog", post(catalog_handler))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/{endpoint}", get(question))
        .fallback(not_found)
        .with_state(Arc::new(state));
    let app = with_json_405(app);
    let join = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok((bound, join))
}

/// `api` with its 405s answered in JSON. The layer wraps the router from
/// outside (as its fallback service): a layer on the router itself runs
/// inside each route, before axum adds the `Allow` header this reads.
fn with_json_405(api: axum::Router) -> axum::Router {
    axum::Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn(method_not_allowed_as_json))
}

/// A method a path does not take (`GET /v1/verify`): axum's 405 has the
/// `Allow` header but an empty body, which left a client (or a person
/// with curl) guessing; every other refusal of the API is a JSON
/// `{"error": ...}`, so this one is too, and says what to send instead.
async fn method_not_allowed_as_json(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let response = next.run(req).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let allowed = parts
        .headers
        .get(axum::http::header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join(" or ");
    let error = if allowed.is_empty() {
        format!("{method} is not allowed on {path}")
    } else {
        format!("{method} is not allowed on {path}: use {allowed}")
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = Json(serde_json::json!({ "error": error })).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}

/// No route has the path: a JSON 404 like every other refusal (axum's
/// own has an empty body).
async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}: the API is described at /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// `{"error": why}` with `status`: the body of every refusal.
fn error(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": why.to_string() })),
    )
        .into_response()
}

type AppState = State<Arc<HttpState>>;
type Peer = ConnectInfo<SocketAddr>;

/// `None` lets the call through: its bearer token has `need` (admin has
/// every role). Otherwise the refusal to send: 401 (no or bad token) or
/// 403 (too weak), audited.
fn refusal(s: &HttpState, headers: &HeaderMap, peer: SocketAddr, need: Role) -> Option<Response> {
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let denied = |status: StatusCode, reason: String| {
        metrics::auth_failed("http");
        let record = Record::new("api_denied", &reason)
            .peer(peer)
            .detail(serde_json::json!({ "needs": need.as_str() }));
        // A caller with a valid token but too weak a role is known; one
        // without a valid token is not, and shares a rate.
        if status == StatusCode::FORBIDDEN {
            s.ctx.auth.audit.log(record);
        } else {
            s.ctx.auth.audit.log_unauthenticated(record);
        }
        let mut r = (status, Json(serde_json::json!({ "error": reason }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    };
    match s.ctx.auth.api(header) {
        Ok(None) => None,
        Ok(Some((role, _))) if role == need || role == Role::Admin => None,
        Ok(Some((role, _))) => Some(denied(
            StatusCode::FORBIDDEN,
            format!("this endpoint needs role {need}; the token has {role}"),
        )),
        Err(why) => Some(denied(StatusCode::UNAUTHORIZED, why)),
    }
}

async fn metrics_text(State(s): AppState, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if !s.ctx.auth.metrics_open
        && let Some(r) = refusal(&s, &headers, peer, Role::Analyst)
    {
        return r;
    }
    metrics::ack_stall(s.ctx.sequencer.ack_stall());
    metrics::backend(&s.store.backend_metrics());
    if let Ok(in_tables) = s.store.materialized_lsn() {
        let durable = s.ctx.sequencer.subscribe().borrow().durable;
        metrics::journal_unmaterialized(durable.saturating_sub(in_tables));
    }
    s.udp.refresh_metrics();
    metrics::refresh(
        s.ctx.not_ready().is_none(),
        s.store.check_writable().is_err(),
    );
    match metrics::handle() {
        Some(h) => h.render().into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        ),
    }
}

async fn readyz(State(s): AppState) -> Response {
    match s.ctx.not_ready() {
        None if !s.ctx.auth.enabled() => {
            "ready (authentication is off: any device may write for any store)\n".into_response()
        }
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// `POST /v1/catalog` (role admin): products and stores to add or
/// replace (`tillstream catalog import --server-http`, the CSV replay).
async fn catalog_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
    let catalog: tillstream_storage::catalog::Catalog = match json_body(&body) {
        Ok(c) => c,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let store = s.store.clone();
    let counts = (catalog.products.len(), catalog.stores.len());
    match tokio::task::spawn_blocking(move || store.put_catalog(&catalog)).await {
        Ok(Ok(())) => {
            Json(serde_json::json!({ "products": counts.0, "stores": counts.1 })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Body of `POST /v1/backup`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// A new or empty directory on the server's machine.
    dir: std::path::PathBuf,
    /// Whether to copy the credentials too (`--no-credentials`: false).
    /// Absent, as from a client older than the field: true, since a
    /// backup without them restores a server its devices cannot use.
    #[serde(default = "yes")]
    credentials: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/backup {"dir": ..., "credentials": true}` (role admin): a
/// consistent copy of the store while it serves, and the credentials
/// this server uses beside it (`tillstream backup --server-http`): the
/// same as `tillstream backup` of a stopped server.
async fn backup_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
    let req: BackupRequest = match json_body(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let store = s.store.clone();
    let dir = req.dir.clone();
    let credentials = req.credentials.then(|| s.credentials.clone());
    let run = move || crate::backup::write_backup(&*store, &dir, credentials.as_ref());
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(report)) => {
            tracing::info!(
                dir = %req.dir.display(),
                info = ?report.store,
                credentials = report.credentials.files.len(),
                "backup written"
            );
            Json(report).into_response()
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(e) => internal(e),
    }
}

/// `GET /api/v1/openapi.json`: the query API's description (open, like a
/// health check: it holds no data).
async fn openapi() -> Response {
    Json(crate::questions::openapi()).into_response()
}

/// `GET /api/v1/<endpoint>?...`: what `tillstream query` answers, as the
/// same JSON array (role analyst). The endpoint and the query string are
/// read raw rather than by axum's extractors, which answered a repeated
/// parameter with the last of its values and a malformed one in plain
/// text; every refusal here is the document's JSON, with the status the
/// question's error names (400, 404, 409, 500).
async fn question(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use crate::questions::Question;
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    let endpoint = uri.path().trim_start_matches("/api/v1/");
    let q = match Question::from_query(endpoint, uri.query()) {
        Ok(q) => q,
        Err(e) => return question_error(&e),
    };
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || q.answer(store.as_ref())).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => question_error(&e),
        Err(e) => internal(e),
    }
}

fn question_error(e: &crate::questions::QuestionError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, e)
}

async fn settings(State(s): AppState, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    Json(s.settings.clone()).into_response()
}

/// `GET /v1/cluster` (role analyst): the members, their leases, and the
/// stores and devices each serves; 404 on a node without `--cluster`.
async fn cluster(State(s): AppState, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    match s.ctx.cluster.get() {
        None => error(StatusCode::NOT_FOUND, "this node runs alone (no --cluster)"),
        Some(c) => match c.status().await {
            Ok(status) => Json(status).into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

async fn watermarks(State(s): AppState, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.watermarks()).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// How long `POST /v1/verify` waits for the tables to catch up with what
/// was acknowledged before it answers 503.
const VERIFY_WAIT: Duration = Duration::from_secs(60);

/// Body of `POST /v1/verify`: optionally, the batches a client had
/// acknowledged, each to be found with all its events.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    #[serde(default)]
    expected: Option<Vec<ExpectedBatch>>,
}

async fn verify_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    // No body (curl -X POST) asks for the invariants alone.
    let req: VerifyRequest = if body.trim_ascii().is_empty() {
        VerifyRequest::default()
    } else {
        match json_body(&body) {
            Ok(r) => r,
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        }
    };
    // Acknowledged is journaled; the tables follow within a flush interval,
    // or much later behind a slow cluster. Checked before they caught up,
    // what they lack would be counted missing, and on ScyllaDB (no
    // snapshot) tables read while rows still land disagree with each
    // other: no verdict then, but a retryable refusal.
    if !s.ctx.tables_caught_up(VERIFY_WAIT).await {
        let journaled = s.ctx.sequencer.subscribe().borrow().durable;
        let store = s.store.clone();
        let in_tables = tokio::task::spawn_blocking(move || store.materialized_lsn())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the tables still trail the journal after {} s (LSN {in_tables} of {journaled}): every acknowledged batch is durable in the journal, but a verdict now would count the rest missing; ask again",
                VERIFY_WAIT.as_secs()
            ),
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("5"),
        );
        return r;
    }
    let store = s.store.clone();
    let run = tokio::task::spawn_blocking(move || verify(&*store, req.expected.as_deref()));
    match run.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Body of `POST /v1/revoke` (role admin).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    /// The token's `jti` or the certificate's serial, in hex.
    id: String,
    /// `token` or `certificate`.
    kind: String,
    #[serde(default)]
    reason: String,
}

async fn revoke_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
    let req: RevokeRequest = match json_body(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    // Who revoked what, from where.
    let by = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| s.ctx.auth.api(Some(h)).ok().flatten())
        .map(|(_, id)| id)
        .unwrap_or_default();
    s.ctx.auth.audit.log(
        Record::new("revoke_requested", &req.reason)
            .peer(peer)
            .credential(&req.id)
            .detail(serde_json::json!({ "kind": req.kind, "by": by })),
    );
    let method = match req.kind.as_str() {
        "token" => Method::Token,
        "certificate" => Method::Certificate,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("kind {other:?}: token or certificate"),
            );
        }
    };
    let auth = s.ctx.auth.clone();
    let run = tokio::task::spawn_blocking(move || auth.revoke(&req.id, method, &req.reason));
    match run.await {
        Ok(Ok((added, closed))) => {
            Json(serde_json::json!({ "revoked": added, "connections_closed": closed }))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `METHOD PATH` to a router with the API's 405 layer: the raw response.
    async fn ask(method: &str, path: &str) -> std::io::Result<String> {
        let app = with_json_405(
            axum::Router::new()
                .route("/v1/verify", post(|| async { "verified" }))
                .route("/healthz", get(|| async { "ok" })),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        conn.read_to_string(&mut out).await?;
        server.abort();
        Ok(out)
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_json_405_naming_the_right_one() -> std::io::Result<()> {
        let out = ask("GET", "/v1/verify").await?;
        let lower = out.to_ascii_lowercase();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        assert!(lower.contains("allow: post"), "{out}");
        assert!(lower.contains("content-type: application/json"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(
            json["error"], "GET is not allowed on /v1/verify: use POST",
            "{out}"
        );
        // What the router takes is untouched.
        let ok = ask("POST", "/v1/verify").await?;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("verified"),
            "{ok}"
        );
        let missing = ask("GET", "/nowhere").await?;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        Ok(())
    }
}
