//! `ProxyRequest.exclude_proxy_ids` (issue 14 item 1) over the real HTTP API: a
//! retry gets another proxy from every step of the choice — the sticky binding,
//! the strategy, panic mode — and, with none left, the pool's `when_all_ejected`.

use proxybus_pool::HealthSource;
use proxybus_shared::{HealthState, ProxyId};

use crate::helpers::*;

fn sticky_inventory(when_all_ejected: &str) -> String {
    format!(
        "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"round_robin\"\nsticky = true\nwhen_all_ejected = \"{when_all_ejected}\"\n{}",
        proxies("us-east", &[1, 2, 3])
    )
}

async fn ask_excluding(app: &TestApp, client: &str, excluded: &[ProxyId]) -> reqwest::Response {
    let mut body = request("binance", client);
    body.exclude_proxy_ids = excluded.to_vec();
    app.post("/api/v1/proxy/request", &serde_json::to_value(body).unwrap()).await
}

#[tokio::test]
async fn an_excluded_proxy_is_never_answered_sticky_by_strategy_or_in_panic_mode() {
    let app = spawn_app(&sticky_inventory("panic"), |_| {}).await;
    let first = app.ask("binance", "feed-a").await;
    let mine = first.proxy_id.unwrap();
    assert_eq!(app.ask("binance", "feed-a").await.strategy, "sticky");

    // The retry: not the sticky proxy, and the session moves to the new one.
    let retry: proxybus_shared::ProxyResponse =
        ask_excluding(&app, "feed-a", std::slice::from_ref(&mine)).await.json().await.unwrap();
    let moved = retry.proxy_id.unwrap();
    assert_ne!(moved, mine, "the excluded sticky proxy is not answered");
    assert_eq!(retry.strategy, "round_robin");
    let again = app.ask("binance", "feed-a").await;
    assert_eq!((again.proxy_id.as_ref(), again.strategy.as_str()), (Some(&moved), "sticky"));

    // Every strategy turn skips it: 30 retries of other clients never get it.
    for i in 0..30 {
        let answer: proxybus_shared::ProxyResponse =
            ask_excluding(&app, &format!("c{i}"), &[id(1), id(2)]).await.json().await.unwrap();
        assert_eq!(answer.proxy_id, Some(id(3)), "round {i}");
    }

    // Panic mode (all ejected) answers the least bad of those not excluded.
    app.selector.apply_health(ejected_for(1, 1), HealthSource::Http);
    app.selector.apply_health(ejected_for(2, 30), HealthSource::Http);
    app.selector.apply_health(stats(3, HealthState::Ejected), HealthSource::Http);
    let panic: proxybus_shared::ProxyResponse = ask_excluding(&app, "feed-b", &[id(1)]).await.json().await.unwrap();
    assert_eq!((panic.strategy.as_str(), panic.proxy_id), ("panic", Some(id(2))), "not 1, whose ejection ends first");

    // Nothing left at all: panic mode has nothing to answer.
    let none = ask_excluding(&app, "feed-b", &[id(1), id(2), id(3)]).await;
    assert_eq!(none.status(), 404);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "no_proxy_available");
    app.stop().await;
}

#[tokio::test]
async fn with_nothing_left_a_direct_pool_answers_direct_and_too_many_exclusions_are_refused() {
    let app = spawn_app(&sticky_inventory("direct"), |_| {}).await;
    let direct: proxybus_shared::ProxyResponse =
        ask_excluding(&app, "feed-a", &[id(1), id(2), id(3)]).await.json().await.unwrap();
    assert_eq!((direct.proxy_url, direct.strategy.as_str()), (None, "direct"));

    let too_many: Vec<ProxyId> = (0..=proxybus_shared::ProxyRequest::MAX_EXCLUDED)
        .map(|n| proxybus_shared::proxy_id(&format!("http://h:{n}")))
        .collect();
    let refused = ask_excluding(&app, "feed-a", &too_many).await;
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("exclude_proxy_ids"), "{body}");
    assert_eq!(app.selector.active_leases(&id(1)), 0, "a refused request leases nothing");
    app.stop().await;
}
