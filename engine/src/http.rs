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
use tillstream_auth::{Method, Role};

#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub(crate) ctx: Arc<EngineCtx>,
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) settings: ServerSettings,
    /// The QUIC socket, for its buffer and drop figures.
    pub(crate) udp: crate::udp::ServerSocket,
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
        .route("/v1/watermarks", get(watermarks))
        .route("/v1/verify", post(verify_handler))
        .route("/v1/revoke", post(revoke_handler))
        .route("/v1/backup", post(backup_handler))
        .route("/v1/catalog", post(catalog_handler))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/{endpoint}", get(question))
        .with_state(Arc::new(state));
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
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response(),
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
    Json(catalog): Json<tillstream_storage::catalog::Catalog>,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
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
struct BackupRequest {
    /// A new or empty directory on the server's machine.
    dir: std::path::PathBuf,
}

/// `POST /v1/backup {"dir": ...}` (role admin): a consistent copy of the
/// store while it serves (`tillstream backup --server-http`).
async fn backup_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<BackupRequest>,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
    let store = s.store.clone();
    let dir = req.dir.clone();
    match tokio::task::spawn_blocking(move || store.backup_to(&dir)).await {
        Ok(Ok(info)) => {
            tracing::info!(dir = %req.dir.display(), ?info, "backup written");
            Json(info).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /api/v1/openapi.json`: the query API's description (open, like a
/// health check: it holds no data).
async fn openapi() -> Response {
    Json(crate::questions::openapi()).into_response()
}

/// `GET /api/v1/<endpoint>?...`: what `tillstream query` answers, as the
/// same JSON array (role analyst).
async fn question(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    axum::extract::Path(endpoint): axum::extract::Path<String>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use crate::questions::{Question, QuestionError};
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    let q = match Question::from_request(&endpoint, &params) {
        Ok(q) => q,
        Err(e) => {
            let status = if crate::questions::ENDPOINTS
                .iter()
                .any(|e| e.name == endpoint)
            {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::NOT_FOUND
            };
            return (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response();
        }
    };
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || q.answer(store.as_ref())).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(QuestionError::Bad(why))) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn settings(State(s): AppState, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    Json(s.settings.clone()).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
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
struct VerifyRequest {
    #[serde(default)]
    expected: Option<Vec<ExpectedBatch>>,
}

async fn verify_handler(
    State(s): AppState,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Option<Json<VerifyRequest>>,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Analyst) {
        return r;
    }
    let req = body.map(|Json(r)| r).unwrap_or_default();
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
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, HeaderValue::from_static("5"))],
            format!(
                "the tables still trail the journal after {} s (LSN {in_tables} of {journaled}): every acknowledged batch is durable in the journal, but a verdict now would count the rest missing; ask again\n",
                VERIFY_WAIT.as_secs()
            ),
        )
            .into_response();
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
    Json(req): Json<RevokeRequest>,
) -> Response {
    if let Some(r) = refusal(&s, &headers, peer, Role::Admin) {
        return r;
    }
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
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    serde_json::json!({ "error": format!("kind {other:?}: token or certificate") }),
                ),
            )
                .into_response();
        }
    };
    let auth = s.ctx.auth.clone();
    let run = tokio::task::spawn_blocking(move || auth.revoke(&req.id, method, &req.reason));
    match run.await {
        Ok(Ok((added, closed))) => {
            Json(serde_json::json!({ "revoked": added, "connections_closed": closed }))
                .into_response()
        }
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}
