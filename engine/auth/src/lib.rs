//! tillstream's credentials, free of sockets and runtimes.
//!
//! Who may do what is carried by [`Claims`]: a device id, its store and a
//! [`Role`]. Devices prove them two ways, both signed by keys kept in the
//! server's data directory (see ARCHITECTURE.md, "Identity"):
//! - a JWT signed with EdDSA ([`token`]), sent in `Hello`;
//! - a client certificate issued by the deployment's device CA ([`ca`]),
//!   presented in the TLS handshake.
//!
//! The HTTP API takes the same tokens with role `admin` or `analyst`.
//! [`revocation`] is the list of credentials withdrawn before they expire.
//! [`keys`] lets a server accept tokens of previous keys besides its
//! signing key, so that the key can be rotated with no downtime.

pub mod ca;
pub mod keys;
pub mod revocation;
pub mod token;

mod files;

pub use files::write_atomic;

use std::fmt;
use std::str::FromStr;

/// Below the data directory: the signing key, the accepted previous keys,
/// the device CA, the list of revoked credentials.
pub const AUTH_DIR: &str = "auth";

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A till: sales, refunds and its own health, for its store.
    Terminal,
    /// A shelf sensor: shelf counts, stock movements and its health.
    ShelfSensor,
    /// The HTTP API, everything.
    Admin,
    /// The HTTP API, read-only queries.
    Analyst,
}

impl Role {
    /// The name used in tokens, certificates and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Terminal => "terminal",
            Role::ShelfSensor => "shelf-sensor",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }

    /// Whether the role belongs to a device (streams over QUIC) rather
    /// than to a user of the HTTP API.
    pub fn is_device(self) -> bool {
        matches!(self, Role::Terminal | Role::ShelfSensor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        Ok(match s {
            "terminal" => Role::Terminal,
            "shelf-sensor" => Role::ShelfSensor,
            "admin" => Role::Admin,
            "analyst" => Role::Analyst,
            other => {
                return Err(AuthError::Invalid(format!(
                    "unknown role {other:?} (terminal, shelf-sensor, admin or analyst)"
                )));
            }
        })
    }
}

/// How a credential was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A signed token in `Hello` or an HTTP bearer header.
    Token,
    /// A client certificate in the TLS handshake.
    Certificate,
}

/// What a verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The device it was issued to (`None` for API users).
    pub device: Option<u64>,
    /// The store it may send for (`None` for API users).
    pub store: Option<u32>,
    /// What it may do.
    pub role: Role,
    /// When it stops being valid, seconds since the epoch.
    pub expires_at_s: u64,
    /// What revokes it: the token's `jti` or the certificate's serial, in
    /// lower-case hex.
    pub id: String,
    /// How it was presented.
    pub method: Method,
    /// The id (`kid`) of the token key that verified it; `None` for a
    /// certificate. A server that stops accepting that key closes the
    /// connections it verified.
    pub key_id: Option<String>,
}

/// Why a credential was refused. The messages go back to the client and
/// into the audit log, so they name the rule, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Malformed, or a claim missing or out of range.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// The signature does not verify with this deployment's key.
    #[error("the credential's signature does not verify with this server's key")]
    BadSignature,
    /// The token names (`kid`) a key this server does not accept: one
    /// retired after a rotation, or another deployment's.
    #[error(
        "the credential's signature cannot be checked: it names a signing key this server does not accept (retired, or another deployment's)"
    )]
    UnknownKey,
    /// Past its expiry.
    #[error("the credential expired")]
    Expired,
    /// On the revocation list.
    #[error("the credential {0} was revoked")]
    Revoked(String),
    /// Reading or writing key, certificate or list files.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file that holds no usable token key.
    #[error("{path}: {reason}")]
    BadKey {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A key rotation that cannot be done as asked.
    #[error("token keys: {0}")]
    Keys(String),
    /// Generating keys or certificates.
    #[error("crypto: {0}")]
    Crypto(String),
}

/// Seconds since the epoch now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 16 random bytes in hex: token ids and certificate serials.
pub(crate) fn random_id() -> Result<(String, [u8; 16]), AuthError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| AuthError::Crypto("no system randomness".into()))?;
    // A positive DER integer: certificate serials must not be negative.
    b[0] &= 0x7f;
    Ok((hex(&b), b))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
