//! A backup as a disaster recovery needs it: the store's consistent copy
//! (`Store::backup_to`) and, in its `credentials/` directory, what makes
//! a restored server the same server to its devices: the key that signs
//! their tokens, the TLS pair they trust, the device CA, the revocation
//! list. Without them a restore on a new machine makes a new signing key
//! and certificate, and every credential in the field stops working.
//!
//! `tillstream backup` of a stopped server and `POST /v1/backup` of a
//! running one both call [`write_backup`], so the two copies are alike.
//! Secret files are mode 0600 in a 0700 directory, in the backup and
//! once restored; `manifest.json`, written last, lists what was copied
//! and where from, so a cut-short copy is refused at restore instead of
//! restored without its key. [`plan_restore`] checks everything before
//! the restore writes anything: a credential already in the data
//! directory that differs is never replaced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tillstream_auth::{ca, revocation, token};
use tillstream_embedded::CREDENTIALS_DIR;
use tillstream_storage::{BackupInfo, Store, StoreError};

use crate::tls::{DEV_CERT, DEV_KEY};

/// The list of copied credentials in `credentials/`.
const MANIFEST: &str = "manifest.json";

/// One kind of credential: its name in reports, its place below a data
/// directory (where `serve` looks for it, and where the backup keeps its
/// copy below `credentials/`), whether it is secret.
struct Kind {
    name: &'static str,
    place: &'static str,
    secret: bool,
}

const KINDS: [Kind; 6] = [
    Kind {
        name: "signing_key",
        place: token::SIGNING_KEY,
        secret: true,
    },
    Kind {
        name: "tls_cert",
        place: DEV_CERT,
        secret: false,
    },
    Kind {
        name: "tls_key",
        place: DEV_KEY,
        secret: true,
    },
    Kind {
        name: "device_ca_cert",
        place: ca::CA_CERT,
        secret: false,
    },
    Kind {
        name: "device_ca_key",
        place: ca::CA_KEY,
        secret: true,
    },
    Kind {
        name: "revocation_list",
        place: revocation::REVOKED,
        secret: false,
    },
];

/// What a backup or a restore of the credentials could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The store's copy failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data directory holds a different credential where the backup's
    /// would go.
    #[error(
        "{path} already exists and differs from the backup's {name}: a server started on this data directory made its own, or it is another server's; move it away (tokens or certificates it signed stop working) or restore into a new data directory"
    )]
    Conflict {
        /// The credential.
        name: String,
        /// The file in the way.
        path: PathBuf,
    },
    /// The backup's `credentials/` is incomplete or not one this version
    /// reads.
    #[error("the backup's credentials ({path}) cannot be restored: {why}")]
    Unreadable {
        /// The `credentials/` directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

/// Where a server's credentials are: its data directory, and the TLS
/// pair when `serve --tls-cert/--tls-key` named one.
#[derive(Debug, Clone)]
pub struct CredentialSources {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Certificate and key given by flags (else the data directory's).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl CredentialSources {
    /// Where `kind` is read from, and the flag that named it if not the
    /// data directory's default place.
    fn source(&self, kind: &Kind) -> (PathBuf, Option<&'static str>) {
        match (&self.tls, kind.name) {
            (Some((cert, _)), "tls_cert") => (cert.clone(), Some("--tls-cert")),
            (Some((_, key)), "tls_key") => (key.clone(), Some("--tls-key")),
            _ => (self.data_dir.join(kind.place), None),
        }
    }
}

/// A credential a backup holds (also the manifest's line of it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CredentialFile {
    /// `signing_key`, `tls_cert`, `tls_key`, `device_ca_cert`,
    /// `device_ca_key` or `revocation_list`.
    pub name: String,
    /// Its copy in the backup.
    pub file: PathBuf,
    /// Where it was copied from.
    pub from: PathBuf,
    /// The `serve` flag that named `from`, when it was not the data
    /// directory's own place (`--tls-cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// Whether it is a private key (the copy is mode 0600 either way).
    pub secret: bool,
}

/// A credential the server does not have (no device CA, say).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AbsentCredential {
    /// Its name.
    pub name: &'static str,
    /// Where it was looked for.
    pub looked_at: PathBuf,
}

/// What a backup did with the credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialsBackup {
    /// Whether they were copied (false with `--no-credentials`).
    pub included: bool,
    /// The backup's `credentials/` directory, when included.
    pub dir: Option<PathBuf>,
    /// What was copied.
    pub files: Vec<CredentialFile>,
    /// What the server does not have, so was not copied.
    pub absent: Vec<AbsentCredential>,
    /// What this means for a restore.
    pub note: String,
}

