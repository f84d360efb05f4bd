//! The device CA of a deployment (mutual TLS).
//!
//! `tillstream ca init` makes a self-signed CA (ECDSA P-256) in the data
//! directory; `tillstream ca issue` signs a device certificate whose
//! claims ride in a URI subject-alternative name,
//! `urn:tillstream:device:<id>:store:<id>:role:<role>`. The server trusts
//! the CA in its TLS verifier (rustls checks chain and validity) and reads
//! the claims back with [`claims_from_cert`]; the serial is what revokes a
//! certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::files::{read_string, write_atomic};
use crate::{AuthError, Claims, Method, Role, random_id};

/// The CA's certificate below the data directory.
pub const CA_CERT: &str = "auth/ca/ca.pem";
/// The CA's private key below the data directory.
pub const CA_KEY: &str = "auth/ca/ca.key";

/// How long the CA itself is valid: twenty years.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const URN: &str = "urn:tillstream:device:";

fn crypto(e: rcgen::Error) -> AuthError {
    AuthError::Crypto(e.to_string())
}

/// A CA able to issue device certificates.
pub struct DeviceCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa").finish_non_exhaustive()
    }
}

/// A device certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// What it claims.
    pub claims: Claims,
}

/// Where a data directory keeps its CA: (certificate, key).
pub fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join(CA_CERT), data_dir.join(CA_KEY))
}

impl DeviceCa {
    /// Makes a CA and writes it below `data_dir`; refuses to replace one
    /// (every certificate it issued would stop working).
    pub fn init(data_dir: &Path) -> Result<Self, AuthError> {
        let (cert_path, key_path) = paths(data_dir);
        if cert_path.exists() || key_path.exists() {
            return Err(AuthError::Invalid(format!(
                "a CA already exists at {}; remove it first to make a new one (every device certificate it issued will stop working)",
                cert_path.display()
            )));
        }
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tillstream device CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(crypto)?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA below `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, AuthError> {
        let (cert_path, key_path) = paths(data_dir);
        let cert_pem = read_string("reading the CA certificate", &cert_path)?;
        let key = KeyPair::from_pem(&read_string("reading the CA key", &key_path)?)
            .map_err(|e| AuthError::Invalid(format!("{}: {e}", key_path.display())))?;
        Ok(Self { cert_pem, key })
    }

    /// The CA certificate (what the server trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a certificate for `device` of `store` with `role`, valid for
    /// `validity` from now, with a fresh key.
    pub fn issue(
        &self,
        device: u64,
        store: u32,
        role: Role,
        validity: Duration,
    ) -> Result<IssuedCert, AuthError> {
        if !role.is_device() {
            return Err(AuthError::Invalid(format!(
                "certificates are for devices (terminal or shelf-sensor), not {role}"
            )));
        }
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| AuthError::Invalid(format!("the CA certificate: {e}")))?;
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tillstream device {device}"));
        let uri = format!("{URN}{device}:store:{store}:role:{role}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(crypto)?)];
        if validity > CA_VALIDITY {
            return Err(AuthError::Invalid(
                "a device certificate may live twenty years at most (as long as its CA)".into(),
            ));
        }
        let (_, serial) = random_id()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + validity;
        let cert = params.signed_by(&key, &issuer).map_err(crypto)?;
        // The claims as the server will read them from the signed bytes
        // (its serial as DER writes it: a leading zero byte is dropped).
        let claims = claims_from_cert(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            claims,
        })
    }
}

/// The claims of a device certificate (DER) that the TLS layer already
/// verified against the CA.
pub fn claims_from_cert(der: &[u8]) -> Result<Claims, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthError::Invalid(format!("unreadable client certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| AuthError::Invalid(format!("client certificate: {e}")))?
        .ok_or_else(|| AuthError::Invalid("the client certificate names no device".into()))?;
    let uri = sans
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URN) => Some(*u),
            _ => None,
        })
        .ok_or_else(|| AuthError::Invalid("the client certificate names no device".into()))?;
    let (device, store, role) = parse_urn(uri)
        .ok_or_else(|| AuthError::Invalid(format!("malformed device name {uri:?}")))?;
    Ok(Claims {
        device: Some(device),
        store: Some(store),
        role,
        expires_at_s: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
        id: serial_id(cert.raw_serial()),
        method: Method::Certificate,
        key_id: None,
    })
}

/// A certificate serial as revocation names it: lower-case hex of the
/// number, without leading zero bytes (DER padding, or a random first
/// byte that happened to be 0).
pub fn serial_id(serial: &[u8]) -> String {
    let first = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    crate::hex(&serial[first..])
}

fn parse_urn(uri: &str) -> Option<(u64, u32, Role)> {
    let rest = uri.strip_prefix(URN)?;
    let mut parts = rest.split(':');
    let device = parts.next()?.parse().ok()?;
    (parts.next()? == "store").then_some(())?;
    let store = parts.next()?.parse().ok()?;
    (parts.next()? == "role").then_some(())?;
    let role: Role = parts.next()?.parse().ok()?;
    (parts.next().is_none() && role.is_device()).then_some((device, store, role))
}

/// The serial of a certificate in PEM, as revocation names it.
pub fn serial_of_pem(pem: &str) -> Result<String, AuthError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| AuthError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(claims_from_cert(&der)?.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn tmp() -> Result<tempfile::TempDir, AuthError> {
        tempfile::tempdir().map_err(|e| AuthError::Crypto(e.to_string()))
    }

    #[test]
    fn an_issued_certificate_carries_its_claims() -> Result<(), AuthError> {
        let dir = tmp()?;
        let ca = DeviceCa::init(dir.path())?;
        let issued = ca.issue(42, 9, Role::ShelfSensor, Duration::from_secs(3600))?;
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = claims_from_cert(&der)?;
        assert_eq!(claims, issued.claims);
        assert_eq!(serial_of_pem(&issued.cert_pem)?, issued.claims.id);
        // The CA is read back and keeps issuing.
        let again = DeviceCa::load(dir.path())?;
        assert_eq!(again.cert_pem(), ca.cert_pem());
        again.issue(43, 9, Role::Terminal, Duration::from_secs(60))?;
        Ok(())
    }

    #[test]
    fn init_refuses_to_replace_a_ca_and_api_roles_get_no_certificate() -> Result<(), AuthError> {
        let dir = tmp()?;
        let ca = DeviceCa::init(dir.path())?;
        assert!(DeviceCa::init(dir.path()).is_err());
        assert!(
            ca.issue(1, 1, Role::Admin, Duration::from_secs(60))
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn serials_with_a_leading_zero_byte_are_named_as_the_server_reads_them() {
        assert_eq!(serial_id(&[0, 0x12, 0]), "1200");
        assert_eq!(serial_id(&[0x7f, 1]), "7f01");
        assert_eq!(serial_id(&[0, 0]), "");
    }

    #[test]
    fn device_names_parse_strictly() {
        assert_eq!(
            parse_urn("urn:tillstream:device:5:store:6:role:terminal"),
            Some((5, 6, Role::Terminal))
        );
        assert_eq!(
            parse_urn("urn:tillstream:device:5:store:6:role:admin"),
            None
        );
        assert_eq!(
            parse_urn("urn:tillstream:device:5:store:6:role:terminal:x"),
            None
        );
        assert_eq!(
            parse_urn("urn:tillstream:device:x:store:6:role:terminal"),
            None
        );
    }
}
