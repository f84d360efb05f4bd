//! `tillstream ca ...` and `tillstream token ...`: the device CA, signed
//! tokens, their keys' rotation, revocation; and the `serve` flags of
//! authentication.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tillstream_auth::ca::{self, DeviceCa};
use tillstream_auth::keys::{self, Verifier};
use tillstream_auth::token::{SIGNING_KEY, SigningKey, TokenRequest};
use tillstream_auth::{Method, Role, revocation};
use tillstream_engine::{AuditTarget, AuthConfig, CertAuth};

/// Authentication flags of `serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuthArgs {
    /// Device credentials accepted, comma-separated: `token` (a signed
    /// token in Hello), `certificate` (a client certificate of the device
    /// CA; the server will not start without one), or `none` to turn
    /// authentication off for a local experiment (any peer may then write
    /// as any device for any store, and the HTTP API is open).
    /// Default: tokens, and certificates once `tillstream ca init` made a CA.
    #[arg(long, value_name = "MODES", env = "TILLSTREAM_AUTH")]
    auth: Option<String>,
    /// How often the revocation list is read, in milliseconds: a revoked
    /// credential's live connections close within this time.
    #[arg(long, default_value_t = 1000, env = "TILLSTREAM_REVOCATION_POLL_MS",
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    revocation_poll_ms: u64,
    /// Require an analyst or admin token on /metrics too (open by default,
    /// for Prometheus scrapers on a private network).
    #[arg(long, env = "TILLSTREAM_METRICS_AUTH")]
    metrics_auth: bool,
    /// Where the audit log goes: a file, `stderr`, or `off`
    /// [default: DATA_DIR/audit.jsonl].
    #[arg(long, value_name = "FILE|stderr|off", env = "TILLSTREAM_AUDIT_LOG")]
    audit_log: Option<String>,
}

impl AuthArgs {
    pub(crate) fn config(&self) -> anyhow::Result<AuthConfig> {
        let mut cfg = match self.auth.as_deref() {
            None => AuthConfig::default(),
            Some(modes) => parse_modes(modes)?,
        };
        cfg.revocation_poll = Duration::from_millis(self.revocation_poll_ms);
        cfg.metrics_open = !self.metrics_auth;
        cfg.audit = self.audit_log.as_deref().map(|a| match a {
            "stderr" => AuditTarget::Stderr,
            "off" => AuditTarget::Off,
            path => AuditTarget::File(PathBuf::from(path)),
        });
        Ok(cfg)
    }
}

fn parse_modes(modes: &str) -> anyhow::Result<AuthConfig> {
    let modes: Vec<&str> = modes.split(',').map(str::trim).collect();
    if modes == ["none"] {
        return Ok(AuthConfig::none());
    }
    let mut cfg = AuthConfig {
        tokens: false,
        certificates: CertAuth::Off,
        ..AuthConfig::default()
    };
    for m in modes {
        match m {
            "token" => cfg.tokens = true,
            "certificate" => cfg.certificates = CertAuth::On,
            "none" => bail!("--auth none cannot be combined with other modes"),
            other => bail!("--auth {other:?}: expected token, certificate or none"),
        }
    }
    Ok(cfg)
}

