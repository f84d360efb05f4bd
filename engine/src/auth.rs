//! Who a device or an API caller is, and what it may do (see
//! ARCHITECTURE.md, "Identity"). The credentials and their checks live in
//! `tillstream-auth`; this module holds the server's side: which modes are
//! on, the token keys in force (the signing key and the accepted previous
//! keys, read again on SIGHUP), the revocation list as the server knows
//! it, the live connections each credential holds (so a revocation, or
//! the retirement of their token's key, closes them), and the scope a
//! device's batches are planned with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use tillstream_auth::keys::Verifier;
use tillstream_auth::token::SIGNING_KEY;
use tillstream_auth::{Claims, Role, ca, now_s, revocation};
use tillstream_engine_core::route::{Kinds, Scope};
use tillstream_protocol::ErrorCode;

use crate::EngineError;
use crate::audit::{Audit, AuditTarget, Record};
use crate::metrics as m;

/// Whether devices may present client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertAuth {
    /// Not accepted.
    Off,
    /// Accepted when the data directory holds a device CA
    /// (`tillstream ca init`), the default.
    IfCa,
    /// Accepted; the server does not start without a CA.
    On,
}

/// Authentication and authorization of a server.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Off: any peer may write as any device for any store, and the HTTP
    /// API is open. For a local experiment only; the server says so at
    /// start, in `/readyz` and in `tillstream_auth_enabled`.
    pub enabled: bool,
    /// Devices may send a signed token in `Hello`.
    pub tokens: bool,
    /// Devices may present a client certificate of the device CA.
    pub certificates: CertAuth,
    /// How often the revocation list is looked at; a revoked credential's
    /// live connections close within this time. Default 1 s.
    pub revocation_poll: Duration,
    /// `/metrics` without a token (Prometheus scrapers). Default true.
    pub metrics_open: bool,
    /// Where audit lines go; `None`: `DATA_DIR/audit.jsonl`.
    pub audit: Option<AuditTarget>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tokens: true,
            certificates: CertAuth::IfCa,
            revocation_poll: Duration::from_secs(1),
            metrics_open: true,
            audit: None,
        }
    }
}

impl AuthConfig {
    /// Authentication off (`serve --auth none`).
    pub fn none() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// A refused credential: the code for the device and the reason.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) code: ErrorCode,
    pub(crate) reason: String,
    pub(crate) credential: Option<String>,
}

fn refused(reason: impl Into<String>) -> Refused {
    Refused {
        code: ErrorCode::AuthFailed,
        reason: reason.into(),
        credential: None,
    }
}

struct Live {
    key: u64,
    conn: quinn::Connection,
    device: u64,
    expires_at_s: u64,
    /// The token key that verified the credential (`None`: a certificate).
    key_id: Option<String>,
}

/// The token keys a server verifies with, by their ids (`kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeys {
    /// The key in `DATA_DIR/auth/signing.key`.
    pub signing: String,
    /// The keys in `DATA_DIR/auth/previous-keys/`, whose tokens also verify.
    pub accepted: Vec<String>,
}

impl TokenKeys {
    fn of(v: &Verifier) -> Self {
        Self {
            signing: v.signing().kid().to_owned(),
            accepted: v.accepted().iter().map(|k| k.kid().to_owned()).collect(),
        }
    }
}

