//! Region sizes from the pools' inventories: every pool service publishes its
//! inventory (proxy ids and regions, never credentials) into KV bucket
//! `PROXY_INVENTORY`; the aggregator follows the bucket and sizes each region as
//! the number of distinct proxies all inventories put in it. The ejection cap
//! (`max_ejection_percent`) is a share of that size, so a fresh deployment whose
//! proxies have not all reported yet is judged by its real size.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream;
use proxybus_shared::kv::{self, KeyChange};
use proxybus_shared::{ProxyId, ProxyInventory};
use tokio::sync::watch;

/// Proxies per region, from every inventory.
pub(crate) type RegionSizes = BTreeMap<String, usize>;

/// The distinct proxies per region of `inventories`.
pub(crate) fn region_sizes<'a>(inventories: impl IntoIterator<Item = &'a ProxyInventory>) -> RegionSizes {
    let mut regions: BTreeMap<String, BTreeSet<&ProxyId>> = BTreeMap::new();
    for inventory in inventories {
        for proxy in &inventory.proxies {
            regions.entry(proxy.region.as_str().to_owned()).or_default().insert(&proxy.proxy_id);
        }
    }
    regions.into_iter().map(|(region, ids)| (region, ids.len())).collect()
}

/// The region sizes of the inventories stored now (for a replay); empty when the
/// bucket is missing or unreadable.
pub(crate) async fn current_sizes(jetstream: &jetstream::Context) -> RegionSizes {
    let Ok(bucket) = jetstream.get_key_value(proxybus_shared::subject::INVENTORY_BUCKET).await else {
        return RegionSizes::new();
    };
    // The stream's index, not a KV key listing, which skips keys rewritten while it
    // reads (a pool republishing its inventory).
    let Ok(keys) = proxybus_shared::kv::current_keys(&bucket).await else { return RegionSizes::new() };
    let mut inventories = Vec::new();
    for key in keys {
        if let Ok(Some(bytes)) = bucket.get(&key).await
            && let Ok(inventory) = proxybus_shared::Codec::default()
                .decode_as::<ProxyInventory>(proxybus_shared::Encoding::MsgPack, &bytes)
        {
            inventories.push(inventory);
        }
    }
    region_sizes(&inventories)
}

/// Follows `PROXY_INVENTORY` until `shutdown`, sending the region sizes on every change
/// once the stored inventories are loaded.
pub(crate) async fn follow(
    jetstream: jetstream::Context,
    sizes: watch::Sender<RegionSizes>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let bucket = match kv::open_inventory_bucket(&jetstream).await {
        Ok(bucket) => bucket,
        Err(err) => {
            tracing::warn!(error = %err, "no inventories: region sizes come from the proxies heard of");
            return;
        }
    };
    let mut inventories: BTreeMap<String, ProxyInventory> = BTreeMap::new();
    let mut current = false;
    kv::follow::<ProxyInventory, _>(&bucket, shutdown, |change| {
        match change {
            KeyChange::Put { key, value } => {
                inventories.insert(key, value);
            }
            KeyChange::Deleted { key } => {
                inventories.remove(&key);
            }
            KeyChange::Current => current = true,
        }
        if current {
            let next = region_sizes(inventories.values());
            sizes.send_if_modified(|held| {
                let changed = *held != next;
                if changed {
                    tracing::info!(regions = ?next, "region sizes from the pools' inventories");
                    *held = next;
                }
                changed
            });
        }
    })
    .await;
}
