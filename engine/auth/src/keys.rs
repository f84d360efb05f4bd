//! Several token keys at once: rotating the signing key with no downtime.
//!
//! A server verifies tokens with its signing key (`auth/signing.key`) and
//! with every *accepted* key, the PEM files `auth/previous-keys/*.key`.
//! Tokens name their key (`kid`, [`key_id`]), so a token is checked
//! against the key it names only; a token without `kid` (issued before
//! tokens named their key) against each key in turn. Nodes that share a
//! deployment move to a new key in three rolls (docs/operating/cluster.md,
//! "Rotating the token signing key"): the new key accepted everywhere;
//! the new key signing, the old one accepted, tokens issued again; the old
//! key removed. [`rotate`] and [`retire`] are the file moves of a data
//! directory (`tillstream token rotate-key` and `retire-key`).

use std::path::{Path, PathBuf};

use crate::files::{io, write_atomic};
use crate::token::{SIGNING_KEY, SigningKey};
use crate::{AuthError, Claims};

pub use crate::token::key_id;

/// The accepted keys below the data directory: every `*.key` file in it.
pub const PREVIOUS_KEYS: &str = "auth/previous-keys";

/// The directory of accepted keys below `data_dir`.
pub fn previous_keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(PREVIOUS_KEYS)
}

/// The token keys a server verifies with: its signing key and the keys it
/// still (or already) accepts.
#[derive(Debug)]
pub struct Verifier {
    /// The signing key first, then the accepted keys in the order given,
    /// each key once.
    keys: Vec<SigningKey>,
}

impl Verifier {
    /// `signing` and `accepted`; a key given twice (say, the signing key
    /// also left among the accepted ones) counts once.
    pub fn new(signing: SigningKey, accepted: impl IntoIterator<Item = SigningKey>) -> Self {
        let mut keys = vec![signing];
        for key in accepted {
            if !keys.iter().any(|k| k.same_key(&key)) {
                keys.push(key);
            }
        }
        Self { keys }
    }

    /// The signing key and the accepted keys of `data_dir`. A signing key
    /// that is missing, or a file among the accepted keys that holds no
    /// key, is an error naming the file.
    pub fn load(data_dir: &Path) -> Result<Self, AuthError> {
        let signing = SigningKey::load(&data_dir.join(SIGNING_KEY))?;
        Self::with_accepted_of(signing, data_dir)
    }

    /// As [`Verifier::load`], but a missing signing key is made (mode
    /// 0600): a server's first start. The flag says whether it was made.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), AuthError> {
        let (signing, made) = SigningKey::load_or_create(&data_dir.join(SIGNING_KEY))?;
        Ok((Self::with_accepted_of(signing, data_dir)?, made))
    }

    fn with_accepted_of(signing: SigningKey, data_dir: &Path) -> Result<Self, AuthError> {
        let accepted = load_accepted(data_dir)?.into_iter().map(|(_, k)| k);
        Ok(Self::new(signing, accepted))
    }

    /// The key that signs (`auth/signing.key`).
    pub fn signing(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// The other keys whose tokens verify.
    pub fn accepted(&self) -> &[SigningKey] {
        &self.keys[1..]
    }

    /// Whether tokens of the key `kid` verify (signed by it, that is).
    pub fn accepts(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == kid)
    }

    /// Checks a token's signature, issuer and expiry (against `now_s`)
    /// and returns its claims; `key_id` says which key verified it.
    /// A token that names a key not accepted here is refused as
    /// [`AuthError::UnknownKey`], one whose signature does not verify as
    /// [`AuthError::BadSignature`].
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("not a tillstream token: {e}")))?;
        match header.kid {
            // Only the named key may verify it: a token of a retired key
            // stops verifying at once, and a kid copied from another token
            // gains nothing, since the named key still checks the
            // signature. Ids are 64 bits of a hash: should two keys share
            // one, each is tried.
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid() == kid).peekable();
                if named.peek().is_none() {
                    return Err(AuthError::UnknownKey);
                }
                first_that_verifies(named, token, now_s)
            }
            // Issued before tokens named their key: each key in turn. A
            // forged token costs an Ed25519 check per key, and there are
            // a few keys at most.
            None => first_that_verifies(self.keys.iter(), token, now_s),
        }
    }
}

/// The answer of the first key whose signature check passes (the claims,
/// or why they are refused); `BadSignature` when none does.
fn first_that_verifies<'a>(
    keys: impl Iterator<Item = &'a SigningKey>,
    token: &str,
    now_s: u64,
) -> Result<Claims, AuthError> {
    for key in keys {
        match key.verify(token, now_s) {
            Err(AuthError::BadSignature) => continue,
            other => return other,
        }
    }
    Err(AuthError::BadSignature)
}

