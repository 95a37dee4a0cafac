//! `ProxyRequest.session_key` (issue 14 item 5): a session keeps its proxy while it
//! stays healthy, whichever client asks, and moves on the pool's rotation plan —
//! after `rotate_after_uses` answers (over the real HTTP API) or after
//! `rotate_after_seconds` less a jitter drawn per session, so sessions opened
//! together move at different times (paused tokio time, in-process).

use std::collections::BTreeSet;
use std::time::Duration;

use proxybus_pool::HealthSource;
use proxybus_pool::{Inventory, Selector, SelectorOptions};
use proxybus_pool::{RotationSettings, SessionSettings};
use proxybus_shared::{HealthState, ProxyId, ProxyResponse};

use crate::helpers::*;

fn sessions(plan: RotationSettings) -> SessionSettings {
    let mut settings = SessionSettings::default();
    settings.exchanges.insert("binance".parse().unwrap(), plan);
    settings
}

async fn ask_session(app: &TestApp, client: &str, session: &str) -> ProxyResponse {
    let mut body = request("binance", client);
    body.session_key = Some(session.into());
    let response = app.post("/api/v1/proxy/request", &serde_json::to_value(body).unwrap()).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_session_keeps_its_proxy_across_clients_while_healthy_and_moves_after_its_uses() {
    let plan = RotationSettings { rotate_after_uses: 3, rotate_after_seconds: 0, jitter: 0.0 };
    let app = spawn_app(&one_region("round_robin", &[1, 2, 3]), |s| s.settings.sessions = sessions(plan)).await;

    // Three answers with one proxy, whichever client continues the session.
    let first = ask_session(&app, "feed-a", "book-btc").await;
    let mine = first.proxy_id.unwrap();
    assert_eq!(
        (first.metadata["session_uses"].as_u64(), first.metadata["session_rotated"].as_bool()),
        (Some(1), Some(false))
    );
    for (client, uses) in [("feed-b", 2), ("feed-a-restarted", 3)] {
        let again = ask_session(&app, client, "book-btc").await;
        assert_eq!((again.proxy_id.as_ref(), again.strategy.as_str()), (Some(&mine), "session"));
        assert_eq!(again.metadata["session_uses"].as_u64(), Some(uses));
    }
    // Another session, another proxy by the strategy's turn; a plain request is not a session.
    let other = ask_session(&app, "feed-a", "book-eth").await;
    assert_ne!(other.proxy_id.as_ref(), Some(&mine));
    assert!(app.ask("binance", "feed-a").await.metadata.get("session_uses").is_none());

    // The fourth answer: the rotation is due, the session moves to another proxy and stays there.
    let rotated = ask_session(&app, "feed-a", "book-btc").await;
    let moved = rotated.proxy_id.unwrap();
    assert_ne!(moved, mine, "rotated away");
    assert_eq!(rotated.metadata["session_rotated"].as_bool(), Some(true));
    assert_eq!(ask_session(&app, "feed-c", "book-btc").await.proxy_id, Some(moved));

    // Unhealthy: the session leaves its proxy at once (not a rotation) and keeps the new one.
    let mut ejected = stats(1, HealthState::Ejected);
    ejected.proxy_id = moved;
    app.selector.apply_health(ejected, HealthSource::Http);
    let away = ask_session(&app, "feed-a", "book-btc").await;
    assert_ne!(away.proxy_id.as_ref(), Some(&moved));
    assert_eq!(away.metadata["session_rotated"].as_bool(), Some(false));
    assert_eq!(ask_session(&app, "feed-b", "book-btc").await.proxy_id, away.proxy_id);

    // A session key the service cannot keep is refused and changes nothing.
    let mut bad = request("binance", "feed-a");
    bad.session_key = Some("x".repeat(proxybus_shared::ProxyRequest::MAX_SESSION_KEY + 1));
    let refused = app.post("/api/v1/proxy/request", &serde_json::to_value(bad).unwrap()).await;
    assert_eq!(refused.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn a_rotation_that_finds_no_other_proxy_keeps_the_session_where_it_is() {
    let plan = RotationSettings { rotate_after_uses: 1, rotate_after_seconds: 0, jitter: 0.0 };
    let app = spawn_app(&one_region("round_robin", &[1, 2]), |s| s.settings.sessions = sessions(plan)).await;
    let first = ask_session(&app, "feed-a", "s").await;
    let other: ProxyId = if first.proxy_id == Some(id(1)) { id(2) } else { id(1) };
    app.selector.apply_health(ejected_for(if other == id(1) { 1 } else { 2 }, 60), HealthSource::Http);
    for _ in 0..3 {
        let again = ask_session(&app, "feed-a", "s").await;
        assert_eq!(again.proxy_id, first.proxy_id, "the only healthy proxy, even though the rotation is due");
        assert_ne!(again.strategy, "panic");
    }
    app.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sessions_opened_together_rotate_at_spread_times_within_the_jitter() {
    let plan = RotationSettings { rotate_after_uses: 0, rotate_after_seconds: 1_000, jitter: 0.5 };
    let options = SelectorOptions { seed: Some(7), sessions: sessions(plan), ..SelectorOptions::default() };
    let toml = one_region("round_robin", &[1, 2, 3, 4])
        .replace("strategy = \"round_robin\"", "strategy = \"round_robin\"\nttl_seconds = 3600");
    let selector = Selector::new(Inventory::from_toml_str(&toml).unwrap(), options);
    let ask = |session: usize| {
        let mut r = request("binance", &format!("feed-{session}"));
        r.session_key = Some(format!("s-{session}"));
        selector.respond(&r).unwrap()
    };
    let first: Vec<ProxyResponse> = (0..40).map(ask).collect();
    for answer in &first {
        let left = answer.metadata["session_rotate_in_seconds"].as_u64().unwrap();
        assert!((500..=1_000).contains(&left), "planned within [after × (1 − jitter), after]: {left}");
        assert_eq!(answer.ttl_seconds, left, "the lease ends by the move, not at the pool's TTL of an hour");
    }
    let rotated = |answers: &[ProxyResponse]| answers.iter().filter(|a| a.metadata["session_rotated"] == true).count();

    tokio::time::advance(Duration::from_secs(499)).await;
    assert_eq!(rotated(&(0..40).map(ask).collect::<Vec<_>>()), 0, "nobody moves before after × (1 − jitter)");
    tokio::time::advance(Duration::from_secs(251)).await;
    let midway = rotated(&(0..40).map(ask).collect::<Vec<_>>());
    assert!((5..=35).contains(&midway), "spread, not at once: {midway} of 40 moved by 750 s");
    tokio::time::advance(Duration::from_secs(251)).await;
    let late: Vec<ProxyResponse> = (0..40).map(ask).collect();
    assert_eq!(rotated(&late) + midway, 40, "everyone moved by `after`");
    let moved_to: BTreeSet<_> = late.iter().filter_map(|a| a.proxy_id).collect();
    assert!(moved_to.len() > 1, "spread over the pool");
}