/// What `tillstream backup` and `POST /v1/backup` print: the store's
/// copy, and the credentials beside it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    /// The store's copy.
    #[serde(flatten)]
    pub store: BackupInfo,
    /// The credentials.
    pub credentials: CredentialsBackup,
}

/// Copies `store` into `dir` (new or empty) and, unless `credentials` is
/// `None` (`--no-credentials`), the server's credentials into
/// `dir/credentials/`.
pub fn write_backup<S: Store + ?Sized>(
    store: &S,
    dir: &Path,
    credentials: Option<&CredentialSources>,
) -> Result<BackupReport, BackupError> {
    let info = store.backup_to(dir)?;
    let credentials = match credentials {
        Some(sources) => back_up_credentials(sources, &dir.join(CREDENTIALS_DIR))?,
        None => CredentialsBackup {
            included: false,
            dir: None,
            files: Vec::new(),
            absent: Vec::new(),
            note: "left out (--no-credentials): a server restored from this backup makes a new signing key and TLS certificate, so the tokens and certificates devices hold stop working, unless the data directory's auth/ and tls/ files are put back from elsewhere before its first start".into(),
        },
    };
    Ok(BackupReport {
        store: info,
        credentials,
    })
}

fn back_up_credentials(
    sources: &CredentialSources,
    dest: &Path,
) -> Result<CredentialsBackup, BackupError> {
    make_private_dir(dest)?;
    let (mut files, mut absent) = (Vec::new(), Vec::new());
    for kind in &KINDS {
        let (from, flag) = sources.source(kind);
        let mut bytes = match fs::read(&from) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                absent.push(AbsentCredential {
                    name: kind.name,
                    looked_at: std::path::absolute(&from).unwrap_or(from),
                });
                continue;
            }
            Err(e) => return Err(io_err("reading the credential", &from)(e)),
        };
        if kind.name == "revocation_list" {
            // A running server appends to it: a line being written as it
            // was read is left out (its revocation was not reported done
            // yet), so an append to the restored list starts a line.
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
        }
        let file = dest.join(kind.place);
        write_private_new(&file, &bytes)?;
        files.push(CredentialFile {
            name: kind.name.into(),
            file,
            from: std::path::absolute(&from).unwrap_or(from),
            flag: flag.map(String::from),
            secret: kind.secret,
        });
    }
    // Last: a copy cut short has no manifest, and a restore refuses it.
    let manifest = serde_json::to_vec_pretty(&files).map_err(|e| BackupError::Unreadable {
        path: dest.to_path_buf(),
        why: e.to_string(),
    })?;
    write_private_new(&dest.join(MANIFEST), &manifest)?;
    sync_dir(dest)?;
    Ok(CredentialsBackup {
        included: true,
        dir: Some(dest.to_path_buf()),
        files,
        absent,
        note: "a restore puts these where `serve` finds them in the new data directory; the private keys make anyone who holds this backup able to sign device tokens and pose as the server: keep it as private as the data directory".into(),
    })
}

/// A credential a restore put (or found) in the data directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoredCredential {
    /// Its name.
    pub name: String,
    /// Where it is now, in the data directory.
    pub file: PathBuf,
    /// Where the backup had copied it from.
    pub backed_up_from: PathBuf,
    /// Whether it is a private key.
    pub secret: bool,
    /// The same file was there already, and was left as it was.
    pub already_there: bool,
    /// What differs from where it was, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a restore did with the credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialsRestore {
    /// Each credential, where it now is.
    pub restored: Vec<RestoredCredential>,
    /// What this means for the restored server.
    pub note: String,
}

/// The credentials a restore will place, checked against the data
/// directory; nothing is written until [`RestorePlan::apply`].
#[derive(Debug)]
pub struct RestorePlan {
    items: Vec<(RestoredCredential, Vec<u8>)>,
    in_backup: bool,
}

