//! Signed tokens: JWT (RFC 7519) signed with EdDSA (Ed25519).
//!
//! One key pair per deployment signs: devices get tokens with role
//! `terminal` or `shelf-sensor` and their device id and store; users of the
//! HTTP API get `admin` or `analyst`. Every token names its key in the
//! `kid` header ([`key_id`]), so that a server may also accept the tokens
//! of a previous key while the deployment moves to a new one
//! ([`crate::keys`]). Verifying costs one Ed25519 check per connection (per
//! HTTP request for the API), nothing per event.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::files::{read_string, write_atomic};
use crate::{AuthError, Claims, Method, Role, hex, now_s, random_id};

/// The signing key below the data directory, made on the server's first
/// start.
pub const SIGNING_KEY: &str = "auth/signing.key";

/// The `iss` of every token.
const ISSUER: &str = "tillstream";

/// Longest lifetime a token may be issued with: ten years.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The id a token names its key by (`kid`): the first 16 hex digits (64
/// bits) of the SHA-256 of the raw Ed25519 public key. Derived from the
/// key, so every node and every copy of a key agree on it with nothing to
/// configure; public, like the key it names.
pub fn key_id(public_key_raw: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key_raw);
    let mut id = hex(digest.as_ref());
    id.truncate(16);
    id
}

/// What a token is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The device (required for device roles, refused for API roles).
    pub device: Option<u64>,
    /// The device's store (likewise).
    pub store: Option<u32>,
    /// What it may do.
    pub role: Role,
    /// How long it is valid.
    pub ttl: Duration,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store: Option<u32>,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The deployment's Ed25519 key: issues and verifies tokens.
pub struct SigningKey {
    pem: String,
    public: Vec<u8>,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, AuthError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        Self::from_pem(&pair.serialize_pem())
    }

    /// The key from its PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, AuthError> {
        let pair = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| AuthError::Invalid(format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
        if pair.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(AuthError::Invalid(
                "the signing key must be Ed25519 (tokens are signed with EdDSA)".into(),
            ));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Expiry is checked against the caller's clock in `verify`, so
        // that it is one rule, testable, with no hidden leeway.
        validation.validate_exp = false;
        validation.leeway = 0;
        Ok(Self {
            pem: pem.to_owned(),
            public: pair.public_key_raw().to_vec(),
            kid: key_id(pair.public_key_raw()),
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            decoding: DecodingKey::from_ed_der(pair.public_key_raw()),
            validation,
        })
    }

    /// Reads the key at `path`; a file that holds no usable key is an
    /// error naming it.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        Self::from_pem(&read_string("reading the token key", path)?).map_err(|e| match e {
            AuthError::Invalid(reason) => AuthError::BadKey {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// The id tokens name this key by (their `kid` header).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Whether `other` is the same key (by its public half).
    pub fn same_key(&self, other: &SigningKey) -> bool {
        self.public == other.public
    }

    /// The key as its PKCS#8 PEM, for copying it to another file.
    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }

    /// Reads the key at `path`, or makes one there (mode 0600) if there is
    /// none. The flag says whether it was made.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), AuthError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate()?;
        write_atomic(path, key.pem.as_bytes(), true)?;
        Ok((key, true))
    }

    /// Issues a token; returns it with what it claims.
    pub fn issue(&self, req: &TokenRequest) -> Result<(String, Claims), AuthError> {
        check_request(req.role, req.device, req.store)?;
        if req.ttl > MAX_TTL {
            return Err(AuthError::Invalid(
                "a token may live ten years at most".into(),
            ));
        }
        let (jti, _) = random_id()?;
        let iat = now_s();
        let claims = JwtClaims {
            iss: ISSUER.into(),
            sub: req
                .device
                .map_or_else(|| req.role.as_str().to_owned(), |d| d.to_string()),
            role: req.role,
            store: req.store,
            iat,
            exp: iat.saturating_add(req.ttl.as_secs()),
            jti,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Crypto(e.to_string()))?;
        Ok((token, to_claims(claims, &self.kid)?))
    }

    /// Checks a token's signature (with this key only, whatever key it
    /// names), issuer and expiry (against `now_s`) and returns its claims.
    /// Revocation is the caller's list to check. A server verifies with
    /// [`crate::keys::Verifier`], which also accepts previous keys.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<JwtClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(format!("not a tillstream token: {e}")),
            })?;
        if data.claims.exp <= now_s {
            return Err(AuthError::Expired);
        }
        to_claims(data.claims, &self.kid)
    }
}

fn to_claims(c: JwtClaims, kid: &str) -> Result<Claims, AuthError> {
    let device =
        if c.role.is_device() {
            Some(c.sub.parse::<u64>().map_err(|_| {
                AuthError::Invalid("a device token's subject must be its id".into())
            })?)
        } else {
            None
        };
    check_request(c.role, device, c.store)?;
    Ok(Claims {
        device,
        store: c.store,
        role: c.role,
        expires_at_s: c.exp,
        id: c.jti,
        method: Method::Token,
        key_id: Some(kid.to_owned()),
    })
}

