//! `ProxyRequest` from arbitrary bytes, in either encoding (first byte even:
//! MessagePack, odd: JSON). Invariants: see `common::check`.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use proxybus_shared::ProxyRequest;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    common::check::<ProxyRequest>(common::encoding(selector), payload);
});