/// Reads the backup's credentials and checks each against what
/// `data_dir` holds: the same file there is left, a different one is a
/// [`BackupError::Conflict`]. A backup without `credentials/` plans none.
pub fn plan_restore(backup: &Path, data_dir: &Path) -> Result<RestorePlan, BackupError> {
    let dir = backup.join(CREDENTIALS_DIR);
    if !dir.exists() {
        return Ok(RestorePlan {
            items: Vec::new(),
            in_backup: false,
        });
    }
    let unreadable = |why: String| BackupError::Unreadable {
        path: dir.clone(),
        why,
    };
    let manifest = match fs::read(dir.join(MANIFEST)) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(unreadable(format!(
                "no {MANIFEST}: the backup was cut short; take another"
            )));
        }
        Err(e) => return Err(io_err("reading", &dir.join(MANIFEST))(e)),
    };
    let listed: Vec<CredentialFile> = serde_json::from_slice(&manifest)
        .map_err(|e| unreadable(format!("{MANIFEST} does not parse: {e}")))?;
    let mut items = Vec::new();
    for entry in listed {
        let kind = KINDS.iter().find(|k| k.name == entry.name).ok_or_else(|| {
            unreadable(format!(
                "it holds a credential {:?} this version does not know: restore with the tillstream that made it",
                entry.name
            ))
        })?;
        // Read from the place the kind has, never from a path the
        // manifest names: the backup decides no file outside it.
        let copy = dir.join(kind.place);
        // Nor through a link: a crafted backup could name any file the
        // restoring user may read, and restore would make it a key.
        let meta = fs::symlink_metadata(&copy)
            .map_err(io_err("reading the backup's credential", &copy))?;
        if !meta.file_type().is_file() {
            return Err(unreadable(format!(
                "{} is not a plain file (a link, say): a backup's credentials are files it wrote",
                copy.display()
            )));
        }
        let bytes = fs::read(&copy).map_err(io_err("reading the backup's credential", &copy))?;
        let file = data_dir.join(kind.place);
        let already_there = match fs::read(&file) {
            Ok(there) if there == bytes => true,
            Ok(_) => {
                return Err(BackupError::Conflict {
                    name: entry.name,
                    path: file,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("reading", &file)(e)),
        };
        let note = entry.flag.as_ref().map(|flag| {
            format!(
                "backed up from `serve {flag} {}`; placed where `serve` looks without {flag}",
                entry.from.display()
            )
        });
        items.push((
            RestoredCredential {
                name: entry.name,
                file,
                backed_up_from: entry.from,
                secret: kind.secret,
                already_there,
                note,
            },
            bytes,
        ));
    }
    Ok(RestorePlan {
        items,
        in_backup: true,
    })
}

impl RestorePlan {
    /// Writes each credential not already there, mode 0600 (directories
    /// it makes 0700); never over a file that appeared since the plan.
    pub fn apply(self) -> Result<CredentialsRestore, BackupError> {
        let missing: Vec<&str> = ["signing_key", "tls_cert", "tls_key"]
            .into_iter()
            .filter(|name| !self.items.iter().any(|(c, _)| c.name == *name))
            .collect();
        let note = if !self.in_backup {
            "the backup holds no credentials (taken with --no-credentials, or by an older tillstream): a server started on this data directory makes a new signing key and TLS certificate, and the tokens and certificates devices hold stop working, unless the old server's auth/ and tls/ files are put in place before its first start".to_string()
        } else if missing.is_empty() {
            "devices' tokens and certificates, and the TLS certificate they trust, are the old server's".to_string()
        } else {
            format!(
                "the backup held no {} (its server ran with --auth none, or `serve --tls-cert` named files the backup was not told of): a server started here makes new ones, which devices do not know, unless the old ones are put in place before its first start",
                missing.join(", ")
            )
        };
        let mut restored = Vec::new();
        for (credential, bytes) in self.items {
            if !credential.already_there {
                place(&credential, &bytes)?;
            }
            restored.push(credential);
        }
        Ok(CredentialsRestore { restored, note })
    }
}

/// Writes `c.file` whole (a temporary file, synced, then linked: a link
/// refuses a name that exists, where a rename would replace it).
fn place(c: &RestoredCredential, bytes: &[u8]) -> Result<(), BackupError> {
    let parent = c.file.parent().unwrap_or(Path::new("."));
    make_private_dir(parent)?;
    let mut tmp_name = c.file.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".restore-{}.tmp", std::process::id()));
    let tmp = c.file.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    write_private_new(&tmp, bytes)?;
    let linked = fs::hard_link(&tmp, &c.file);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::read(&c.file).ok().as_deref() != Some(bytes) {
                return Err(BackupError::Conflict {
                    name: c.name.clone(),
                    path: c.file.clone(),
                });
            }
        }
        Err(e) => return Err(io_err("writing", &c.file)(e)),
    }
    sync_dir(parent)
}

/// Creates `dir` and its missing parents, mode 0700 (owner only).
fn make_private_dir(dir: &Path) -> Result<(), BackupError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err("creating", dir))
}

/// Writes a new file `path` (its parents made private), mode 0600, synced.
fn write_private_new(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    if let Some(parent) = path.parent() {
        make_private_dir(parent)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err("writing", path))?;
    f.write_all(bytes).map_err(io_err("writing", path))?;
    f.sync_all().map_err(io_err("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
