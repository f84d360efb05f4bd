//! TLS material: certificates from files, or in development a self-signed
//! pair created once in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::EngineError;

/// Where the self-signed pair lives below the data directory.
pub(crate) const DEV_CERT: &str = "tls/cert.pem";
pub(crate) const DEV_KEY: &str = "tls/key.pem";

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
    let chain = read_pem(&cert_path, |pem| {
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
    })?;
    if chain.is_empty() {
        return Err(EngineError::Tls(format!(
            "no certificate in {}",
            cert_path.display()
        )));
    }
    let key = read_pem(&key_path, |pem| match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => Ok(Some(k)),
        Err(pem::Error::NoItemsFound) => Ok(None),
        Err(e) => Err(e),
    })?
    .ok_or_else(|| EngineError::Tls(format!("no private key in {}", key_path.display())))?;
    Ok(TlsMaterial {
        chain,
        key,
        trust_path: cert_path,
        created,
    })
}

/// Reads `path` and parses it with `parse` (PEM through rustls-pki-types:
/// rustls-pemfile is unmaintained, RUSTSEC-2025-0134).
fn read_pem<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, pem::Error>,
) -> Result<T, EngineError> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        what: "reading TLS file",
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes).map_err(|e| EngineError::Tls(format!("cannot parse {}: {e}", path.display())))
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
    client_ca: Option<&[u8]>,
    window: u64,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ServerConfig, EngineError> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM with SHA-256 first: the handshake's key schedule and
    // transcript then run on SHA-256, which has CPU instructions here, where
    // SHA-384 runs in software (5% of a reconnect storm's server CPU).
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EngineError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => builder.with_client_cert_verifier(client_verifier(pem, provider)?),
    };
    let mut tls = builder
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(|e| EngineError::Tls(format!("certificate and key do not match: {e}")))?;
    tls.alpn_protocols = vec![tillstream_protocol::ALPN.to_vec()];
    tls.ignore_client_order = true;
    if client_ca.is_some() {
        // A resumed session reuses the client certificate of the first
        // handshake without checking it again (an expired or since-revoked
        // certificate would pass): with client certificates, no resumption.
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
    }
    // 0-RTT stays off: rustls' default max_early_data_size is 0.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EngineError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Beyond the window the device blocks on flow control, the intended
    // back-pressure. What a blocked reader leaves buffered in QUIC is at
    // most this per connection, so the window is kept small: it multiplies
    // by the fleet (104 devices with 4 MiB windows reached 800 MiB under
    // slow storage). Frames larger than it still pass: the reader takes
    // bytes as they arrive, which gives the device credit again.
    let window = window.max(16 << 10);
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX))
        .receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .map_err(|e| EngineError::Tls(e.to_string()))?,
        ))
        // The server pings too, so that a short --idle-timeout-s does
        // not close quiet devices whose own keep-alive is longer.
        .keep_alive_interval(Some(keep_alive_within(
            std::time::Duration::from_secs(5),
            idle_timeout,
        )));
    // The server sends acks and small frames, which QUIC's minimum of
    // 1,200 bytes carries: its own path MTU discovery found nothing it
    // used, and cost every connection's device three or four probes of
    // up to 1,452 bytes to read (a byte at a time, as PADDING frames) and
    // acknowledge. (Probing up to the devices' bound had also made a
    // revoked device see a stateless reset instead of the server's close
    // code.) What devices send is bounded by `max_udp_payload` in
    // `endpoint_config` and found by their own discovery.
    transport.mtu_discovery_config(None);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// `interval`, or half of `idle_timeout` if that is shorter, so that a
