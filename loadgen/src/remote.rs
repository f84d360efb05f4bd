//! A server elsewhere (`--server`): what the devices need to reach it, and
//! whether it answers, asked before a workload is prepared or streamed:
//! its QUIC port with one handshake, its HTTP API with `GET /healthz`.
//! Issue 70: a loadgen that could not reach its server never said so, and
//! one whose `--http` was wrong streamed the whole run and failed at the
//! end.
//!
//! The HTTP API is `--http`, or else derived from `--server`: the same
//! host, the next port, as `tillstream serve` pairs its defaults (7400 and
//! 7401). The server's `Welcome` does not carry it: a field more is a new
//! protocol version (protocol `FORMAT.md`), and the server knows only the
//! address it binds (`0.0.0.0:7401`, or one behind a load balancer), not
//! one this host reaches. A probe of the address this host would use is
//! what tells.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tillstream_auth::Role;
use tillstream_auth::ca::DeviceCa;
use tillstream_auth::token::SigningKey;
use tillstream_client::{DeviceTls, EndpointOptions, client_endpoint_with};

use crate::cli::{Args, AuthMode};
use crate::credentials::Credentials;
use crate::verify;

/// How long a QUIC handshake may take before the server counts as not
/// answering: the devices' own idle timeout, past which quinn gives a
/// handshake up anyway.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server elsewhere, checked.
#[derive(Debug)]
pub struct Remote {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// PEM of the certificate to trust (`--ca`).
    pub ca_pem: Vec<u8>,
    /// What the devices authenticate with.
    pub credentials: Credentials,
    /// Its HTTP API's base URL; `None` where nothing answered there and
    /// the run does not need it (no `--verify`).
    pub http: Option<String>,
    /// An admin token for the API, where the server's key was given.
    pub bearer: Option<String>,
    /// Its settings (`GET /v1/settings`; null if unread).
    pub settings: serde_json::Value,
}

/// The HTTP API of a server whose QUIC port is `quic`, as `tillstream
/// serve`'s defaults pair them: the same host, the next port.
pub fn derived_http(quic: SocketAddr) -> Option<String> {
    let port = quic.port().checked_add(1)?;
    Some(format!("http://{}", SocketAddr::new(quic.ip(), port)))
}

/// Resolves `--server`, reads the credentials, and checks that the server
/// answers: a handshake on its QUIC port (else "cannot connect to ..."),
/// then `GET /healthz` on its HTTP API, which `--verify` cannot do without.
pub async fn connect(args: &Args, server: &str, opts: &EndpointOptions) -> anyhow::Result<Remote> {
    let ca = args
        .ca
        .as_ref()
        .context("--ca FILE is required with --server")?;
    let ca_pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
    let credentials = credentials(args, &ca_pem)?;
    let addr = tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve --server {server}"))?
        .next()
        .with_context(|| format!("--server {server} resolves to no address"))?;
    // A device's credential: with certificates, the server may ask for one
    // in the handshake itself.
    let probe = credentials
        .for_device(0, 1, Role::Terminal, opts)
        .context("a credential for the connection check")?;
    handshake(addr, &args.server_name, &ca_pem, probe.tls.as_ref(), opts)
        .await
        .map_err(|why| anyhow::anyhow!("cannot connect to {addr} (--server {server}): {why}"))?;

    let (http, derived) = match &args.http {
        Some(h) => (h.trim_end_matches('/').to_owned(), false),
        None => match derived_http(addr) {
            Some(h) => (h, true),
            None => bail!("--server {server} has no next port for the HTTP API: pass --http URL"),
        },
    };
    let whence = if derived {
        format!(
            "{http}, derived from --server {server} (the next port, as `tillstream serve` pairs \
             7400 and 7401)"
        )
    } else {
        format!("--http {http}")
    };
    let http = match healthz(&http).await {
        Ok(()) => Some(http),
        Err(why) if args.verify => bail!(
            "--verify needs the server's HTTP API, and nothing answers at {whence}: {why}; pass \
             --http URL, the address of the server's `serve --http`"
        ),
        Err(why) => {
            tracing::warn!(
                %why,
                "the server's HTTP API does not answer at {whence}: the report will have no \
                 server CPU, ack latency or settings of its own (pass --http URL for them)"
            );
            None
        }
    };
    // The API (verify, settings, metrics) takes an admin token signed with
    // the server's key, whatever the devices present.
    let bearer = match &args.token_key {
        Some(p) => Credentials::Tokens(Arc::new(SigningKey::load(p)?)).api_token(),
        None => None,
    };
    let settings = match &http {
        Some(h) => verify::remote_settings(h, bearer.as_deref()).await,
        None => serde_json::Value::Null,
    };
    Ok(Remote {
        addr,
        ca_pem,
        credentials,
        http,
        bearer,
        settings,
    })
}