/// The server's authentication state.
pub(crate) struct Auth {
    /// The token keys; `None` when authentication is off. Replaced whole
    /// on SIGHUP; a check clones the `Arc` and verifies outside the lock.
    keys: Option<RwLock<Arc<Verifier>>>,
    tokens: bool,
    ca_pem: Option<Vec<u8>>,
    data_dir: PathBuf,
    revoked: RwLock<HashSet<String>>,
    /// (length, modified) of the list when last read (`None`: no list),
    /// once it was read at all.
    list_seen: Mutex<Option<Option<(u64, SystemTime)>>>,
    live: Mutex<HashMap<String, Vec<Live>>>,
    next_key: AtomicU64,
    pub(crate) audit: Audit,
    pub(crate) metrics_open: bool,
    pub(crate) poll: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .field("tokens", &self.tokens)
            .field("certificates", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn auth_err(e: tillstream_auth::AuthError) -> EngineError {
    EngineError::Auth(e.to_string())
}

impl Auth {
    /// Loads (or on first start makes) the signing key, the CA if
    /// certificates are on, and the revocation list.
    pub(crate) fn start(cfg: &AuthConfig, data_dir: &Path) -> Result<Self, EngineError> {
        let audit = Audit::open(
            cfg.audit
                .as_ref()
                .unwrap_or(&AuditTarget::File(data_dir.join("audit.jsonl"))),
        )?;
        let mut auth = Self {
            keys: None,
            tokens: false,
            ca_pem: None,
            data_dir: data_dir.to_owned(),
            revoked: RwLock::new(HashSet::new()),
            list_seen: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            audit,
            metrics_open: true,
            poll: cfg.revocation_poll.max(Duration::from_millis(10)),
        };
        m::auth_enabled(cfg.enabled);
        if !cfg.enabled {
            tracing::warn!(
                "authentication is OFF (--auth none): any peer may write as any device for any store, and the HTTP API is open"
            );
            return Ok(auth);
        }
        let (keys, made) = Verifier::load_or_create(data_dir).map_err(auth_err)?;
        if made {
            tracing::info!(key = %data_dir.join(SIGNING_KEY).display(), "created the token signing key; `tillstream token issue` signs with it");
        }
        let in_force = TokenKeys::of(&keys);
        tracing::info!(
            signing = %in_force.signing,
            accepted = ?in_force.accepted,
            "token keys"
        );
        let (ca_cert, _) = ca::paths(data_dir);
        let use_ca = match cfg.certificates {
            CertAuth::Off => false,
            CertAuth::IfCa => ca_cert.exists(),
            CertAuth::On => true,
        };
        if use_ca {
            let pem = std::fs::read(&ca_cert).map_err(|source| EngineError::Io {
                what: "reading the device CA (make one with `tillstream ca init`)",
                path: ca_cert.clone(),
                source,
            })?;
            auth.ca_pem = Some(pem);
        }
        auth.keys = Some(RwLock::new(Arc::new(keys)));
        auth.tokens = cfg.tokens;
        auth.metrics_open = cfg.metrics_open;
        auth.reload_revocations()?;
        tracing::info!(
            tokens = auth.tokens,
            certificates = auth.ca_pem.is_some(),
            "device authentication on"
        );
        Ok(auth)
    }

    /// Whether credentials are checked at all.
    pub(crate) fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The token keys in force; `None` when authentication is off.
    fn verifier(&self) -> Option<Arc<Verifier>> {
        self.keys.as_ref().map(|k| k.read().clone())
    }

    /// The token keys in force, by id; `None` when authentication is off.
    pub(crate) fn token_keys(&self) -> Option<TokenKeys> {
        self.verifier().map(|v| TokenKeys::of(&v))
    }

    /// Reads the signing key and the accepted keys again (SIGHUP) and puts
    /// them in force, then closes the connections whose token was verified
    /// by a key no longer accepted. A file that does not load changes
    /// nothing: the keys in force stay, and the error names the file.
    pub(crate) fn reload_keys(&self) -> Result<Option<TokenKeys>, EngineError> {
        let Some(slot) = &self.keys else {
            return Ok(None);
        };
        let fresh = Verifier::load(&self.data_dir).map_err(auth_err)?;
        let now = TokenKeys::of(&fresh);
        let before = std::mem::replace(&mut *slot.write(), Arc::new(fresh));
        let before = TokenKeys::of(&before);
        if before != now {
            let detail = serde_json::json!({
                "signing": now.signing,
                "accepted": now.accepted,
                "signing_before": before.signing,
                "accepted_before": before.accepted,
            });
            self.audit
                .log(Record::new("token_keys", "token keys reloaded").detail(detail));
        }
        self.sweep()?;
        Ok(Some(now))
    }

    /// The device CA's certificate, when client certificates are accepted.
    pub(crate) fn client_ca(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// Who the device on `conn` is, from its client certificate or the
    /// token in its `Hello`; `None` when authentication is off.
    pub(crate) fn device(
        &self,
        conn: &quinn::Connection,
        device: u64,
        token: &[u8],
    ) -> Result<Option<Claims>, Refused> {
        let Some(keys) = self.verifier() else {
            return Ok(None);
        };
        let cert = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().cloned());
        let claims = match (cert, token.is_empty()) {
            (Some(der), _) => ca::claims_from_cert(&der).map_err(|e| refused(e.to_string()))?,
            (None, false) if self.tokens => {
                let token = std::str::from_utf8(token)
                    .map_err(|_| refused("the token is not text (a JWT)"))?;
                let claims = keys
                    .verify(token, now_s())
                    .map_err(|e| refused(e.to_string()))?;
                count_key(&keys, &claims);
                claims
            }
            (None, false) => {
                return Err(refused(
                    "this server does not accept tokens; present a client certificate",
                ));
            }
            (None, true) => {
                return Err(refused(
                    "no credential: send a device token in Hello or present a client certificate",
                ));
            }
        };
        let with_id = |reason: String| Refused {
            code: ErrorCode::AuthFailed,
            reason,
            credential: Some(claims.id.clone()),
        };
        if !claims.role.is_device() {
            return Err(with_id(format!(
                "an {} credential is for the HTTP API, not a device",
                claims.role
            )));
        }
        if claims.device != Some(device) {
            return Err(with_id(format!(
                "Hello names device {device} but the credential is for device {}",
                claims.device.unwrap_or_default()
            )));
        }
        if self.revoked.read().contains(&claims.id) {
            return Err(with_id(format!("the credential {} was revoked", claims.id)));
        }
        // Tokens were checked for expiry above; a certificate was checked by
        // the TLS handshake, unless the session was resumed: check it here.
        if claims.expires_at_s <= now_s() {
            return Err(with_id("the credential expired".into()));
        }
        Ok(Some(claims))
    }

    /// The role and credential id of an HTTP caller from its
    /// `Authorization` header; `None` when authentication is off
    /// (everything is allowed).
    pub(crate) fn api(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<(Role, String)>, String> {
        let Some(keys) = self.verifier() else {
            return Ok(None);
        };
        // The scheme is case-insensitive (RFC 7235).
        let token = authorization
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t)
            .ok_or("a bearer token is required (tillstream token issue --role analyst|admin)")?;
        let claims = keys
            .verify(token.trim(), now_s())
            .map_err(|e| e.to_string())?;
        count_key(&keys, &claims);
        if self.revoked.read().contains(&claims.id) {
            return Err(format!("the credential {} was revoked", claims.id));
        }
        if claims.role.is_device() {
            return Err(format!(
                "a {} token does not open the HTTP API",
                claims.role
            ));
        }
        Ok(Some((claims.role, claims.id)))
    }

    /// Keeps `conn` under its credential until the guard drops, so that
    /// revoking the credential (or its expiry) closes it.
    pub(crate) fn hold(self: &Arc<Self>, claims: &Claims, conn: &quinn::Connection) -> LiveGuard {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .entry(claims.id.clone())
            .or_default()
            .push(Live {
                key,
                conn: conn.clone(),
                device: claims.device.unwrap_or_default(),
                expires_at_s: claims.expires_at_s,
                key_id: claims.key_id.clone(),
            });
        LiveGuard {
            auth: self.clone(),
            id: claims.id.clone(),
            key,
        }
    }

    /// Reads the revocation list if it changed since the last look, then
    /// closes the live connections of revoked or expired credentials, and
    /// of tokens whose key is no longer accepted. Returns how many it
    /// closed.
    pub(crate) fn sweep(&self) -> Result<usize, EngineError> {
        let Some(keys) = self.verifier() else {
            return Ok(0);
        };
        // A list that cannot be read now is reported, and the connections
        // are still checked against the last one read (and for expiry).
        let reloaded = self.reload_revocations();
        let now = now_s();
        let revoked = self.revoked.read();
        let mut closed = 0;
        let mut live = self.live.lock();
        for (id, conns) in live.iter_mut() {
            let is_revoked = revoked.contains(id);
            conns.retain(|l| {
                let why = if is_revoked {
                    "credential revoked"
                } else if l.expires_at_s <= now {
                    "credential expired"
                } else if l.key_id.as_deref().is_some_and(|k| !keys.accepts(k)) {
                    "token key retired"
                } else {
                    return true;
                };
                l.conn.close(
                    quinn::VarInt::from_u32(u32::from(ErrorCode::AuthFailed.as_u16())),
                    why.as_bytes(),
                );
                self.audit.log(
                    Record::new("connection_closed", why)
                        .peer(l.conn.remote_address())
                        .device(l.device)
                        .credential(id),
                );
                m::auth_closed(why);
                closed += 1;
                false
            });
        }
        live.retain(|_, v| !v.is_empty());
        reloaded.map(|()| closed)
    }

    /// Adds a credential to the revocation list and closes its live
    /// connections now. Returns (newly added, connections closed).
    pub(crate) fn revoke(
        &self,
        id: &str,
        kind: tillstream_auth::Method,
        reason: &str,
    ) -> Result<(bool, usize), EngineError> {
        let added = revocation::revoke(&self.data_dir, id, kind, reason).map_err(auth_err)?;
        Ok((added, self.sweep()?))
    }

    fn reload_revocations(&self) -> Result<(), EngineError> {
        let path = revocation::path(&self.data_dir);
        let seen = std::fs::metadata(&path)
            .ok()
            .map(|md| (md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        let mut last = self.list_seen.lock();
        if *last == Some(seen) {
            return Ok(());
        }
        let ids = revocation::load(&self.data_dir).map_err(auth_err)?;
        let added: Vec<String> = {
            let old = self.revoked.read();
            ids.difference(&old).cloned().collect()
        };
        // Only what is new is a revocation event; the list's first read
        // at start is the state, not news.
        if last.is_some() {
            for id in &added {
                self.audit
                    .log(Record::new("revoked", "on the revocation list").credential(id));
            }
        }
        *self.revoked.write() = ids;
        *last = Some(seen);
        Ok(())
    }
}

/// Counts which key verified a token: tokens of an accepted previous key
/// still in use say it cannot be retired yet.
fn count_key(keys: &Verifier, claims: &Claims) {
    m::token_key_used(claims.key_id.as_deref() == Some(keys.signing().kid()));
}

/// Unregisters a live connection when its session ends.
pub(crate) struct LiveGuard {
    auth: Arc<Auth>,
    id: String,
    key: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.auth.live.lock();
        if let Some(v) = live.get_mut(&self.id) {
            v.retain(|l| l.key != self.key);
            if v.is_empty() {
                live.remove(&self.id);
            }
        }
    }
}

/// What a device with these claims may send (everything without claims).
pub(crate) fn scope(claims: Option<&Claims>) -> Scope {
    match claims {
        None => Scope::default(),
        Some(c) => Scope {
            store: c.store,
            kinds: match c.role {
                Role::Terminal => Kinds::Sales,
                Role::ShelfSensor => Kinds::Stock,
                Role::Admin | Role::Analyst => Kinds::All,
            },
        },
    }
}

/// Looks at the revocation list every `poll` until `stop`.
pub(crate) async fn run_sweeper(auth: Arc<Auth>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !auth.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(auth.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let a = auth.clone();
        match tokio::task::spawn_blocking(move || a.sweep()).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(
                closed = n,
                "closed connections of revoked or expired credentials"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the revocation list"),
            Err(e) => tracing::warn!(error = %e, "revocation sweep failed"),
        }
    }
}