/// lost PING is sent again before the connection idles out. A zero idle
/// timeout is none (QUIC's convention), and leaves `interval` as it is: a
/// zero interval would ping without pause.
pub(crate) fn keep_alive_within(
    interval: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> std::time::Duration {
    if idle_timeout.is_zero() {
        interval
    } else {
        interval.min(idle_timeout / 2)
    }
}

/// Client certificates are checked against the device CA (chain, validity,
/// client-auth usage) by rustls' WebPKI verifier. A certificate is
/// optional: a device may instead send a token in `Hello`, and one that
/// offers neither is refused there, with a code it can read.
fn client_verifier(
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, EngineError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| EngineError::Tls(format!("the device CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| EngineError::Tls(format!("the device CA: {e}")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| EngineError::Tls(format!("the device CA: {e}")))
}

/// Where the QUIC endpoint's secret lives below the data directory.
const RESET_KEY: &str = "quic/stateless-reset.key";

/// The QUIC endpoint's settings that must survive restarts. A device whose
/// server was killed keeps sending on a connection the new process does not
/// know. With the old process's connection-id key the new one recognises
/// its own ids, and with the old reset key it answers with a stateless
/// reset the device can authenticate: the device reconnects at once
/// instead of waiting out its idle timeout. quinn's defaults draw both keys
/// afresh per process, which makes every such packet silently dropped.
pub(crate) fn endpoint_config(
    data_dir: &Path,
    max_udp_payload: u16,
) -> Result<quinn::EndpointConfig, EngineError> {
    let secret = endpoint_secret(data_dir)?;
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret[..32]);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret[32..40]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // After a restart every device of the fleet needs its reset; quinn's
    // default of one per 20 ms would leave most of a large fleet waiting
    // for its idle timeout. A reset is smaller than the packet that
    // caused it (no amplification), and packets with forged ids are
    // already dropped by the keyed id check.
    cfg.min_reset_interval(std::time::Duration::ZERO);
    // What devices may send: quinn's 1472 held every packet to a 1500-byte
    // frame even where the path carries more (ServerConfig::quic_max_udp_payload).
    cfg.max_udp_payload_size(max_udp_payload).map_err(|e| {
        EngineError::Tls(format!(
            "QUIC max UDP payload {max_udp_payload}: {e} (allowed: 1200 to 65527)"
        ))
    })?;
    Ok(cfg)
}

/// 64 random bytes kept in the data directory, made on first start.
fn endpoint_secret(data_dir: &Path) -> Result<Vec<u8>, EngineError> {
    let path = data_dir.join(RESET_KEY);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { what, path, source }
    };
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 64 => Ok(bytes),
        Ok(_) => Err(EngineError::Tls(format!(
            "{} is not a 64-byte key; delete it to make a new one",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 64];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| EngineError::Tls("no system randomness for the QUIC keys".into()))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            // Written whole then renamed: a crash leaves no half key.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &secret).map_err(io("writing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
            Ok(secret)
        }
        Err(e) => Err(io("reading", &path)(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use anyhow::Context;
    use std::time::Duration;

    #[test]
    fn the_endpoint_secret_survives_a_restart_and_a_bad_one_is_refused() -> Result<(), EngineError>
    {
        let tmp = || tempfile::tempdir().map_err(|e| EngineError::Tls(e.to_string()));
        let dir = tmp()?;
        let first = endpoint_secret(dir.path())?;
        assert_eq!(first, endpoint_secret(dir.path())?);
        assert_ne!(first, endpoint_secret(tmp()?.path())?);
        endpoint_config(dir.path(), 1472)?;
        assert!(
            endpoint_config(dir.path(), 1000).is_err(),
            "below QUIC's 1200 bytes"
        );
        std::fs::write(dir.path().join(RESET_KEY), b"short")
            .map_err(|e| EngineError::Tls(e.to_string()))?;
        assert!(endpoint_config(dir.path(), 1472).is_err());
        Ok(())
    }

    #[test]
    fn the_keep_alive_fits_twice_in_the_idle_timeout_and_none_leaves_it() {
        let s = Duration::from_secs;
        assert_eq!(keep_alive_within(s(5), s(30)), s(5));
        assert_eq!(keep_alive_within(s(5), s(1)), Duration::from_millis(500));
        // No idle timeout: a zero interval would ping without pause.
        assert_eq!(keep_alive_within(s(5), Duration::ZERO), s(5));
    }

    /// A device's connection and the server's end of it, over loopback,
    /// with the server's certificate made in `dir` and its packets up to
    /// `max_udp` bytes. The endpoints live as long as the connections.
    pub(crate) async fn loopback_connection(
        dir: &Path,
        max_udp: u16,
    ) -> anyhow::Result<(quinn::Connection, quinn::Connection)> {
        let material = load_or_create(None, dir)?;
        let config = quic_server_config(&material, None, 1 << 20, Duration::from_secs(30))?;
        let server = quinn::Endpoint::new(
            endpoint_config(dir, max_udp)?,
            Some(config),
            std::net::UdpSocket::bind("127.0.0.1:0")?,
            Arc::new(quinn::TokioRuntime),
        )?;
        let addr = server.local_addr()?;
        let ca = std::fs::read(&material.trust_path)?;
        let device = tillstream_client::client_endpoint(&ca, addr)?;
        let (dialled, accepted) = tokio::join!(
            async {
                device
                    .connect(addr, "localhost")?
                    .await
                    .map_err(anyhow::Error::from)
            },
            async {
                let incoming = server.accept().await.context("no connection")?;
                incoming.await.map_err(anyhow::Error::from)
            },
        );
        Ok((dialled?, accepted?))
    }

    /// The server sends acks and small frames: it probes nothing, and its
    /// packets stay at QUIC's minimum while the device's grow.
    #[tokio::test]
    async fn the_server_leaves_path_mtu_discovery_to_its_devices() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (device_conn, server_conn) = loopback_connection(dir.path(), 8952).await?;
        // The device's discovery climbs to 8952 bytes in a few round trips
        // over loopback; the server's would have probed in the same time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while device_conn.stats().path.current_mtu < 8952 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the device found no path MTU"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let path = server_conn.stats().path;
        assert_eq!(
            (path.sent_plpmtud_probes, path.current_mtu),
            (0, 1200),
            "the server probed its path"
        );
        Ok(())
    }
}