/// What the devices authenticate with, from the arguments.
fn credentials(args: &Args, ca_pem: &[u8]) -> anyhow::Result<Credentials> {
    Ok(match (&args.token_key, args.auth) {
        (_, AuthMode::None) => Credentials::None,
        (_, AuthMode::Certificate) => {
            let dir = args
                .device_ca_dir
                .as_ref()
                .context("--device-ca-dir is required with --auth certificate")?;
            Credentials::Certificates {
                ca: Arc::new(
                    DeviceCa::load(dir)
                        .with_context(|| format!("loading the device CA of {}", dir.display()))?,
                ),
                trust_pem: ca_pem.to_vec(),
            }
        }
        (Some(p), _) => Credentials::Tokens(Arc::new(
            SigningKey::load(p).with_context(|| format!("reading --token-key {}", p.display()))?,
        )),
        (None, _) => bail!(
            "--token-key FILE is required with --server (the server's DATA_DIR/auth/signing.key), or --auth none for a server run with --auth none"
        ),
    })
}

/// One QUIC handshake with the server, closed once made: the error says
/// why none was made within [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &[u8],
    tls: Option<&DeviceTls>,
    opts: &EndpointOptions,
) -> Result<(), String> {
    let endpoint = client_endpoint_with(ca_pem, addr, opts).map_err(|e| e.to_string())?;
    let connecting = match tls {
        Some(t) => endpoint.connect_with(t.quinn_config(), addr, server_name),
        None => endpoint.connect(addr, server_name),
    }
    .map_err(|e| e.to_string())?;
    let secs = HANDSHAKE_TIMEOUT.as_secs();
    let made = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"connection check");
            Ok(())
        }
        Ok(Err(quinn::ConnectionError::TimedOut)) | Err(_) => Err(format!(
            "no answer to a QUIC handshake in {secs} s (is a server listening there? `tillstream \
             serve --listen`)"
        )),
        Ok(Err(e)) => Err(format!("the QUIC handshake failed: {e}")),
    };
    endpoint.close(0u32.into(), b"connection check");
    // Enough for the close to reach the server; nothing waits on it.
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    made
}

/// `GET {http}/healthz`, which needs no token: `Ok` if it answers 2xx.
pub async fn healthz(http: &str) -> Result<(), String> {
    verify::get(http, "/healthz", None, |b| b.read_to_string())
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_api_is_the_next_port_of_the_quic_one() {
        let at = |s: &str| s.parse::<SocketAddr>().map(derived_http).ok().flatten();
        assert_eq!(
            at("127.0.0.1:7400").as_deref(),
            Some("http://127.0.0.1:7401")
        );
        assert_eq!(at("10.1.2.3:9000").as_deref(), Some("http://10.1.2.3:9001"));
        assert_eq!(at("[::1]:7500").as_deref(), Some("http://[::1]:7501"));
        assert_eq!(at("127.0.0.1:65535"), None);
    }
}
