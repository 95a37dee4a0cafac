//! The exchanges' per-IP rules, as settings, and the one function per rule
//! that decides a request's fate: [`Limiter::check_request`] for REST,
//! [`Limiter::check_ws_connect`] for websocket handshakes and [`MessageRate`]
//! for messages a client sends on an open websocket.
//!
//! The defaults are the exchanges' published limits scaled down so that a demo
//! of a few feeds runs into them within a minute; each default names its source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Binance's published REST and websocket limits.
pub const BINANCE_LIMITS_DOC: &str = "https://developers.binance.com/docs/binance-spot-api-docs/rest-api/limits";
/// Binance's websocket stream limits.
pub const BINANCE_WS_DOC: &str = "https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams";
/// Coinbase Exchange's REST limits.
pub const COINBASE_REST_DOC: &str = "https://docs.cdp.coinbase.com/exchange/docs/rest-rate-limits";
/// Coinbase Exchange's websocket limits.
pub const COINBASE_WS_DOC: &str = "https://docs.cdp.coinbase.com/exchange/docs/websocket-rate-limits";

/// The per-IP rules of one exchange. Every field is a setting (TOML key of the same name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRules {
    /// Request weight one IP may use per window; over it a request gets 429 with
    /// `Retry-After` (seconds to the end of the window).
    pub request_weight_limit: u32,
    /// Length of the request-weight window, seconds (Binance: one minute, reported in `X-MBX-USED-WEIGHT-1M`).
    pub request_window_seconds: u64,
    /// First 418 ban for a request sent while a 429's `Retry-After` still runs, seconds;
    /// each further ban of the same IP doubles it. 0: no bans (429 again).
    pub ban_base_seconds: u64,
    /// Longest ban, seconds.
    pub ban_max_seconds: u64,
    /// Websocket handshakes one IP may make per connect window; over it: 429 with `Retry-After`.
    pub ws_connect_limit: u32,
    /// Length of the connect window, seconds.
    pub ws_connect_window_seconds: u64,
    /// Messages a client may send per second on one websocket; over it the server closes with 1008.
    pub ws_inbound_messages_per_second: u32,
    /// Source IPs answered 451 (a restricted location) on every request and handshake.
    #[serde(default)]
    pub geo_restricted_ips: Vec<IpAddr>,
    /// Source IPs a web application firewall answers 403 on every request and handshake.
    #[serde(default)]
    pub waf_blocked_ips: Vec<IpAddr>,
}

impl ExchangeRules {
    /// Binance's rules scaled down ([`BINANCE_LIMITS_DOC`], [`BINANCE_WS_DOC`]):
    /// 6 000 request weight per minute → 120; 418 bans "from 2 minutes to 3 days",
    /// escalating for repeat offenders → 10 s doubling up to 600 s; 300 connections
    /// per 5 minutes per IP → 10 per minute; 5 incoming messages per second per
    /// connection (kept as published).
    pub fn binance() -> Self {
        Self {
            request_weight_limit: 120,
            request_window_seconds: 60,
            ban_base_seconds: 10,
            ban_max_seconds: 600,
            ws_connect_limit: 10,
            ws_connect_window_seconds: 60,
            ws_inbound_messages_per_second: 5,
            geo_restricted_ips: Vec::new(),
            waf_blocked_ips: Vec::new(),
        }
    }

    /// The rate-budget limits that keep a proxy under these rules
    /// (`proxybus_shared::budget`): the same weight and connect limits and windows,
    /// weight read from `X-MBX-USED-WEIGHT-1M`, the default headroom.
    pub fn budget_limits(&self) -> proxybus_shared::budget::BudgetLimits {
        proxybus_shared::budget::BudgetLimits {
            request_weight_limit: self.request_weight_limit,
            request_window_seconds: self.request_window_seconds,
            weight_header: proxybus_shared::budget::BINANCE_WEIGHT_HEADER.into(),
            ws_connect_limit: self.ws_connect_limit,
            ws_connect_window_seconds: self.ws_connect_window_seconds,
            ..proxybus_shared::budget::BudgetLimits::default()
        }
    }

