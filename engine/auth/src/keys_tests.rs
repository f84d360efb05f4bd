use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;
use crate::token::TokenRequest;
use crate::{Role, now_s};

fn terminal() -> TokenRequest {
    TokenRequest {
        device: Some(7),
        store: Some(3),
        role: Role::Terminal,
        ttl: Duration::from_secs(600),
    }
}

fn token_of(key: &SigningKey) -> Result<String, AuthError> {
    Ok(key.issue(&terminal())?.0)
}

fn err(e: impl std::fmt::Display) -> AuthError {
    AuthError::Crypto(e.to_string())
}

/// A key, and its private half for signing tokens by hand (with any
/// header).
fn key_pair() -> Result<(SigningKey, EncodingKey), AuthError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err)?;
    let key = SigningKey::from_pem(&pair.serialize_pem())?;
    Ok((key, EncodingKey::from_ed_der(&pair.serialize_der())))
}

/// A device token signed with `with`, its header naming `kid` (or no key,
/// as tokens were issued before they named one).
fn signed(with: &EncodingKey, kid: Option<&str>) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    let now = now_s();
    let claims = serde_json::json!({
        "iss": "tillstream", "sub": "7", "role": "terminal", "store": 3,
        "iat": now, "exp": now + 600, "jti": "00112233445566778899aabbccddeeff",
    });
    jsonwebtoken::encode(&header, &claims, with).map_err(err)
}

fn tempdir() -> Result<tempfile::TempDir, AuthError> {
    tempfile::tempdir().map_err(err)
}

fn same(a: &SigningKey) -> Result<SigningKey, AuthError> {
    SigningKey::from_pem(a.pem())
}

#[test]
fn the_old_keys_tokens_verify_while_it_is_accepted_and_not_after() -> Result<(), AuthError> {
    let old = SigningKey::generate()?;
    let new = SigningKey::generate()?;
    let (old_token, new_token) = (token_of(&old)?, token_of(&new)?);

    // Before: the old key signs, nothing else is accepted.
    let before = Verifier::new(same(&old)?, []);
    assert!(before.verify(&old_token, now_s()).is_ok());
    assert!(matches!(
        before.verify(&new_token, now_s()),
        Err(AuthError::UnknownKey)
    ));

    // Phase 1: the new key is accepted before it signs.
    let staged = Verifier::new(same(&old)?, [same(&new)?]);
    for t in [&old_token, &new_token] {
        staged.verify(t, now_s())?;
    }

    // Phase 2: the new key signs, the old one is still accepted.
    let swapped = Verifier::new(same(&new)?, [same(&old)?]);
    let claims = swapped.verify(&old_token, now_s())?;
    assert_eq!(claims.key_id.as_deref(), Some(old.kid()));
    let claims = swapped.verify(&new_token, now_s())?;
    assert_eq!(claims.key_id.as_deref(), Some(new.kid()));
    assert!(swapped.accepts(old.kid()) && swapped.accepts(new.kid()));

    // Phase 3: the old key is removed; its tokens stop verifying.
    let after = Verifier::new(same(&new)?, []);
    assert!(after.verify(&new_token, now_s()).is_ok());
    let refused = after.verify(&old_token, now_s());
    assert!(matches!(refused, Err(AuthError::UnknownKey)), "{refused:?}");
    assert!(!after.accepts(old.kid()));
    Ok(())
}