/// Every `*.key` file in `auth/previous-keys/` with its key, by file name;
/// none when there is no such directory. Other files (an editor's backup,
/// a temporary file of [`write_atomic`]) are not keys and are left alone.
/// Symbolic links are followed: a Kubernetes volume is made of them.
pub fn load_accepted(data_dir: &Path) -> Result<Vec<(PathBuf, SigningKey)>, AuthError> {
    let dir = previous_keys_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading the accepted token keys in", &dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(io("reading the accepted token keys in", &dir))?
            .path();
        let is_key = path.extension().is_some_and(|x| x == "key")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_key && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| SigningKey::load(&p).map(|k| (p, k)))
        .collect()
}

/// What [`rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The id of the key that signed until now, accepted from now on.
    pub old: String,
    /// The id of the key that signs from now on.
    pub new: String,
    /// Where the old key is kept: `auth/previous-keys/<old>.key`.
    pub kept: PathBuf,
    /// Copies of the new key that were among the accepted keys (it was
    /// accepted before it signed), removed: it is the signing key now.
    pub removed: Vec<PathBuf>,
}

/// Makes `new` (a fresh key when `None`) the signing key of `data_dir`,
/// and keeps the key that signed until now as an accepted key,
/// `auth/previous-keys/<kid>.key`. Both files are written whole, mode
/// 0600. A server reads them at its next start or SIGHUP.
pub fn rotate(data_dir: &Path, new: Option<SigningKey>) -> Result<Rotated, AuthError> {
    let signing_path = data_dir.join(SIGNING_KEY);
    if !signing_path.exists() {
        return Err(AuthError::Keys(format!(
            "there is no signing key at {} to rotate (a server makes one at its first start)",
            signing_path.display()
        )));
    }
    let old = SigningKey::load(&signing_path)?;
    let new = match new {
        Some(k) => k,
        None => SigningKey::generate()?,
    };
    if new.same_key(&old) {
        return Err(AuthError::Keys(format!(
            "the new key is the signing key already ({})",
            old.kid()
        )));
    }
    // Every accepted key is read before anything is written: a file there
    // that holds no key would stop the server at its next start, so it
    // stops the rotation now.
    let accepted = load_accepted(data_dir)?;
    let kept = previous_keys_dir(data_dir).join(format!("{}.key", old.kid()));
    // The old key is kept before the new one replaces it: a crash in
    // between leaves the old key in both places (it counts once) and the
    // rotation can be run again; never a signing key that was not kept.
    write_atomic(&kept, old.pem().as_bytes(), true)?;
    write_atomic(&signing_path, new.pem().as_bytes(), true)?;
    let mut removed = Vec::new();
    for (path, key) in accepted {
        if key.same_key(&new) && path != kept {
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
            removed.push(path);
        }
    }
    Ok(Rotated {
        old: old.kid().to_owned(),
        new: new.kid().to_owned(),
        kept,
        removed,
    })
}

/// Stops accepting the key `kid`: removes its files from
/// `auth/previous-keys/`; returns them. The signing key cannot be retired
/// (rotate to another one first), and a `kid` that names no accepted key
/// is an error listing those there are.
pub fn retire(data_dir: &Path, kid: &str) -> Result<Vec<PathBuf>, AuthError> {
    let kid = kid.trim().to_ascii_lowercase();
    let signing_path = data_dir.join(SIGNING_KEY);
    if signing_path.exists() && SigningKey::load(&signing_path)?.kid() == kid {
        return Err(AuthError::Keys(format!(
            "{kid} is the signing key: make another key sign first (`tillstream token rotate-key`)"
        )));
    }
    let accepted = load_accepted(data_dir)?;
    let named: Vec<PathBuf> = accepted
        .iter()
        .filter(|(_, k)| k.kid() == kid)
        .map(|(p, _)| p.clone())
        .collect();
    if named.is_empty() {
        let there: Vec<&str> = accepted.iter().map(|(_, k)| k.kid()).collect();
        return Err(AuthError::Keys(format!(
            "no accepted key {kid} in {} (accepted: {})",
            previous_keys_dir(data_dir).display(),
            if there.is_empty() {
                "none".to_owned()
            } else {
                there.join(", ")
            }
        )));
    }
    for path in &named {
        std::fs::remove_file(path).map_err(io("removing", path))?;
    }
    Ok(named)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