    /// Coinbase Exchange's rules scaled down ([`COINBASE_REST_DOC`], [`COINBASE_WS_DOC`]):
    /// public REST 10 requests per second per IP → 5 (each request weighs 1), no
    /// bans; websocket 8 connects per second per IP → 4; 100 client messages per
    /// second → 20.
    pub fn coinbase() -> Self {
        Self {
            request_weight_limit: 5,
            request_window_seconds: 1,
            ban_base_seconds: 0,
            ban_max_seconds: 0,
            ws_connect_limit: 4,
            ws_connect_window_seconds: 1,
            ws_inbound_messages_per_second: 20,
            geo_restricted_ips: Vec::new(),
            waf_blocked_ips: Vec::new(),
        }
    }
}

/// What the exchange does with a request or handshake from one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served; `used_weight` is the IP's weight in the current window, this request included.
    Allow {
        /// Weight used in the window.
        used_weight: u32,
    },
    /// 429: over the limit; come back after `retry_after_seconds`.
    RateLimited {
        /// Seconds to the end of the window.
        retry_after_seconds: u64,
        /// Weight used in the window.
        used_weight: u32,
    },
    /// 418: banned for continuing after a 429.
    Banned {
        /// Seconds left of the ban.
        retry_after_seconds: u64,
    },
    /// 451: the source IP is in a restricted location.
    GeoRestricted,
    /// 403: the web application firewall blocks the source IP.
    WafBlocked,
}

impl Verdict {
    /// The HTTP status of the verdict (200 when allowed).
    pub fn status(self) -> u16 {
        match self {
            Verdict::Allow { .. } => 200,
            Verdict::RateLimited { .. } => 429,
            Verdict::Banned { .. } => 418,
            Verdict::GeoRestricted => 451,
            Verdict::WafBlocked => 403,
        }
    }