#[test]
fn a_forged_kid_does_not_bypass_the_signature() -> Result<(), AuthError> {
    let ours = SigningKey::generate()?;
    let accepted = SigningKey::generate()?;
    let verifier = Verifier::new(same(&ours)?, [same(&accepted)?]);
    let (_, theirs) = key_pair()?;
    // Signed with another key, naming each of ours in turn.
    for kid in [ours.kid(), accepted.kid()] {
        let forged = signed(&theirs, Some(kid))?;
        let refused = verifier.verify(&forged, now_s());
        assert!(
            matches!(refused, Err(AuthError::BadSignature)),
            "{refused:?}"
        );
    }
    // Naming no key, it is tried with each and verifies with none.
    let forged = signed(&theirs, None)?;
    let refused = verifier.verify(&forged, now_s());
    assert!(
        matches!(refused, Err(AuthError::BadSignature)),
        "{refused:?}"
    );
    // A token of ours relabelled with the other key's id breaks its own
    // signature (the header is signed) and is checked with the named key.
    let real = token_of(&ours)?;
    let relabelled = {
        let (_, rest) = real.split_once('.').ok_or_else(|| err("no header"))?;
        let header = serde_json::json!({ "typ": "JWT", "alg": "EdDSA", "kid": accepted.kid() });
        format!("{}.{rest}", base64url(header.to_string().as_bytes()))
    };
    let named = jsonwebtoken::decode_header(&relabelled).map_err(err)?.kid;
    assert_eq!(named.as_deref(), Some(accepted.kid()));
    let refused = verifier.verify(&relabelled, now_s());
    assert!(
        matches!(refused, Err(AuthError::BadSignature)),
        "{refused:?}"
    );
    Ok(())
}

/// Unpadded base64url, as JWT segments are.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn tokens_without_a_kid_are_tried_with_every_key() -> Result<(), AuthError> {
    // Issued before tokens named their key.
    let (old, old_private) = key_pair()?;
    let legacy = signed(&old_private, None)?;
    let new = SigningKey::generate()?;
    let claims = Verifier::new(same(&new)?, [same(&old)?]).verify(&legacy, now_s())?;
    assert_eq!(claims.key_id.as_deref(), Some(old.kid()));
    assert_eq!(claims.device, Some(7));
    assert!(
        Verifier::new(same(&old)?, [])
            .verify(&legacy, now_s())
            .is_ok()
    );
    let refused = Verifier::new(same(&new)?, []).verify(&legacy, now_s());
    assert!(
        matches!(refused, Err(AuthError::BadSignature)),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn an_accepted_keys_expired_token_is_refused_as_expired() -> Result<(), AuthError> {
    let old = SigningKey::generate()?;
    let (token, claims) = old.issue(&terminal())?;
    let verifier = Verifier::new(SigningKey::generate()?, [old]);
    let refused = verifier.verify(&token, claims.expires_at_s);
    assert!(matches!(refused, Err(AuthError::Expired)), "{refused:?}");
    assert!(verifier.verify("not.a.token", now_s()).is_err());
    Ok(())
}

#[test]
fn refusals_name_no_key_material() -> Result<(), AuthError> {
    let key = SigningKey::generate()?;
    let stranger = SigningKey::generate()?;
    let verifier = Verifier::new(same(&key)?, []);
    let refused = verifier
        .verify(&token_of(&stranger)?, now_s())
        .err()
        .ok_or_else(|| err("a stranger's token verified"))?;
    let said = refused.to_string();
    assert!(said.contains("signature"), "{said}");
    for secret in [key.pem(), stranger.pem()] {
        for line in secret.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!said.contains(line), "{said}");
        }
    }
    Ok(())
}

#[test]
fn a_key_given_twice_counts_once() -> Result<(), AuthError> {
    let key = SigningKey::generate()?;
    let other = SigningKey::generate()?;
    let v = Verifier::new(same(&key)?, [same(&key)?, same(&other)?, same(&other)?]);
    assert_eq!(v.signing().kid(), key.kid());
    let accepted: Vec<&str> = v.accepted().iter().map(SigningKey::kid).collect();
    assert_eq!(accepted, [other.kid()]);
    Ok(())
}

