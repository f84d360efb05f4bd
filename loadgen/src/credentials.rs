//! How the simulated devices prove who they are: a token per device
//! signed with the server's key, or a certificate per device issued by its
//! device CA, each for the device's own store and role, as an operator
//! would provision a real fleet. Minted before the clock starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tillstream_auth::Role;
use tillstream_auth::ca::DeviceCa;
use tillstream_auth::token::{SigningKey, TokenRequest};
use tillstream_client::{DeviceTls, EndpointOptions, client_tls_with_identity};

/// What the fleet authenticates with.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing (a server run with `--auth none`).
    #[default]
    None,
    /// A token per device, signed with this key.
    Tokens(Arc<SigningKey>),
    /// A certificate per device, issued by this CA; the PEM is the
    /// server's certificate to trust.
    Certificates {
        ca: Arc<DeviceCa>,
        trust_pem: Vec<u8>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mode())
    }
}

/// What one device presents.
#[derive(Debug, Default)]
pub struct DeviceCredential {
    /// For `Hello` (empty: none).
    pub token: Vec<u8>,
    /// Its own TLS settings with a client certificate.
    pub tls: Option<DeviceTls>,
}

/// How long minted credentials live: longer than any run.
const TTL: Duration = Duration::from_secs(7 * 86_400);

impl Credentials {
    /// The mode's name in reports: `token`, `certificate` or `none`.
    pub fn mode(&self) -> &'static str {
        match self {
            Credentials::None => "none",
            Credentials::Tokens(_) => "token",
            Credentials::Certificates { .. } => "certificate",
        }
    }

    /// The credential of `device` of `store` with `role`; a certificate's
    /// TLS settings carry the transport options `opts`.
    pub fn for_device(
        &self,
        device: u64,
        store: u32,
        role: Role,
        opts: &EndpointOptions,
    ) -> anyhow::Result<DeviceCredential> {
        Ok(match self {
            Credentials::None => DeviceCredential::default(),
            Credentials::Tokens(key) => {
                let (token, _) = key
                    .issue(&TokenRequest {
                        device: Some(device),
                        store: Some(store),
                        role,
                        ttl: TTL,
                    })
                    .with_context(|| format!("signing the token of device {device}"))?;
                DeviceCredential {
                    token: token.into_bytes(),
                    tls: None,
                }
            }
            Credentials::Certificates { ca, trust_pem } => {
                let issued = ca
                    .issue(device, store, role, TTL)
                    .with_context(|| format!("issuing the certificate of device {device}"))?;
                let tls = client_tls_with_identity(
                    trust_pem,
                    issued.cert_pem.as_bytes(),
                    issued.key_pem.as_bytes(),
                    opts,
                )?;
                DeviceCredential {
                    token: Vec::new(),
                    tls: Some(tls),
                }
            }
        })
    }

    /// Tokens signed with the key of a server started in this process
    /// (none if it runs without authentication).
    pub fn of_server(server: &tillstream_engine::Server) -> anyhow::Result<Self> {
        Ok(match server.signing_key_path() {
            Some(p) => Credentials::Tokens(Arc::new(
                SigningKey::load(p).with_context(|| format!("loading {}", p.display()))?,
            )),
            None => Credentials::None,
        })
    }

    /// An admin token for the HTTP API (verify, settings), if tokens are
    /// available.
    pub fn api_token(&self) -> Option<String> {
        match self {
            Credentials::Tokens(key) => key
                .issue(&TokenRequest {
                    device: None,
                    store: None,
                    role: Role::Admin,
                    ttl: Duration::from_secs(3600),
                })
                .ok()
                .map(|(t, _)| t),
            _ => None,
        }
    }
}
