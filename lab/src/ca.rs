//! The lab's certificate authority: one CA made at start, a server certificate
//! for every exchange host name the simulator answers (and `127.0.0.1`,
//! `localhost` for the HTTPS proxies), and the CA as a PEM bundle a client trusts.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::LabError;

/// A CA generated for this lab run; nothing outside the run trusts it.
pub struct LabCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for LabCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCa").finish_non_exhaustive()
    }
}

/// A server certificate (chain of one) and its key, as rustls takes them.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The leaf certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// A rustls server configuration presenting this identity (ALPN `http/1.1`,
    /// so websocket upgrades work).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, LabError> {
        proxybus_shared::http::install_crypto_provider();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|err| LabError::Tls(err.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl LabCa {
    /// A new CA named "proxybus lab CA".
    pub fn generate() -> Result<Self, LabError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "proxybus lab CA");
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA certificate in PEM, the bundle a client adds to its trusted roots.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the PEM bundle to `path`.
    pub fn write_pem(&self, path: &Path) -> Result<(), LabError> {
        std::fs::write(path, self.pem()).map_err(|source| LabError::Io { path: path.to_owned(), source })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_identity(&self, names: &[&str]) -> Result<ServerIdentity, LabError> {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("lab"));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}
