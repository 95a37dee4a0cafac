//! `NatsSettings` connects to real, authenticated nats-server processes.

use proxybus_shared::config::EnvSource;
use proxybus_shared::nats::{ConnectError, NatsSettings};
use proxybus_tests::NatsServer;

fn env(vars: &[(&str, &str)]) -> EnvSource {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn round_trip(client: &async_nats::Client) {
    let mut sub = client.subscribe("ping").await.unwrap();
    client.publish("ping", "pong".into()).await.unwrap();
    client.flush().await.unwrap();
    let msg =
        tokio::time::timeout(std::time::Duration::from_secs(5), futures::StreamExt::next(&mut sub)).await.unwrap();
    assert_eq!(msg.unwrap().payload.as_ref(), b"pong");
}

#[tokio::test]
async fn token_from_the_environment_authenticates() {
    let server = NatsServer::builder().token("s3cret-token").start().await.unwrap();
    let url = server.client_url();
    let good = NatsSettings::from_env(&env(&[("NATS_URL", &url), ("NATS_TOKEN", "s3cret-token")])).unwrap();
    round_trip(&good.connect().await.unwrap()).await;

    let bad = NatsSettings::from_env(&env(&[("NATS_URL", &url), ("NATS_TOKEN", "wrong")])).unwrap();
    let err = bad.connect().await.unwrap_err();
    let ConnectError::Connect(err) = err else { panic!("expected a connect error, got {err:?}") };
    assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}");
    let none = NatsSettings::from_env(&env(&[("NATS_URL", &url)])).unwrap();
    assert!(none.connect().await.is_err());
}

#[tokio::test]
async fn user_and_password_from_the_environment_authenticate() {
    let server = NatsServer::builder().user_password("feed", "pw-123").start().await.unwrap();
    let url = server.client_url();
    let good = NatsSettings::from_env(&env(&[("NATS_URL", &url), ("NATS_USER", "feed"), ("NATS_PASSWORD", "pw-123")]))
        .unwrap()
        .with_name("proxybus-test");
    round_trip(&good.connect().await.unwrap()).await;
    let bad =
        NatsSettings::from_env(&env(&[("NATS_URL", &url), ("NATS_USER", "feed"), ("NATS_PASSWORD", "nope")])).unwrap();
    let err = bad.connect().await.unwrap_err();
    let ConnectError::Connect(err) = err else { panic!("expected a connect error, got {err:?}") };
    assert_eq!(err.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{err}");
}

#[tokio::test]
async fn a_service_is_waited_for_until_it_serves_not_until_it_answers_ping() {
    use async_nats::service::ServiceExt;
    use std::time::Duration;
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let service = client.service_builder().start("proxybus-test-service", "1.0.0").await.unwrap();
    let ping = client.request("$SRV.PING.proxybus-test-service", "".into()).await.unwrap();
    assert!(!ping.payload.is_empty(), "it answers PING already");
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            proxybus_shared::nats::wait_for_service(&client, "proxybus-test-service", Duration::from_secs(10)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "no endpoint yet: a request would find no responder");
    let _endpoint = service.endpoint("proxybus.test.echo").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("returns once it serves").unwrap().unwrap();

    let err = proxybus_shared::nats::wait_for_service(&client, "proxybus-nobody", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.name, "proxybus-nobody");
}
