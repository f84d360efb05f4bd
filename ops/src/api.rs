//! Calls to a running server's HTTP API (`query --server-http`,
//! `backup --server-http`), with the server's own error text on failure.

use std::path::PathBuf;

use anyhow::Context;

/// Where an admin command acts: a stopped server's data directory, or a
/// running server through its HTTP API (`backup`, `catalog import`).
#[derive(Debug, clap::Args)]
pub(crate) struct AdminTarget {
    /// Data directory of a stopped server.
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// A running server's HTTP API instead (`http://127.0.0.1:7401`).
    #[arg(long, env = "TILLSTREAM_SERVER_HTTP")]
    pub(crate) server_http: Option<String>,
    /// Bearer token of role admin for --server-http.
    #[arg(long, env = "TILLSTREAM_API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,
}

impl AdminTarget {
    /// POSTs `body` to `path` (`/v1/backup`) of the running server, if
    /// one was named: its answer. `None`: act on the data directory.
    pub(crate) fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(base) = &self.server_http else {
            return Ok(None);
        };
        let url = format!("{}{path}", base.trim_end_matches('/'));
        call(&url, self.api_token.as_deref(), Some(body)).map(Some)
    }
}

/// `GET` (no body) or `POST` (`body`) of `url` with an optional bearer
/// token; the JSON answer of a 200, an error naming the status and the
/// server's `error` text otherwise.
pub(crate) fn call(
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(3_600)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {}", t.trim()));
    let sent = match body {
        None => {
            let mut req = agent.get(url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        Some(b) => {
            let mut req = agent.post(url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send_json(b)
        }
    };
    let mut resp =
        sent.with_context(|| format!("calling {url} (is the server running with --http?)"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    match status {
        200 => serde_json::from_str(&text).with_context(|| format!("the answer of {url}")),
        _ => anyhow::bail!("{}", refused(url, status, &text)),
    }
}

/// What to say of an answer other than 200: the server's own reason (its
/// `{"error": ...}`, else the text), and for a refused token what to do.
fn refused(url: &str, status: u16, text: &str) -> String {
    let why = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| text.trim().to_owned());
    let why = if why.is_empty() {
        "(no reason given)".to_owned()
    } else {
        why
    };
    match status {
        401 => format!(
            "{url} answered 401: {why}; give a valid token with --api-token (tillstream token issue --role analyst|admin)"
        ),
        403 => format!(
            "{url} answered 403: {why}; give a token of that role with --api-token (tillstream token issue --role analyst|admin)"
        ),
        _ => format!("{url} answered {status}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::refused;

    #[test]
    fn a_refusal_says_the_servers_reason() {
        let url = "http://127.0.0.1:7401/api/v1/sales";
        let expired = refused(
            url,
            401,
            r#"{"error":"the token expired at 2026-11-28T10:00:00Z"}"#,
        );
        assert!(
            expired.contains("the token expired at 2026-11-28T10:00:00Z"),
            "{expired}"
        );
        assert!(expired.contains("--api-token"), "{expired}");
        let weak = refused(
            url,
            403,
            r#"{"error":"this endpoint needs role admin; the token has analyst"}"#,
        );
        assert!(
            weak.contains("needs role admin; the token has analyst"),
            "{weak}"
        );
        assert!(refused(url, 500, "disk on fire\n").ends_with("500: disk on fire"));
        assert!(refused(url, 502, "").contains("(no reason given)"));
    }
}
