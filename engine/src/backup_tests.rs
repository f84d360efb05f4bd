//! Tests of the credentials' backup and restore, on files alone.

use std::time::Duration;

use tillstream_auth::Role;
use tillstream_auth::token::{SigningKey, TokenRequest};

use super::*;

fn mode(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

/// A data directory with a signing key, a self-signed TLS pair and a
/// revocation list whose last line is being appended.
fn data_dir(root: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let data = root.join("data");
    SigningKey::load_or_create(&data.join(token::SIGNING_KEY))?;
    fs::create_dir_all(data.join("tls"))?;
    fs::write(data.join(DEV_CERT), b"cert")?;
    fs::write(data.join(DEV_KEY), b"key")?;
    fs::write(
        data.join(revocation::REVOKED),
        b"{\"id\":\"ab\"}\n{\"id\":\"c",
    )?;
    Ok(data)
}

#[test]
fn the_credentials_are_copied_private_and_listed_with_what_is_absent()
-> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let data = data_dir(root.path())?;
    let sources = CredentialSources {
        data_dir: data.clone(),
        tls: None,
    };
    let dest = root.path().join("backup/credentials");
    let done = back_up_credentials(&sources, &dest)?;
    let names: Vec<&str> = done.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["signing_key", "tls_cert", "tls_key", "revocation_list"]
    );
    let absent: Vec<&str> = done.absent.iter().map(|a| a.name).collect();
    assert_eq!(absent, ["device_ca_cert", "device_ca_key"]);
    assert_eq!(mode(&dest)?, 0o700);
    for f in &done.files {
        assert_eq!(mode(&f.file)?, 0o600, "{}", f.file.display());
        assert!(f.flag.is_none());
    }
    assert_eq!(mode(&dest.join(MANIFEST))?, 0o600);
    // The line being appended is left out; whole lines are kept.
    assert_eq!(
        fs::read(dest.join(revocation::REVOKED))?,
        b"{\"id\":\"ab\"}\n"
    );
    Ok(())
}

/// A token signed before the backup verifies with the restored key: the
/// restored server is the same to the devices holding one.
#[test]
fn a_restore_places_each_credential_where_serve_reads_it() -> Result<(), Box<dyn std::error::Error>>
{
    let root = tempfile::tempdir()?;
    let data = data_dir(root.path())?;
    let key = SigningKey::load(&data.join(token::SIGNING_KEY))?;
    let (device_token, _) = key.issue(&TokenRequest {
        device: Some(7),
        store: Some(1),
        role: Role::Terminal,
        ttl: Duration::from_secs(3600),
    })?;
    let backup = root.path().join("backup");
    let sources = CredentialSources {
        data_dir: data.clone(),
        tls: None,
    };
    back_up_credentials(&sources, &backup.join(CREDENTIALS_DIR))?;

    let fresh = root.path().join("fresh");
    let done = plan_restore(&backup, &fresh)?.apply()?;
    assert_eq!(done.restored.len(), 4);
    for c in &done.restored {
        assert!(c.file.starts_with(&fresh) && !c.already_there);
        assert_eq!(mode(&c.file)?, 0o600, "{}", c.file.display());
    }
    assert_eq!(mode(&fresh.join("auth"))?, 0o700);
    let restored = SigningKey::load(&fresh.join(token::SIGNING_KEY))?;
    let claims = restored.verify(&device_token, tillstream_auth::now_s())?;
    assert_eq!(claims.device, Some(7));

    // Again: all there, the same, left as they are.
    let again = plan_restore(&backup, &fresh)?.apply()?;
    assert!(again.restored.iter().all(|c| c.already_there));
    Ok(())
}