#[test]
fn accepted_keys_are_the_key_files_of_previous_keys() -> Result<(), AuthError> {
    let dir = tempdir()?;
    let data = dir.path();
    let (v, made) = Verifier::load_or_create(data)?;
    assert!(made && v.accepted().is_empty(), "no directory: no keys");
    let prev = previous_keys_dir(data);
    let (a, b) = (SigningKey::generate()?, SigningKey::generate()?);
    write_atomic(&prev.join("b.key"), b.pem().as_bytes(), true)?;
    write_atomic(&prev.join("a.key"), a.pem().as_bytes(), true)?;
    // Not key files: left alone, whatever they hold.
    std::fs::write(prev.join("notes.txt"), "rotated in May").map_err(err)?;
    std::fs::write(prev.join("a.key.1a2b.tmp"), "half a key").map_err(err)?;
    std::fs::write(prev.join(".hidden.key"), "junk").map_err(err)?;
    let v = Verifier::load(data)?;
    let kids: Vec<&str> = v.accepted().iter().map(SigningKey::kid).collect();
    assert_eq!(kids, [a.kid(), b.kid()], "by file name");
    v.verify(&token_of(&b)?, now_s())?;

    // A key file that holds no key stops the start, naming the file.
    std::fs::write(prev.join("c.key"), "-----BEGIN NOTHING-----\n").map_err(err)?;
    let refused = Verifier::load(data);
    match &refused {
        Err(AuthError::BadKey { path, .. }) => assert_eq!(path, &prev.join("c.key")),
        other => panic!("{other:?}"),
    }
    let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("c.key"), "{said}");
    Ok(())
}

#[test]
fn rotate_keeps_the_old_key_and_retire_removes_it() -> Result<(), AuthError> {
    let dir = tempdir()?;
    let data = dir.path();
    let refused = rotate(data, None);
    assert!(
        matches!(refused, Err(AuthError::Keys(_))),
        "nothing to rotate"
    );
    let (before, _) = Verifier::load_or_create(data)?;
    let old_token = token_of(before.signing())?;

    let r = rotate(data, None)?;
    assert_eq!(r.old, before.signing().kid());
    assert_eq!(
        r.kept,
        previous_keys_dir(data).join(format!("{}.key", r.old))
    );
    let after = Verifier::load(data)?;
    assert_eq!(after.signing().kid(), r.new);
    assert!(after.verify(&old_token, now_s()).is_ok());
    let new_token = token_of(after.signing())?;
    after.verify(&new_token, now_s())?;
    #[cfg(unix)]
    for f in [data.join(SIGNING_KEY), r.kept.clone()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).map_err(err)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }

    // The signing key cannot be retired, nor a key not there.
    assert!(matches!(retire(data, &r.new), Err(AuthError::Keys(_))));
    let unknown = retire(data, "0123456789abcdef");
    let said = unknown.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains(&r.old), "lists the accepted keys: {said}");

    assert_eq!(
        retire(data, &r.old.to_ascii_uppercase())?,
        std::slice::from_ref(&r.kept)
    );
    let retired = Verifier::load(data)?;
    assert!(retired.accepted().is_empty());
    let refused = retired.verify(&old_token, now_s());
    assert!(matches!(refused, Err(AuthError::UnknownKey)), "{refused:?}");
    retired.verify(&new_token, now_s())?;
    Ok(())
}

#[test]
fn rotating_to_a_staged_key_makes_it_sign_once() -> Result<(), AuthError> {
    let dir = tempdir()?;
    let data = dir.path();
    let (before, _) = Verifier::load_or_create(data)?;
    // Phase 1 put the next key among the accepted ones, under any name.
    let next = SigningKey::generate()?;
    let staged = previous_keys_dir(data).join("next.key");
    write_atomic(&staged, next.pem().as_bytes(), true)?;
    assert!(matches!(
        rotate(data, Some(same(before.signing())?)),
        Err(AuthError::Keys(_))
    ));

    let r = rotate(data, Some(same(&next)?))?;
    assert_eq!(r.new, next.kid());
    assert_eq!(r.removed, std::slice::from_ref(&staged));
    assert!(!staged.exists());
    let after = Verifier::load(data)?;
    assert_eq!(after.signing().kid(), next.kid());
    let accepted: Vec<&str> = after.accepted().iter().map(SigningKey::kid).collect();
    assert_eq!(accepted, [before.signing().kid()]);
    Ok(())
}
