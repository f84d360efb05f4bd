//! A server elsewhere (`--server`): what the devices need to reach it, and
//! whether it answers, asked before a workload is prepared or streamed:
//! its QUIC port with one handshake, its HTTP API with `GET /healthz`.
//! `--server` may list the nodes of one cluster, comma-separated: each is
//! resolved and asked for a handshake, and every device gets them all as
//! its seeds (`tillstream_client::Dialer`).
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
    /// Its QUIC address: the first of `--server`.
    pub addr: SocketAddr,
    /// The other addresses of `--server` (nodes of the same cluster), in
    /// order; empty for a single server.
    pub seeds: Vec<SocketAddr>,
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

/// The addresses of `--server`: one, or a comma-separated list (spaces
/// around each are dropped). An empty one is an error.
pub fn split_servers(server: &str) -> anyhow::Result<Vec<&str>> {
    let list: Vec<&str> = server.split(',').map(str::trim).collect();
    if list.iter().any(|s| s.is_empty()) {
        bail!("--server {server:?} has an empty address: give host:port[,host:port...]");
    }
    Ok(list)
}

/// Resolves each address of `--server` (the first address each resolves
/// to), all of one address family: the devices' endpoint binds one socket.
async fn resolve_servers(server: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for s in split_servers(server)? {
        let addr = tokio::net::lookup_host(s)
            .await
            .with_context(|| format!("cannot resolve --server {s}"))?
            .next()
            .with_context(|| format!("--server {s} resolves to no address"))?;
        if let Some(first) = addrs.first()
            && first.is_ipv6() != addr.is_ipv6()
        {
            bail!(
                "--server {s} ({addr}) is not of the address family of {first}: the devices \
                 share one socket, so every address must be IPv4, or every one IPv6"
            );
        }
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

/// Resolves `--server`, reads the credentials, and checks that the server
/// answers: a handshake on its QUIC port (else "cannot connect to ..."),
/// then `GET /healthz` on its HTTP API, which `--verify` cannot do without.
/// Of a list, every address is asked at once; one that answers is enough
/// (the devices go to the next seed past a dead one), and a warning names
/// the others.
pub async fn connect(args: &Args, server: &str, opts: &EndpointOptions) -> anyhow::Result<Remote> {
    let ca = args
        .ca
        .as_ref()
        .context("--ca FILE is required with --server")?;
    let ca_pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
    let credentials = credentials(args, &ca_pem)?;
    let addrs = resolve_servers(server).await?;
    // A device's credential: with certificates, the server may ask for one
    // in the handshake itself.
    let probe = credentials
        .for_device(0, 1, Role::Terminal, opts)
        .context("a credential for the connection check")?;
    let mut checks = tokio::task::JoinSet::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let (name, pem, tls, opts) = (
            args.server_name.clone(),
            ca_pem.clone(),
            probe.tls.clone(),
            *opts,
        );
        checks.spawn(async move {
            let made = handshake(addr, &name, &pem, tls.as_ref(), &opts).await;
            (i, made)
        });
    }
    let mut silent: Vec<(usize, String)> = Vec::new();
    while let Some(done) = checks.join_next().await {
        let (i, made) = done.context("the connection check failed")?;
        if let Err(why) = made {
            silent.push((i, why));
        }
    }
    silent.sort();
    let why = |&(i, ref why): &(usize, String)| format!("{}: {why}", addrs[i]);
    if silent.len() == addrs.len() {
        let whys: Vec<String> = silent.iter().map(why).collect();
        bail!("cannot connect to {} (--server {server})", whys.join("; "));
    }
    for s in &silent {
        tracing::warn!(
            "cannot connect to {} (--server {server}); the devices start at the other seeds",
            why(s)
        );
    }
    let (addr, seeds) = (addrs[0], addrs[1..].to_vec());

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
        seeds,
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
    fn server_takes_a_list_of_addresses() -> anyhow::Result<()> {
        assert_eq!(split_servers("127.0.0.1:7001")?, ["127.0.0.1:7001"]);
        assert_eq!(
            split_servers("127.0.0.1:7001,127.0.0.2:7001, node-3.local:7001")?,
            ["127.0.0.1:7001", "127.0.0.2:7001", "node-3.local:7001"]
        );
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2", " "] {
            assert!(split_servers(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn server_addresses_resolve_to_one_family() -> anyhow::Result<()> {
        let addrs = resolve_servers("127.0.0.1:7001,127.0.0.2:7001,127.0.0.1:7001").await?;
        assert_eq!(
            addrs,
            [
                "127.0.0.1:7001".parse::<SocketAddr>()?,
                "127.0.0.2:7001".parse()?
            ],
            "in order, once each"
        );
        let mixed = resolve_servers("127.0.0.1:7001,[::1]:7001").await;
        assert!(
            mixed.is_err_and(|e| e.to_string().contains("address family")),
            "IPv4 and IPv6 together"
        );
        Ok(())
    }

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