#[test]
fn a_different_credential_in_the_way_refuses_the_restore_before_any_write()
-> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let data = data_dir(root.path())?;
    let backup = root.path().join("backup");
    let sources = CredentialSources {
        data_dir: data,
        tls: None,
    };
    back_up_credentials(&sources, &backup.join(CREDENTIALS_DIR))?;
    let fresh = root.path().join("fresh");
    fs::create_dir_all(fresh.join("tls"))?;
    fs::write(fresh.join(DEV_KEY), b"another server's key")?;
    let err = plan_restore(&backup, &fresh).err();
    assert!(
        matches!(&err, Some(BackupError::Conflict { name, .. }) if name == "tls_key"),
        "{err:?}"
    );
    assert!(!fresh.join("auth").exists());
    assert_eq!(fs::read(fresh.join(DEV_KEY))?, b"another server's key");
    Ok(())
}

#[test]
fn tls_files_named_by_flags_are_said_to_come_from_there() -> Result<(), Box<dyn std::error::Error>>
{
    let root = tempfile::tempdir()?;
    let data = data_dir(root.path())?;
    let etc = root.path().join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("server.pem"), b"real cert")?;
    fs::write(etc.join("server.key"), b"real key")?;
    let sources = CredentialSources {
        data_dir: data,
        tls: Some((etc.join("server.pem"), etc.join("server.key"))),
    };
    let backup = root.path().join("backup");
    let done = back_up_credentials(&sources, &backup.join(CREDENTIALS_DIR))?;
    let cert = done.files.iter().find(|f| f.name == "tls_cert");
    assert_eq!(cert.map(|c| c.from.clone()), Some(etc.join("server.pem")));
    assert_eq!(cert.and_then(|c| c.flag.as_deref()), Some("--tls-cert"));

    let fresh = root.path().join("fresh");
    let restored = plan_restore(&backup, &fresh)?.apply()?;
    assert_eq!(fs::read(fresh.join(DEV_KEY))?, b"real key");
    let key = restored.restored.iter().find(|c| c.name == "tls_key");
    assert!(
        key.and_then(|k| k.note.as_deref())
            .is_some_and(|n| n.contains("--tls-key")),
        "{key:?}"
    );
    Ok(())
}

#[test]
fn a_backup_without_its_manifest_or_with_an_unknown_credential_is_refused()
-> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let backup = root.path().join("backup");
    fs::create_dir_all(backup.join(CREDENTIALS_DIR).join("auth"))?;
    let err = plan_restore(&backup, &root.path().join("fresh")).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("cut short")),
        "{err:?}"
    );
    fs::write(
        backup.join(CREDENTIALS_DIR).join(MANIFEST),
        br#"[{"name":"root_password","file":"x","from":"/etc/shadow","secret":true}]"#,
    )?;
    let err = plan_restore(&backup, &root.path().join("fresh")).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("root_password")),
        "{err:?}"
    );
    // No credentials at all: nothing to place, and the note says so.
    let bare = root.path().join("bare");
    fs::create_dir_all(&bare)?;
    let none = plan_restore(&bare, &root.path().join("fresh"))?.apply()?;
    assert!(none.restored.is_empty());
    assert!(none.note.contains("no credentials"));
    Ok(())
}

/// A crafted backup whose credential is a link to another file (here a
/// secret of the restoring user's) is refused: restore copies files the
/// backup holds, never what a link points at.
#[test]
fn a_credential_that_is_a_link_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let data = data_dir(root.path())?;
    let backup = root.path().join("backup");
    let sources = CredentialSources {
        data_dir: data,
        tls: None,
    };
    back_up_credentials(&sources, &backup.join(CREDENTIALS_DIR))?;
    let elsewhere = root.path().join("someone-elses-secret");
    fs::write(&elsewhere, b"not a key of this server")?;
    let key = backup.join(CREDENTIALS_DIR).join(token::SIGNING_KEY);
    fs::remove_file(&key)?;
    std::os::unix::fs::symlink(&elsewhere, &key)?;
    let fresh = root.path().join("fresh");
    let err = plan_restore(&backup, &fresh).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("not a plain file")),
        "{err:?}"
    );
    assert!(!fresh.join("auth").exists());
    Ok(())
}