/// The device CA (mutual TLS): make it, issue device certificates, revoke them.
#[derive(Debug, clap::Args)]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Make the device CA in DATA_DIR/auth/ca (once; a running server
    /// accepts its certificates after a restart).
    Init {
        /// Data directory of the server that will trust the CA.
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Issue a device certificate and key, signed by the CA.
    Issue {
        /// Data directory holding the CA (`ca init`).
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        who: DeviceClaims,
        /// How long it is valid: 90d, 12h, 30m or seconds.
        #[arg(long, default_value = "365d", value_parser = parse_ttl)]
        ttl: Duration,
        /// Directory for device-ID.pem and device-ID.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Revoke a device certificate: its live connections close within the
    /// server's revocation poll, and it is refused from then on.
    Revoke {
        /// Data directory of the server (its revocation list is there).
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        /// The certificate's PEM file.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// Or its serial number in hex (as `ca issue` printed it).
        #[arg(long)]
        serial: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Who a device credential is for.
#[derive(Debug, clap::Args)]
struct DeviceClaims {
    /// The device id it will send in Hello.
    #[arg(long)]
    device: u64,
    /// The only store it may send events for.
    #[arg(long)]
    store: u32,
    /// terminal (sales, refunds, health) or shelf-sensor (counts,
    /// movements, health).
    #[arg(long)]
    role: Role,
}

/// Signed tokens (EdDSA JWT): for devices (in Hello) and for the HTTP API.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Print a token signed with the server's key. Devices: --device,
    /// --store and --role terminal|shelf-sensor. HTTP API: --role
    /// analyst (queries) or admin (everything), no device or store.
    Issue {
        /// Data directory of the server whose key signs.
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        /// The signing key [default: DATA_DIR/auth/signing.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// The device id it will send in Hello (device roles only).
        #[arg(long)]
        device: Option<u64>,
        /// The only store it may send events for (device roles only).
        #[arg(long)]
        store: Option<u32>,
        /// terminal or shelf-sensor (a device), analyst (HTTP queries) or
        /// admin (the whole HTTP API).
        #[arg(long)]
        role: Role,
        /// How long it is valid: 30d, 12h, 30m or seconds.
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Revoke a token: its live connections close within the server's
    /// revocation poll, and it is refused from then on.
    Revoke {
        /// Data directory of the server (its revocation list is there).
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        /// The token itself (its id is read from it)...
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        token: Option<String>,
        /// ...or its id (`jti`, as `token issue` printed it).
        #[arg(long)]
        id: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Make a new key sign tokens while the old key's tokens still verify.
    ///
    /// DATA_DIR/auth/signing.key moves to
    /// DATA_DIR/auth/previous-keys/KID.key (KID: the old key's id) and a
    /// fresh key, or --new-key, becomes auth/signing.key (both mode 0600).
    /// A server reads its keys at start and on SIGHUP. Then issue new
    /// tokens, replace the old ones, and `token retire-key --kid KID`.
    /// Nodes of a cluster must share their keys: rotate once and give
    /// every node the same files, in three rolls
    /// (docs/operating/cluster.md, "Rotating the token signing key").
    RotateKey {
        /// Data directory whose keys rotate.
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        /// The key to sign with from now on (Ed25519, PKCS#8 PEM), such as
        /// the one every node of a cluster already accepts; a copy of it
        /// among the accepted keys is removed. Default: a fresh key.
        #[arg(long, value_name = "FILE")]
        new_key: Option<PathBuf>,
    },
    /// Stop accepting the tokens of a previous key.
    ///
    /// Removes it from DATA_DIR/auth/previous-keys/. A server refuses its tokens from its
    /// next start or SIGHUP, and then closes their live connections. The
    /// signing key itself cannot be retired (rotate first).
    RetireKey {
        /// Data directory holding the key.
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
        /// The key's id (`kid`), as `rotate-key` or `token keys` printed it.
        #[arg(long)]
        kid: String,
    },
    /// List the token keys of a data directory by id (`kid`, named in each
    /// token's header): the signing key, and the accepted previous keys.
    Keys {
        /// Data directory holding the keys.
        #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// `30d`, `12h`, `30m`, `45s` or plain seconds.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30d, 12h, 30m or 3600"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("a credential must be valid for at least a second".into());
    }
    Ok(Duration::from_secs(secs))
}

pub(crate) fn run_ca(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init { data_dir } => {
            DeviceCa::init(&data_dir)?;
            let (cert, key) = ca::paths(&data_dir);
            crate::logging::say(format!(
                "device CA made: {} (key {}, keep it private)",
                cert.display(),
                key.display()
            ));
            crate::logging::say(
                "a server on this data directory accepts its certificates from its next start",
            );
        }
        CaCommand::Issue {
            data_dir,
            who,
            ttl,
            out,
        } => {
            let ca = DeviceCa::load(&data_dir)
                .context("loading the device CA (make one with `tillstream ca init`)")?;
            let issued = ca.issue(who.device, who.store, who.role, ttl)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let cert = out.join(format!("device-{}.pem", who.device));
            let key = out.join(format!("device-{}.key", who.device));
            write(&cert, issued.cert_pem.as_bytes(), false)?;
            write(&key, issued.key_pem.as_bytes(), true)?;
            crate::logging::say(format!(
                "certificate {} and key {}",
                cert.display(),
                key.display()
            ));
            crate::outln!("{}", issued.claims.id)?;
        }
        CaCommand::Revoke {
            data_dir,
            cert,
            serial,
            reason,
        } => {
            let id = match (cert, serial) {
                (Some(path), _) => {
                    let pem = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    ca::serial_of_pem(&pem)?
                }
                (None, Some(s)) => s,
                (None, None) => bail!("give --cert FILE or --serial HEX"),
            };
            report_revoked(&data_dir, &id, Method::Certificate, &reason)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Issue {
            data_dir,
            key,
            device,
            store,
            role,
            ttl,
        } => {
            let key = load_key(&data_dir, key.as_deref())?;
            let (token, claims) = key.issue(&TokenRequest {
                device,
                store,
                role,
                ttl,
            })?;
            crate::logging::say(format!(
                "token id {} (revoke with --id), valid {} s",
                claims.id,
                ttl.as_secs()
            ));
            crate::outln!("{token}")?;
        }
        TokenCommand::Revoke {
            data_dir,
            token,
            id,
            reason,
        } => {
            let id = match (token, id) {
                (Some(t), _) => {
                    // Read the id from a token this deployment signed, even
                    // an expired one, or one of a previous key.
                    let keys = Verifier::load(&data_dir).context("loading the token keys")?;
                    keys.verify(t.trim(), 0)
                        .context("the token does not verify with this data directory's keys")?
                        .id
                }
                (None, Some(id)) => id,
                (None, None) => bail!("give --token TOKEN or --id JTI"),
            };
            report_revoked(&data_dir, &id, Method::Token, &reason)?;
        }
        TokenCommand::RotateKey { data_dir, new_key } => rotate_key(&data_dir, new_key)?,
        TokenCommand::RetireKey { data_dir, kid } => {
            for path in keys::retire(&data_dir, &kid)? {
                crate::logging::say(format!("removed {}", path.display()));
            }
            crate::logging::say(format!(
                "key {kid} retired: a server on {} refuses its tokens from its next start or SIGHUP (`kill -HUP`), and closes their connections",
                data_dir.display()
            ));
        }
        TokenCommand::Keys { data_dir } => {
            let signing = data_dir.join(SIGNING_KEY);
            let key = load_key(&data_dir, None)?;
            crate::outln!("signing   {}  {}", key.kid(), signing.display())?;
            for (path, key) in keys::load_accepted(&data_dir)? {
                crate::outln!("accepted  {}  {}", key.kid(), path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate_key(data_dir: &Path, new_key: Option<PathBuf>) -> anyhow::Result<()> {
    let new = match new_key {
        Some(path) => Some(
            SigningKey::load(&path)
                .with_context(|| format!("reading --new-key {}", path.display()))?,
        ),
        None => None,
    };
    let r = keys::rotate(data_dir, new)?;
    for path in &r.removed {
        crate::logging::say(format!(
            "removed {}: a copy of the new key, which signs now",
            path.display()
        ));
    }
    crate::outln!("old key {}: accepted, kept in {}", r.old, r.kept.display())?;
    crate::outln!(
        "new key {}: signs, in {}",
        r.new,
        data_dir.join(SIGNING_KEY).display()
    )?;
    crate::logging::say(format!(
        "next: restart the server on {dir} (or `kill -HUP` it) so that it reads both keys; \
         then issue new tokens (`tillstream token issue`) and replace the old ones; once no \
         device or API user presents a token of {old}, `tillstream token retire-key --data-dir {dir} --kid {old}` \
         and restart (or SIGHUP) again. Nodes of a cluster share keys: give every node these \
         files (docs/operating/cluster.md, \"Rotating the token signing key\")",
        dir = data_dir.display(),
        old = r.old
    ));
    Ok(())
}

fn load_key(data_dir: &Path, key: Option<&Path>) -> anyhow::Result<SigningKey> {
    let path = key.map_or_else(|| data_dir.join(SIGNING_KEY), Path::to_path_buf);
    SigningKey::load(&path).with_context(|| {
        format!(
            "loading the signing key {} (a server makes it on its first start in its data directory)",
            path.display()
        )
    })
}

fn report_revoked(data_dir: &Path, id: &str, kind: Method, reason: &str) -> anyhow::Result<()> {
    if revocation::revoke(data_dir, id, kind, reason)? {
        crate::logging::say(format!(
            "revoked {id}: a running server on {} closes its connections within its revocation poll (1 s by default)",
            data_dir.display()
        ));
    } else {
        crate::logging::say(format!("{id} was already revoked"));
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    tillstream_auth::write_atomic(path, bytes, private)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_modes_parse_and_bad_ones_are_explained() -> anyhow::Result<()> {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("3w").is_err_and(|e| e.contains("unit")));
        assert!(!parse_modes("none")?.enabled);
        let both = parse_modes("token,certificate")?;
        assert!(both.tokens && both.certificates == CertAuth::On);
        assert!(parse_modes("token,none").is_err());
        assert!(parse_modes("password").is_err());
        Ok(())
    }
}
