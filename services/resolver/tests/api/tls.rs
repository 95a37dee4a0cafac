//! HTTPS upstream with a CA made in the test (rcgen): accepted when the CA is
//! configured, refused when it is not, and the client certificate presented
//! when mutual TLS is configured.

use std::sync::Arc;

use proxybus_shared::ConnectionType::Http;
use proxybus_shared::ResponseSource;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::helpers::*;

struct Pki {
    dir: tempfile::TempDir,
    server: rustls::ServerConfig,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(DnType::CommonName, "proxybus test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&server_key, &ca).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["proxybus-resolver".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = vec![server_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Pki { dir, server }
}

fn vars(upstream: &FakeUpstream) -> Vec<(&'static str, String)> {
    let mut vars = upstream_vars(&[upstream]);
    vars.push(("PROXYBUS_RESOLVER_FALLBACK_POLICY", "fail".into()));
    vars
}

#[tokio::test]
async fn https_upstream_is_refused_without_its_ca_and_accepted_with_it() {
    let pki = pki();
    let upstream = FakeUpstream::start_tls(Behaviour::default(), pki.server.clone()).await;

    let untrusting = resolver(&borrow(&vars(&upstream)));
    assert!(untrusting.resolve(&request("binance", Http, "f")).await.is_err(), "an unknown CA is refused");
    assert_eq!(upstream.calls(), 0, "refused during the handshake");

    let mut trusting_vars = vars(&upstream);
    trusting_vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__CA_FILE", pki.path("ca.pem")));
    let trusting = resolver(&borrow(&trusting_vars));
    let answer = trusting.resolve(&request("binance", Http, "f")).await.unwrap();
    assert_eq!(answer.source, ResponseSource::Service);
    assert_eq!(upstream.calls(), 1);
    assert!(!upstream.client_cert_seen(), "no client certificate without mutual TLS");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = pki();
    let upstream = FakeUpstream::start_tls(Behaviour::default(), pki.server.clone()).await;
    let mut vars = vars(&upstream);
    vars.retain(|(k, _)| !k.ends_with("AUTH_CREDENTIALS__TOKEN"));
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "mutual_tls".into()));
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__CA_FILE", pki.path("ca.pem")));
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__CERT_FILE", pki.path("client.pem")));
    vars.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__KEY_FILE", pki.path("client.key")));
    let resolver = resolver(&borrow(&vars));
    let answer = resolver.resolve(&request("binance", Http, "f")).await.unwrap();
    assert_eq!(answer.source, ResponseSource::Service);
    assert!(upstream.client_cert_seen(), "the client certificate was presented");
    assert_eq!(upstream.seen()[0].authorization, None, "mutual TLS sends no bearer token");
}

/// Builds a resolver from `vars` and returns what it logged while starting.
fn resolver_and_its_start_logs(vars: &[(&str, &str)]) -> (proxybus_resolver::Resolver, String) {
    let buffer = proxybus_shared::testing::LogBuffer::default();
    let logs = proxybus_shared::telemetry::subscriber(
        proxybus_shared::telemetry::LogFormat::Plain,
        Some("warn"),
        false,
        buffer.clone(),
    );
    let resolver = tracing::subscriber::with_default(logs, || resolver(vars));
    (resolver, buffer.text())
}

#[tokio::test]
async fn certificate_validation_is_on_by_default_and_off_only_explicitly_with_a_warning() {
    // Issue #12 item 7.
    let pki = pki();
    let upstream = FakeUpstream::start_tls(Behaviour::default(), pki.server.clone()).await;
    let (validating, logs) = resolver_and_its_start_logs(&borrow(&vars(&upstream)));
    assert!(validating.resolve(&request("binance", Http, "f")).await.is_err(), "an unknown CA is refused");
    assert!(!logs.contains("NOT validated"), "{logs}");
    assert_eq!(upstream.calls(), 0);

    let mut insecure = vars(&upstream);
    insecure.push(("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__INSECURE_SKIP_TLS_VERIFY", "true".into()));
    for _start in 0..2 {
        let (skipping, logs) = resolver_and_its_start_logs(&borrow(&insecure));
        assert!(logs.contains("WARN") && logs.contains("NOT validated"), "a warning at every start: {logs}");
        assert!(logs.contains("insecure_skip_tls_verify"), "{logs}");
        let answer = skipping.resolve(&request("binance", Http, "f")).await.unwrap();
        assert_eq!(answer.source, ResponseSource::Service);
    }
    assert_eq!(upstream.calls(), 2);
}
