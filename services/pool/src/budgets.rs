//! Rate budgets per (proxy, exchange) (`proxybus_shared::budget`): the pool keeps
//! them and selects by them.
//!
//! - **Keeping** ([`keep_budgets`]): every pool service pulls from one durable
//!   consumer, `proxybus-pool-budgets` on stream `PROXY_FEEDBACK`, so each report is
//!   folded by one of them; it folds the event's usage headers and connects into
//!   KV bucket `PROXY_BUDGETS` with compare-and-set, then acks (a failed fold is
//!   redelivered).
//! - **Following** ([`follow_budgets`]): every pool service watches the bucket and
//!   hands each budget to its [`Selector`], which skips proxies near a limit while
//!   others have room.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use proxybus_shared::budget::{BudgetSettings, RateBudget, fold_into_bucket, open_budget_bucket};
use proxybus_shared::kv::KeyChange;
use proxybus_shared::{Codec, ProxyFeedback, subject};

use crate::Selector;

/// How long the keeper waits between looks for stream `PROXY_FEEDBACK` (the aggregator makes it).
const STREAM_RETRY: Duration = Duration::from_secs(1);

/// Folds usage reports from `PROXY_FEEDBACK` into `PROXY_BUDGETS` until `shutdown`,
/// sharing the durable consumer `proxybus-pool-budgets` with the other pool
/// services. Waits for the stream when it does not exist yet.
pub(crate) async fn keep_budgets(
    client: async_nats::Client,
    settings: BudgetSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let js = jetstream::new(client);
    let bucket = tokio::select! {
        biased;
        () = &mut shutdown => return,
        bucket = open_budget_bucket(&js) => match bucket {
            Ok(bucket) => bucket,
            Err(err) => {
                tracing::error!(error = %err, "rate budgets are not kept");
                return;
            }
        },
    };
    let stream = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            stream = js.get_stream(subject::FEEDBACK_STREAM) => match stream {
                Ok(stream) => break stream,
                Err(err) => {
                    tracing::debug!(error = %err, "no feedback stream yet; budgets wait for it");
                    tokio::time::sleep(STREAM_RETRY).await;
                }
            },
        }
    };
    let consumer = stream
        .get_or_create_consumer(
            subject::BUDGET_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(subject::BUDGET_CONSUMER.to_owned()),
                description: Some(format!("pool services fold usage reports into {}", subject::BUDGET_BUCKET)),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await;
    let consumer = match consumer {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::error!(error = %err, "cannot create the budget consumer; rate budgets are not kept");
            return;
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(err) => {
            tracing::error!(error = %err, "cannot pull usage reports; rate budgets are not kept");
            return;
        }
    };
    tracing::info!(consumer = subject::BUDGET_CONSUMER, bucket = subject::BUDGET_BUCKET, "keeping rate budgets");
    let codec = Codec::default();
    loop {
        let message = tokio::select! {
            biased;
            () = &mut shutdown => return,
            message = messages.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "pulling usage reports failed");
                continue;
            }
            None => return,
        };
        let event: ProxyFeedback = match codec.decode(message.headers.as_ref(), &message.payload) {
            Ok(event) => event,
            Err(_) => {
                // Not ours to judge: the aggregator dead-letters malformed feedback.
                let _ = message.ack().await;
                continue;
            }
        };
        match fold_into_bucket(&bucket, &settings, &event).await {
            Ok(folded) => {
                if let Some(budget) = folded {
                    tracing::debug!(key = %budget.key(), weight = budget.weight_used, connects = budget.connects_used, "budget updated");
                }
                if let Err(err) = message.ack().await {
                    tracing::warn!(error = %err, "cannot ack a usage report");
                }
            }
            Err(err) => tracing::warn!(error = %err, "usage report not folded; it comes again"),
        }
    }
}

/// Hands every budget of `PROXY_BUDGETS`, then every change, to `selector` until
/// `shutdown`; waits for the bucket when it does not exist yet.
pub(crate) async fn follow_budgets(
    client: async_nats::Client,
    selector: Arc<Selector>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let js = jetstream::new(client);
    let bucket = tokio::select! {
        biased;
        () = &mut shutdown => return,
        bucket = proxybus_shared::kv::wait_for_bucket(&js, subject::BUDGET_BUCKET, || {}) => bucket,
    };
    proxybus_shared::kv::follow::<RateBudget, _>(&bucket, shutdown, |change| match change {
        KeyChange::Put { value, .. } => selector.apply_budget(value),
        KeyChange::Deleted { key } => selector.forget_budget(&key),
        KeyChange::Current => tracing::info!(bucket = subject::BUDGET_BUCKET, "rate budgets loaded"),
    })
    .await;
}