    /// `Retry-After` seconds, for 429 and 418.
    pub fn retry_after_seconds(self) -> Option<u64> {
        match self {
            Verdict::RateLimited { retry_after_seconds, .. } | Verdict::Banned { retry_after_seconds } => {
                Some(retry_after_seconds)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct IpState {
    weight_window: u64,
    used_weight: u32,
    connect_window: u64,
    connects: u32,
    /// After a 429: until when the IP should stay away.
    back_off_until: Option<Instant>,
    banned_until: Option<Instant>,
    bans: u32,
}

/// Per-IP state of one exchange's rules; windows are fixed and aligned to the
/// limiter's start, as Binance's minute counters are aligned to the minute.
#[derive(Debug)]
pub struct Limiter {
    rules: ExchangeRules,
    started: Instant,
    ips: Mutex<HashMap<IpAddr, IpState>>,
}

fn window_of(started: Instant, now: Instant, seconds: u64) -> (u64, Instant) {
    let length = Duration::from_secs(seconds.max(1));
    let index = (now.saturating_duration_since(started).as_nanos() / length.as_nanos()) as u64;
    (index, started + length * (index as u32 + 1))
}

fn seconds_until(now: Instant, until: Instant) -> u64 {
    until.saturating_duration_since(now).as_secs_f64().ceil().max(1.0) as u64
}

impl Limiter {
    /// A limiter enforcing `rules`, its windows starting at `started`.
    pub fn new(rules: ExchangeRules, started: Instant) -> Self {
        Self { rules, started, ips: Mutex::new(HashMap::new()) }
    }

    /// The rules it enforces.
    pub fn rules(&self) -> &ExchangeRules {
        &self.rules
    }

    /// The verdicts that do not depend on counting: WAF (403), location (451), a running ban (418).
    fn standing(&self, ip: IpAddr, state: &IpState, now: Instant) -> Option<Verdict> {
        if self.rules.waf_blocked_ips.contains(&ip) {
            return Some(Verdict::WafBlocked);
        }
        if self.rules.geo_restricted_ips.contains(&ip) {
            return Some(Verdict::GeoRestricted);
        }
        match state.banned_until {
            Some(until) if until > now => Some(Verdict::Banned { retry_after_seconds: seconds_until(now, until) }),
            _ => None,
        }
    }

    /// The verdict on a REST request of `weight` from `ip` at `now`, counted.
    ///
    /// Order: WAF 403, location 451, running ban 418; then a request sent while a
    /// 429's `Retry-After` runs starts a new ban (418, doubling per ban, when bans are
    /// on); then the weight window: over the limit is 429 until the window ends.
    pub fn check_request(&self, ip: IpAddr, weight: u32, now: Instant) -> Verdict {
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        let state = ips.entry(ip).or_default();
        if let Some(verdict) = self.standing(ip, state, now) {
            return verdict;
        }
        let (window, window_end) = window_of(self.started, now, self.rules.request_window_seconds);
        if state.weight_window != window {
            state.weight_window = window;
            state.used_weight = 0;
        }
        if state.back_off_until.is_some_and(|until| until > now) {
            if self.rules.ban_base_seconds == 0 {
                return Verdict::RateLimited {
                    retry_after_seconds: seconds_until(now, window_end),
                    used_weight: state.used_weight,
                };
            }
            state.bans += 1;
            let doubling = 1u64 << (state.bans - 1).min(30);
            let ban = self.rules.ban_base_seconds.saturating_mul(doubling).min(self.rules.ban_max_seconds.max(1));
            let until = now + Duration::from_secs(ban);
            state.banned_until = Some(until);
            state.back_off_until = None;
            return Verdict::Banned { retry_after_seconds: ban };
        }
        if state.used_weight.saturating_add(weight) > self.rules.request_weight_limit {
            state.back_off_until = Some(window_end);
            return Verdict::RateLimited {
                retry_after_seconds: seconds_until(now, window_end),
                used_weight: state.used_weight,
            };
        }
        state.used_weight += weight;
        Verdict::Allow { used_weight: state.used_weight }
    }

    /// The verdict on a websocket handshake from `ip` at `now`, counted: WAF 403,
    /// location 451, running ban 418, then at most `ws_connect_limit` handshakes
    /// per connect window (429 with the seconds to the window's end).
    pub fn check_ws_connect(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
        let state = ips.entry(ip).or_default();
        if let Some(verdict) = self.standing(ip, state, now) {
            return verdict;
        }
        let (window, window_end) = window_of(self.started, now, self.rules.ws_connect_window_seconds);
        if state.connect_window != window {
            state.connect_window = window;
            state.connects = 0;
        }
        if state.connects >= self.rules.ws_connect_limit {
            return Verdict::RateLimited {
                retry_after_seconds: seconds_until(now, window_end),
                used_weight: state.used_weight,
            };
        }
        state.connects += 1;
        Verdict::Allow { used_weight: state.used_weight }
    }
}

/// Messages a client sent on one websocket in the current second.
#[derive(Debug)]
pub struct MessageRate {
    limit: u32,
    second_started: Instant,
    count: u32,
}

impl MessageRate {
    /// At most `per_second` messages per second, counted from `now`.
    pub fn new(per_second: u32, now: Instant) -> Self {
        Self { limit: per_second, second_started: now, count: 0 }
    }

    /// Counts one message at `now`; false when it is over the limit (close with 1008).
    pub fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.second_started) >= Duration::from_secs(1) {
            self.second_started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn small() -> ExchangeRules {
        ExchangeRules {
            request_weight_limit: 10,
            ban_base_seconds: 10,
            ban_max_seconds: 25,
            ..ExchangeRules::binance()
        }
    }

    #[test]
    fn weight_over_the_window_is_429_until_the_window_ends_and_counts_per_ip() {
        let start = Instant::now();
        let limiter = Limiter::new(small(), start);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(limiter.check_request(ip(2), 5, at(0)), Verdict::Allow { used_weight: 5 });
        assert_eq!(limiter.check_request(ip(2), 5, at(1)), Verdict::Allow { used_weight: 10 });
        assert_eq!(
            limiter.check_request(ip(2), 1, at(20)),
            Verdict::RateLimited { retry_after_seconds: 40, used_weight: 10 }
        );
        assert_eq!(limiter.check_request(ip(3), 1, at(20)), Verdict::Allow { used_weight: 1 }, "another IP");
        assert_eq!(limiter.check_request(ip(2), 1, at(60)), Verdict::Allow { used_weight: 1 }, "a new window");
    }

    #[test]
    fn continuing_after_a_429_is_a_418_ban_that_doubles_up_to_the_cap() {
        let start = Instant::now();
        let limiter = Limiter::new(small(), start);
        let at = |s: u64| start + Duration::from_secs(s);
        limiter.check_request(ip(2), 10, at(0));
        assert_eq!(limiter.check_request(ip(2), 1, at(1)).status(), 429);
        assert_eq!(limiter.check_request(ip(2), 1, at(2)), Verdict::Banned { retry_after_seconds: 10 });
        assert_eq!(limiter.check_request(ip(2), 1, at(5)), Verdict::Banned { retry_after_seconds: 7 }, "still banned");
        // After the ban and a new window: over again, and again → 20 s, then capped at 25 s.
        limiter.check_request(ip(2), 10, at(60));
        assert_eq!(limiter.check_request(ip(2), 1, at(61)).status(), 429);
        assert_eq!(limiter.check_request(ip(2), 1, at(61)), Verdict::Banned { retry_after_seconds: 20 });
        limiter.check_request(ip(2), 10, at(120));
        assert_eq!(limiter.check_request(ip(2), 1, at(121)).status(), 429);
        assert_eq!(limiter.check_request(ip(2), 1, at(121)), Verdict::Banned { retry_after_seconds: 25 });
    }

    #[test]
    fn backing_off_as_told_avoids_the_ban() {
        let start = Instant::now();
        let limiter = Limiter::new(small(), start);
        limiter.check_request(ip(2), 10, start);
        let Verdict::RateLimited { retry_after_seconds, .. } = limiter.check_request(ip(2), 1, start) else {
            panic!("429 expected")
        };
        let later = start + Duration::from_secs(retry_after_seconds);
        assert_eq!(limiter.check_request(ip(2), 1, later), Verdict::Allow { used_weight: 1 });
    }

    #[test]
    fn without_bans_a_request_during_the_back_off_is_429_again() {
        let start = Instant::now();
        let limiter = Limiter::new(ExchangeRules { request_weight_limit: 1, ..ExchangeRules::coinbase() }, start);
        limiter.check_request(ip(2), 1, start);
        assert_eq!(limiter.check_request(ip(2), 1, start).status(), 429);
        assert_eq!(limiter.check_request(ip(2), 1, start).status(), 429);
    }

    #[test]
    fn geo_and_waf_lists_refuse_only_their_ips() {
        let rules = ExchangeRules { geo_restricted_ips: vec![ip(3)], waf_blocked_ips: vec![ip(4)], ..small() };
        let now = Instant::now();
        let limiter = Limiter::new(rules, now);
        assert_eq!(limiter.check_request(ip(3), 1, now), Verdict::GeoRestricted);
        assert_eq!(limiter.check_ws_connect(ip(3), now).status(), 451);
        assert_eq!(limiter.check_request(ip(4), 1, now), Verdict::WafBlocked);
        assert_eq!(limiter.check_ws_connect(ip(4), now).status(), 403);
        assert_eq!(limiter.check_request(ip(5), 1, now).status(), 200);
    }

    #[test]
    fn websocket_connects_per_window_per_ip() {
        let start = Instant::now();
        let rules = ExchangeRules { ws_connect_limit: 2, ws_connect_window_seconds: 10, ..small() };
        let limiter = Limiter::new(rules, start);
        assert_eq!(limiter.check_ws_connect(ip(2), start).status(), 200);
        assert_eq!(limiter.check_ws_connect(ip(2), start).status(), 200);
        assert_eq!(limiter.check_ws_connect(ip(2), start + Duration::from_secs(3)).retry_after_seconds(), Some(7));
        assert_eq!(limiter.check_ws_connect(ip(6), start).status(), 200, "another IP");
        assert_eq!(limiter.check_ws_connect(ip(2), start + Duration::from_secs(10)).status(), 200);
    }

    #[test]
    fn inbound_messages_over_the_rate_are_refused_within_one_second() {
        let start = Instant::now();
        let mut rate = MessageRate::new(5, start);
        assert!((0..5).all(|_| rate.allow(start)));
        assert!(!rate.allow(start + Duration::from_millis(500)));
        assert!(rate.allow(start + Duration::from_secs(1)), "a new second");
    }
}
