//! Publishing the inventory into KV bucket `PROXY_INVENTORY` (key
//! `{health.inventory_id}`, value `ProxyInventory`): the proxy ids and regions of
//! the inventory, never a URL or a credential. The aggregator sizes each region
//! from these, so that at least one proxy of it, and at most
//! `max_ejection_percent` of it, can be ejected however few have reported yet.
//! Published at start and after every reload.

use std::sync::Arc;
use std::time::Duration;

use proxybus_shared::{Codec, Encoding, InventoryProxy, ProxyInventory};
use tokio_util::sync::CancellationToken;

use crate::inventory::Inventory;
use crate::selector::Selector;

/// What is published for `inventory`.
pub(crate) fn inventory_record(inventory_id: &str, inventory: &Inventory) -> ProxyInventory {
    ProxyInventory {
        schema_version: proxybus_shared::SCHEMA_VERSION,
        inventory_id: inventory_id.to_owned(),
        proxies: inventory
            .proxies()
            .map(|proxy| InventoryProxy { proxy_id: *proxy.id(), region: proxy.region().clone() })
            .collect(),
        updated_at: chrono::Utc::now(),
    }
}

/// Publishes the selector's inventory now and after every reload, until `cancel`.
pub(crate) async fn run(
    client: async_nats::Client,
    selector: Arc<Selector>,
    inventory_id: String,
    cancel: CancellationToken,
) {
    let js = async_nats::jetstream::new(client);
    let mut changes = selector.inventory_changes();
    let mut pause = Duration::from_millis(200);
    let bucket = loop {
        match proxybus_shared::kv::open_inventory_bucket(&js).await {
            Ok(bucket) => break bucket,
            Err(err) => tracing::warn!(error = %err, "cannot open the inventory bucket; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    };
    loop {
        changes.borrow_and_update();
        let record = inventory_record(&inventory_id, &selector.inventory());
        let published = match Codec::default().encode(Encoding::MsgPack, &record) {
            Ok(value) => bucket.put(&inventory_id, value).await.map(|_| ()).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match published {
            Ok(()) => {
                tracing::info!(inventory_id = %inventory_id, proxies = record.proxies.len(), "inventory published")
            }
            Err(err) => tracing::warn!(error = %err, "cannot publish the inventory"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
