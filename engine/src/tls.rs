//! TLS material: certificates from files, or in development a self-signed
//! pair created once in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::EngineError;

/// Where the self-signed pair lives below the data directory.
pub(crate) const DEV_CERT: &str = "tls/cert.pem";
const DEV_KEY: &str = "tls/key.pem";

/// Loaded certificate chain and key, and the PEM file devices should trust.
pub(crate) struct TlsMaterial {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) trust_path: PathBuf,
    pub(crate) created: bool,
}

/// Loads `tls` if given, else the development pair in `data_dir`,
/// creating it on first run.
pub(crate) fn load_or_create(
    tls: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
) -> Result<TlsMaterial, EngineError> {
    let (cert_path, key_path, created) = match tls {
        Some((c, k)) => (c.clone(), k.clone(), false),
        None => {
            let cert = data_dir.join(DEV_CERT);
            let key = data_dir.join(DEV_KEY);
            let created = if cert.exists() && key.exists() {
                false
            } else {
                create_self_signed(&cert, &key)?;
                true
            };
            (cert, key, created)
        }
    };
    let chain = read_pem(&cert_path, |r| {
        rustls_pemfile::certs(r).collect::<Result<Vec<_>, _>>()
    })?;
    if chain.is_empty() {
        return Err(EngineError::Tls(format!(
            "no certificate in {}",
            cert_path.display()
        )));
    }
    let key = read_pem(&key_path, rustls_pemfile::private_key)?
        .ok_or_else(|| EngineError::Tls(format!("no private key in {}", key_path.display())))?;
    Ok(TlsMaterial {
        chain,
        key,
        trust_path: cert_path,
        created,
    })
}

fn read_pem<T>(
    path: &Path,
    parse: impl FnOnce(&mut dyn std::io::BufRead) -> std::io::Result<T>,
) -> Result<T, EngineError> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        what: "reading TLS file",
        path: path.to_owned(),
        source,
    })?;
    parse(&mut bytes.as_slice())
        .map_err(|e| EngineError::Tls(format!("cannot parse {}: {e}", path.display())))
}

fn create_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), EngineError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| EngineError::Tls(format!("cannot create a self-signed certificate: {e}")))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EngineError::Io {
            what: "creating the TLS directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private(key_path, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, ck.cert.pem()).map_err(|source| EngineError::Io {
        what: "writing the certificate",
        path: cert_path.to_owned(),
        source,
    })
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let io = |source| EngineError::Io {
        what: "writing the private key",
        path: path.to_owned(),
        source,
    };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `tillstream/1`, no
/// 0-RTT (early data can be replayed), one bidirectional stream per
/// connection, explicit flow-control windows.
pub(crate) fn quic_server_config(
    material: &TlsMaterial,
    limits: &tillstream_protocol::Limits,
) -> Result<quinn::ServerConfig, EngineError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EngineError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(|e| EngineError::Tls(format!("certificate and key do not match: {e}")))?;
    tls.alpn_protocols = vec![tillstream_protocol::ALPN.to_vec()];
    // 0-RTT stays off: rustls' default max_early_data_size is 0.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EngineError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Room for a window of in-flight batches per stream; beyond it the
    // device blocks on flow control, which is the intended back-pressure.
    let window = u64::from(limits.max_frame_bytes)
        .saturating_mul(4)
        .max(1 << 20);
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX))
        .receive_window(quinn::VarInt::from_u64(window * 2).unwrap_or(quinn::VarInt::MAX))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30))
                .map_err(|e| EngineError::Tls(e.to_string()))?,
        ))
        .keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
