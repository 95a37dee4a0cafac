//! Inventory reloads under load, from file changes, and refused invalid files.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use proxybus_shared::HealthState;

use crate::helpers::*;

/// Writes `text` to `path` the way editors do: a temporary file renamed over it.
fn replace_file(path: &std::path::Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[tokio::test]
async fn reloads_under_concurrent_requests_lose_no_request() {
    let v1 = one_region("round_robin", &[1, 2]);
    let v2 = one_region("round_robin", &[3, 4]);
    let app = Arc::new(spawn_app(&v1, |_| {}).await);
    let known: HashSet<_> = (1..=4).map(id).collect();

    let mut clients = Vec::new();
    for worker in 0..8 {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..60 {
                let body = serde_json::to_value(request("binance", &format!("w{worker}-{i}"))).unwrap();
                let response = app.post("/api/v1/proxy/request", &body).await;
                assert_eq!(response.status(), 200, "worker {worker} request {i}");
                let answer: proxybus_shared::ProxyResponse = response.json().await.unwrap();
                answered.push(answer.proxy_id.expect("a proxy"));
            }
            answered
        }));
    }
    let reloads = {
        let app = app.clone();
        tokio::spawn(async move {
            for round in 0..30 {
                replace_file(&app.inventory_path, if round % 2 == 0 { &v2 } else { &v1 });
                assert!(app.reloader.reload().is_ok(), "round {round}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    for client in clients {
        for proxy in client.await.expect("no request failed") {
            assert!(known.contains(&proxy), "{proxy} is in neither inventory");
            seen.insert(proxy);
            total += 1;
        }
    }
    reloads.await.unwrap();
    assert_eq!(total, 8 * 60);
    assert!(seen.len() >= 2, "{seen:?}");
    let after = app.ask("binance", "after").await.proxy_id.unwrap();
    assert!([id(1), id(2)].contains(&after), "the last reload (v1) is in force");
    Arc::into_inner(app).expect("every task is done").stop().await;
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_health_survives_by_proxy_id() {
    let v1 = one_region("round_robin", &[1, 2]);
    let app = spawn_app(&v1, |s| s.settings.watch_inventory = true).await;
    app.selector.apply_health(stats(2, HealthState::Ejected), proxybus_pool::HealthSource::Http);
    assert_eq!(app.ask("binance", "a").await.proxy_id, Some(id(1)));

    // Proxy 1 leaves, 3 joins; 2 stays and stays ejected.
    replace_file(&app.inventory_path, &one_region("round_robin", &[2, 3]));
    let reloaded = eventually(Duration::from_secs(10), async || app.selector.inventory().proxy(&id(3)).is_some()).await;
    assert!(reloaded, "the file change was not picked up");
    for i in 0..10 {
        assert_eq!(app.ask("binance", &format!("b{i}")).await.proxy_id, Some(id(3)), "2 is still ejected");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_current_inventory_stays() {
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    replace_file(&app.inventory_path, "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"fastest\"\n");
    let err = app.reloader.reload().unwrap_err();
    assert!(err.to_string().contains("strategy"), "{err}");
    assert_eq!(app.ask("binance", "c").await.proxy_id, Some(id(1)));
    app.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_inventory() {
    // The test's own listener makes sure SIGHUP never takes the default action
    // (ending the process), even before the service's reload task listens.
    let _guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let app = spawn_app(&one_region("round_robin", &[1]), |_| {}).await;
    std::fs::write(&app.inventory_path, one_region("round_robin", &[4])).unwrap();
    // A signal sent before the reload task listens is missed, so send until it is seen.
    let reloaded = eventually(Duration::from_secs(10), async || {
        let sent = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status();
        assert!(sent.unwrap().success());
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.selector.inventory().proxy(&id(4)).is_some()
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload");
    app.stop().await;
}
