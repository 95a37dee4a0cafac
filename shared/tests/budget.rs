//! Rate budgets in `PROXY_BUDGETS` on a real nats-server: concurrent writers
//! folding into one key with compare-and-set lose nothing, and an exchange that
//! is not budgeted writes nothing.

use std::sync::Arc;

use async_nats::jetstream;
use proxybus_shared::budget::{BudgetSettings, RateBudget, budget_key, fold_into_bucket, open_budget_bucket};
use proxybus_shared::{Codec, ConnectionType, Encoding, FeedbackPhase, ProxyFeedback};
use proxybus_tests::NatsServer;

fn connect_start(exchange: &str) -> ProxyFeedback {
    let url = "http://u:pw@10.0.0.1:3128";
    ProxyFeedback {
        // One instant for all: every connect falls in one window, whatever the clock does.
        timestamp: chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
        ..ProxyFeedback::new(
            url,
            exchange.parse().unwrap(),
            ConnectionType::Websocket,
            FeedbackPhase::ConnectStart,
            true,
            "feed-cas",
        )
    }
}

#[tokio::test]
async fn concurrent_folds_into_one_budget_lose_no_connect() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let bucket = Arc::new(open_budget_bucket(&js).await.unwrap());
    let settings = Arc::new(BudgetSettings::default());
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (bucket, settings) = (bucket.clone(), settings.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..25 {
                fold_into_bucket(&bucket, &settings, &connect_start("binance")).await.unwrap().expect("counted");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let event = connect_start("binance");
    let stored = bucket.get(budget_key(&event.proxy_id, &event.exchange_id)).await.unwrap().unwrap();
    let budget: RateBudget = Codec::default().decode_as(Encoding::MsgPack, &stored).unwrap();
    assert_eq!(budget.connects_used, 100, "4 writers × 25 connects, none lost to a concurrent write");
    assert_eq!(budget.connect_limit, 300);
    let revisions = bucket.entry(budget_key(&event.proxy_id, &event.exchange_id)).await.unwrap().unwrap().revision;
    assert!(revisions >= 100, "one revision-checked write per fold: {revisions}");

    assert!(fold_into_bucket(&bucket, &settings, &connect_start("kraken")).await.unwrap().is_none());
    assert!(bucket.get(budget_key(&event.proxy_id, &"kraken".parse().unwrap())).await.unwrap().is_none());
}
