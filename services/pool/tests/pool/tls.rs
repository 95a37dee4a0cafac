//! HTTPS with client certificates, called with the resolver's own HTTP client
//! (`proxybus_shared::http::proxy_service_client`).

use std::path::{Path, PathBuf};

use proxybus_pool::{ClientAuth, TlsSettings};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig};
use proxybus_shared::http::{TlsFiles, proxy_service_client};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::helpers::*;

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A CA, a server certificate for 127.0.0.1, a client certificate it signed, and
/// one from another CA.
fn pki(dir: &Path) -> Pki {
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, names: Vec<String>, usage| {
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let trusted = ca("proxybus test CA");
    let other = ca("someone else's CA");
    let (server_cert, server_key) =
        leaf(&trusted, vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&trusted, vec!["feed-1".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(&other, vec!["feed-x".into()], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write(dir, "ca.pem", trusted.pem()),
        server_cert: write(dir, "server.pem", server_cert),
        server_key: write(dir, "server.key", server_key),
        client_cert: write(dir, "client.pem", client_cert),
        client_key: write(dir, "client.key", client_key),
        stranger_cert: write(dir, "stranger.pem", stranger_cert),
        stranger_key: write(dir, "stranger.key", stranger_key),
    }
}

fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let config = ExternalProxyServiceConfig {
        auth_method: if identity.is_some() { AuthMethod::MutualTls } else { AuthMethod::None },
        timeout_seconds: 10,
        ..ExternalProxyServiceConfig::default()
    };
    let files =
        TlsFiles { ca_file: Some(ca.to_owned()), client_identity: identity.map(|(c, k)| (c.to_owned(), k.to_owned())) };
    proxy_service_client(&config, &files).unwrap()
}

#[tokio::test]
async fn mutual_tls_authenticates_without_a_token_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tls = TlsSettings {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca.clone()),
        client_auth: ClientAuth::Required,
    };
    let app = spawn_app(&one_region("round_robin", &[1]), |s| {
        s.settings.tls = Some(tls);
        s.settings.auth.tokens.clear();
    })
    .await;
    let url = format!("https://127.0.0.1:{}/api/v1/proxy/request", app.addr.port());
    let body = serde_json::to_value(request("binance", "feed-1")).unwrap();

    let member = client(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let response = member.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "a client certificate of the CA is enough");

    let anonymous = client(&pki.ca, None);
    assert!(anonymous.post(&url).json(&body).send().await.is_err(), "no certificate: the handshake fails");
    let stranger = client(&pki.ca, Some((&pki.stranger_cert, &pki.stranger_key)));
    assert!(stranger.post(&url).json(&body).send().await.is_err(), "another CA's certificate: refused");
    let plain = reqwest::Client::new().post(format!("http://127.0.0.1:{}/healthz", app.addr.port())).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plain text on a TLS port");
    app.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_still_need_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tls = TlsSettings {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca.clone()),
        client_auth: ClientAuth::Optional,
    };
    let app = spawn_app(&one_region("round_robin", &[1]), |s| s.settings.tls = Some(tls)).await;
    let url = format!("https://127.0.0.1:{}/api/v1/proxy/request", app.addr.port());
    let body = serde_json::to_value(request("binance", "feed-1")).unwrap();
    let anonymous = client(&pki.ca, None);
    assert_eq!(anonymous.post(&url).json(&body).send().await.unwrap().status(), 401);
    let with_token = anonymous.post(&url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    app.stop().await;
}
