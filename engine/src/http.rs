//! The HTTP API: `/metrics` (Prometheus), `/healthz`, `/readyz`, and the
//! `/v1/*` endpoints that remote tools use (verify, settings, watermarks).
//! Unauthenticated in this version: bind it to loopback or a private
//! network (the default is loopback).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tillstream_storage::Query;
use tillstream_storage::embedded::EmbeddedStore;
use tillstream_storage::verify::{ExpectedBatch, verify};
use tokio::sync::watch;

use crate::ctx::EngineCtx;
use crate::{EngineError, ServerSettings, metrics};

#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub(crate) ctx: Arc<EngineCtx>,
    pub(crate) store: Arc<EmbeddedStore>,
    pub(crate) settings: ServerSettings,
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
        .with_state(Arc::new(state));
    let join = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok((bound, join))
}

type AppState = State<Arc<HttpState>>;

async fn metrics_text(State(s): AppState) -> Response {
    metrics::ack_stall(s.ctx.sequencer.ack_stall());
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
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn settings(State(s): AppState) -> Json<ServerSettings> {
    Json(s.settings.clone())
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn watermarks(State(s): AppState) -> Response {
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.watermarks()).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Body of `POST /v1/verify`: optionally, the batches a client had
/// acknowledged, each to be found with all its events.
#[derive(Debug, Default, serde::Deserialize)]
struct VerifyRequest {
    #[serde(default)]
    expected: Option<Vec<ExpectedBatch>>,
}

async fn verify_handler(State(s): AppState, body: Option<Json<VerifyRequest>>) -> Response {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    // Acknowledged is journaled; the tables follow within a flush interval.
    s.ctx.tables_caught_up(Duration::from_secs(60)).await;
    let store = s.store.clone();
    let run = tokio::task::spawn_blocking(move || verify(&*store, req.expected.as_deref()));
    match run.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
