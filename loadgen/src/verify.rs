//! End-to-end verification: the acknowledged batches against what the
//! server stored, in process or over the server's HTTP API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tillstream_storage::Backend;
use tillstream_storage::verify::{ExpectedBatch, verify};

use crate::fleet::AckedRef;

/// The manifest of acknowledged batches, as the verifier takes it.
pub fn manifest(acked: &[AckedRef]) -> Vec<ExpectedBatch> {
    acked
        .iter()
        .map(|a| ExpectedBatch {
            device: a.device,
            seq: a.seq,
            events: a.events,
        })
        .collect()
}

/// Verifies the in-process server's store.
pub async fn in_process(
    store: Arc<dyn Backend>,
    expected: Vec<ExpectedBatch>,
) -> anyhow::Result<serde_json::Value> {
    let report = tokio::task::spawn_blocking(move || verify(&*store, Some(&expected)))
        .await
        .context("the verification task failed")?
        .context("verifying the store")?;
    serde_json::to_value(report).context("encoding the verification report")
}

/// Body of `POST /v1/verify`.
#[derive(Debug, serde::Serialize)]
struct VerifyRequest<'a> {
    expected: &'a [ExpectedBatch],
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Asks a remote server to verify: `POST {http}/v1/verify`.
/// `bearer` is an API token (role analyst or admin) for servers that
/// require one.
pub async fn remote(
    http: &str,
    bearer: Option<&str>,
    expected: Vec<ExpectedBatch>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/v1/verify", http.trim_end_matches('/'));
    let auth = bearer.map(|t| format!("Bearer {t}"));
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        // 503: the server's tables still trail what it acknowledged (a
        // slow cluster); it waits a minute each time before it says so.
        for _ in 0..VERIFY_ATTEMPTS {
            let mut req = agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let mut resp = req
                .send_json(VerifyRequest {
                    expected: &expected,
                })
                .with_context(|| format!("POST {url}"))?;
            let status = resp.status();
            if status == 503 {
                let why = resp.body_mut().read_to_string().unwrap_or_default();
                tracing::warn!(reason = %why.trim(), "the server cannot verify yet; asking again");
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
            if !status.is_success() {
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                anyhow::bail!("POST {url}: {status}: {}", body.trim());
            }
            return resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_json::<serde_json::Value>()
                .with_context(|| format!("reading the answer of POST {url}"));
        }
        anyhow::bail!("POST {url}: the server's tables did not catch up with what it acknowledged in {VERIFY_ATTEMPTS} attempts of a minute")
    })
    .await
    .context("the verification task failed")?
}

/// Times [`remote`] asks a server whose tables trail its journal.
const VERIFY_ATTEMPTS: u32 = 10;

/// `GET {http}{path}` on the server's API with the token, if any, its
/// body read by `read`, off the runtime (5 s at most); the error says
/// which URL failed and why.
pub(crate) async fn get<T: Send + 'static>(
    http: &str,
    path: &str,
    bearer: Option<&str>,
    read: impl FnOnce(&mut ureq::Body) -> Result<T, ureq::Error> + Send + 'static,
) -> Result<T, String> {
    let url = format!("{}{path}", http.trim_end_matches('/'));
    let auth = bearer.map(|t| format!("Bearer {t}"));
    tokio::task::spawn_blocking(move || {
        let mut req = agent(Duration::from_secs(5)).get(&url);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        req.call()
            .and_then(|mut r| read(r.body_mut()))
            .map_err(|e| format!("GET {url}: {e}"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("GET {path}: the task failed: {e}")))
}

/// The remote server's settings (`GET {http}/v1/settings`), or null.
pub async fn remote_settings(http: &str, bearer: Option<&str>) -> serde_json::Value {
    match get(http, "/v1/settings", bearer, |b| b.read_json()).await {
        Ok(v) => v,
        Err(why) => {
            tracing::warn!(%why, "cannot read the server's settings");
            serde_json::Value::Null
        }
    }
}

/// Writes `catalog` to the remote server (`POST {http}/v1/catalog`, admin).
pub async fn put_catalog(
    http: &str,
    bearer: Option<&str>,
    catalog: &tillstream_storage::catalog::Catalog,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/catalog", http.trim_end_matches('/'));
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let body = serde_json::to_value(catalog).context("encoding the catalogue")?;
    tokio::task::spawn_blocking(move || {
        let mut req = agent(Duration::from_secs(60)).post(&url);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        req.send_json(body).with_context(|| format!("POST {url}"))?;
        Ok(())
    })
    .await
    .context("the catalogue task failed")?
}
