//! NATS micro-service discovery as a test sees it: how many instances of a proxybus service
//! answer `$SRV.PING`, for tests that wait for services to start or to come back.

use std::time::Duration;

use futures::StreamExt;
use proxybus_shared::subject;

/// How long to wait for one more instance's answer before the count is taken as complete.
const QUIET: Duration = Duration::from_millis(300);

/// How many resolvers answer `$SRV.PING.proxybus-resolver` within 300 ms of each other (0 when
/// the client cannot subscribe or publish, so a caller polls until a deadline).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) {
/// while proxybus_tests::resolvers_serving(&client).await < 2 {}
/// # }
/// ```
pub async fn resolvers_serving(client: &async_nats::Client) -> usize {
    let inbox = client.new_inbox();
    let Ok(mut pongs) = client.subscribe(inbox.clone()).await else { return 0 };
    let ping = format!("$SRV.PING.{}", subject::RESOLVER_SERVICE);
    if client.publish_with_reply(ping, inbox, "".into()).await.is_err() {
        return 0;
    }
    let mut serving = 0;
    while let Ok(Some(_)) = tokio::time::timeout(QUIET, pongs.next()).await {
        serving += 1;
    }
    serving
}
