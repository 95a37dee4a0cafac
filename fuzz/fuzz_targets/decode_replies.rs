//! What the services send back and keep: `ProxyResponse`, `ErrorReply`,
//! `HealthStats`, `OperatorEvent`, `ProxyInventory` and `RateBudget`, from arbitrary
//! bytes. The first byte picks the encoding (even: MessagePack, odd: JSON) and,
//! divided by two, the message (modulo 6). Invariants: see `common::check`.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use proxybus_shared::budget::RateBudget;
use proxybus_shared::{ErrorReply, HealthStats, OperatorEvent, ProxyInventory, ProxyResponse};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    let encoding = common::encoding(selector);
    match (selector / 2) % 6 {
        0 => common::check::<ProxyResponse>(encoding, payload),
        1 => common::check::<ErrorReply>(encoding, payload),
        2 => common::check::<HealthStats>(encoding, payload),
        3 => common::check::<OperatorEvent>(encoding, payload),
        4 => common::check::<ProxyInventory>(encoding, payload),
        _ => common::check::<RateBudget>(encoding, payload),
    }
});