/// Device roles need a device and a store; API roles take neither.
pub(crate) fn check_request(
    role: Role,
    device: Option<u64>,
    store: Option<u32>,
) -> Result<(), AuthError> {
    match (role.is_device(), device, store) {
        (true, Some(_), Some(_)) | (false, None, None) => Ok(()),
        (true, _, _) => Err(AuthError::Invalid(format!(
            "a {role} credential needs a device and a store"
        ))),
        (false, _, _) => Err(AuthError::Invalid(format!(
            "an {role} credential is for the HTTP API: it takes no device or store"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(ttl: u64) -> TokenRequest {
        TokenRequest {
            device: Some(7),
            store: Some(3),
            role: Role::Terminal,
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() -> Result<(), AuthError> {
        let key = SigningKey::generate()?;
        let (token, issued) = key.issue(&terminal(60))?;
        let claims = key.verify(&token, now_s())?;
        assert_eq!(claims, issued);
        assert_eq!((claims.device, claims.store), (Some(7), Some(3)));
        assert_eq!(claims.role, Role::Terminal);
        assert_eq!(claims.id.len(), 32);
        assert_eq!(claims.key_id.as_deref(), Some(key.kid()));
        Ok(())
    }

    #[test]
    fn a_token_names_its_key_by_a_stable_short_id() -> Result<(), AuthError> {
        let key = SigningKey::generate()?;
        let (token, _) = key.issue(&terminal(60))?;
        let header =
            jsonwebtoken::decode_header(&token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(key.kid().len(), 16);
        assert!(key.kid().bytes().all(|b| b.is_ascii_hexdigit()));
        // The same key read again has the same id; another key another.
        let again = SigningKey::from_pem(key.pem())?;
        assert_eq!(again.kid(), key.kid());
        assert!(again.same_key(&key));
        let other = SigningKey::generate()?;
        assert_ne!(other.kid(), key.kid());
        assert!(!other.same_key(&key));
        // SHA-256 of nothing starts e3b0c442 98fc1c14: the id is its first
        // 16 hex digits.
        assert_eq!(key_id(b""), "e3b0c44298fc1c14");
        Ok(())
    }

    #[test]
    fn a_file_without_a_key_is_an_error_naming_it() -> Result<(), AuthError> {
        let dir = tempfile::tempdir().map_err(|e| AuthError::Crypto(e.to_string()))?;
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not a key\n").map_err(|e| AuthError::Crypto(e.to_string()))?;
        let err = SigningKey::load(&path).map(|_| ());
        assert!(
            matches!(&err, Err(AuthError::BadKey { path: p, .. }) if *p == path),
            "{err:?}"
        );
        let shown = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("bad.key"), "{shown}");
        Ok(())
    }

    #[test]
    fn a_token_of_another_key_is_refused_as_forged() -> Result<(), AuthError> {
        let (token, _) = SigningKey::generate()?.issue(&terminal(60))?;
        let err = SigningKey::generate()?.verify(&token, now_s());
        assert!(matches!(err, Err(AuthError::BadSignature)), "{err:?}");
        // A claim edited after signing breaks the signature too.
        let key = SigningKey::generate()?;
        let (token, _) = key.issue(&terminal(60))?;
        let mut bytes = token.into_bytes();
        let at = bytes.iter().position(|&b| b == b'.').map_or(0, |i| i + 10);
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let err = key.verify(&tampered, now_s());
        assert!(err.is_err(), "{err:?}");
        Ok(())
    }

    #[test]
    fn an_expired_token_is_refused() -> Result<(), AuthError> {
        let key = SigningKey::generate()?;
        let (token, claims) = key.issue(&terminal(10))?;
        assert!(key.verify(&token, claims.expires_at_s - 1).is_ok());
        let err = key.verify(&token, claims.expires_at_s);
        assert!(matches!(err, Err(AuthError::Expired)), "{err:?}");
        Ok(())
    }

    #[test]
    fn roles_and_their_claims_must_agree() -> Result<(), AuthError> {
        let key = SigningKey::generate()?;
        let mut req = terminal(60);
        req.store = None;
        assert!(key.issue(&req).is_err());
        let api = TokenRequest {
            device: None,
            store: None,
            role: Role::Analyst,
            ttl: Duration::from_secs(60),
        };
        let (token, _) = key.issue(&api)?;
        assert_eq!(key.verify(&token, now_s())?.role, Role::Analyst);
        assert!(key.verify("not.a.token", now_s()).is_err());
        Ok(())
    }

    #[test]
    fn the_key_is_made_once_and_read_back() -> Result<(), AuthError> {
        let dir = tempfile::tempdir().map_err(|e| AuthError::Crypto(e.to_string()))?;
        let path = dir.path().join(SIGNING_KEY);
        let (first, made) = SigningKey::load_or_create(&path)?;
        assert!(made);
        let (second, made) = SigningKey::load_or_create(&path)?;
        assert!(!made);
        let (token, _) = first.issue(&terminal(60))?;
        second.verify(&token, now_s())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map_err(|e| AuthError::Crypto(e.to_string()))?;
            assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        }
        Ok(())
    }
}
