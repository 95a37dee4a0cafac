//! proxybus refuses nats-server versions older than 2.11 with a message naming both versions,
//! against a real old server (Debian's 2.9, installed by `scripts/ensure-deps.sh`).

use proxybus_shared::nats::{ConnectError, NatsSettings, ensure_supported};
use proxybus_shared::nats_server::{MINIMUM_VERSION, VersionError};
use proxybus_tests::{NatsServer, old_server_binary};

#[tokio::test]
async fn connecting_to_an_old_server_is_refused_with_both_versions() {
    let server = NatsServer::builder().binary(old_server_binary()).start().await.unwrap();
    let error = NatsSettings::new(server.client_url()).connect().await.unwrap_err();
    let ConnectError::UnsupportedServer(VersionError::TooOld(too_old)) = &error else {
        panic!("expected an unsupported-server error, got {error:?}");
    };
    assert!(too_old.found < MINIMUM_VERSION, "{too_old:?}");
    let message = error.to_string();
    assert!(message.contains(&too_old.found.to_string()), "{message}");
    assert!(message.contains("2.11.0"), "{message}");
    assert!(message.contains("ensure-deps.sh"), "{message}");
}

#[tokio::test]
async fn a_current_server_is_accepted_and_named() {
    let server = NatsServer::start().await.unwrap();
    let client = NatsSettings::new(server.client_url()).connect().await.unwrap();
    let version = ensure_supported(&client).unwrap();
    assert!(version >= MINIMUM_VERSION, "{version}");
}
