//! The health model of proxybus: the one set of rules that the aggregator, the
//! pool service, the resolver, the client library and the CLI apply, so that no two
//! parts judge a proxy differently. `docs/health.md` states them as a table.
//!
//! # Three parties
//! A failed outcome is about exactly one party ([`attribute`]):
//! - **the proxy** ([`Attribution::ProxyFault`]): `timeout`, `refused`, `dns`,
//!   `tls`, `proxy_auth` (its 407), its own 5xx answer to `CONNECT` (reported as
//!   `refused` or `other` without a status), a tunnel dropped without a websocket
//!   close frame (close code 1006 or none). These count toward ejecting the proxy
//!   everywhere (Envoy outlier detection, [`HealthPolicy::consecutive_failures`]).
//! - **an exchange's verdict on the proxy's IP** ([`Attribution::ExchangeVerdict`]):
//!   403, 418, 429, 451, a refused websocket handshake, websocket close 1008
//!   (policy violation) or 1013 (try again later). These bar the proxy **for that
//!   exchange only** ([`HealthPolicy::judge`]) and never eject it.
//! - **the exchange's own trouble** ([`Attribution::ExchangeTrouble`]): its 5xx,
//!   websocket close 1001 (going away), 1011, 1012 (service restart), 1014. Costs
//!   the proxy nothing.
//!
//! Anything else that failed but says nothing about either (another 4xx, a normal
//! or protocol close) is [`Attribution::Inconclusive`]: counted, never judged.
//!
//! # As of now
//! A stored record keeps what its last change left. [`expire`] / [`as_of`] end
//! an ejection or bar whose time has come; [`usable_for`] says whether a proxy may
//! be handed out for an exchange at a moment; [`is_newer`] says which of two
//! records of one proxy wins.
//!
//! # Examples
//! ```
//! use proxybus_shared::health::{Attribution, Verdict, attribute_failure};
//! use proxybus_shared::ErrorKind;
//! assert_eq!(attribute_failure(Some(ErrorKind::Timeout), None, None), Attribution::ProxyFault);
//! assert_eq!(attribute_failure(Some(ErrorKind::Http403), Some(403), None), Attribution::ExchangeVerdict(Verdict::Refused));
//! assert_eq!(attribute_failure(Some(ErrorKind::WsClosed), None, Some(1013)), Attribution::ExchangeVerdict(Verdict::RateLimited));
//! assert_eq!(attribute_failure(Some(ErrorKind::Http5xx), Some(503), None), Attribution::ExchangeTrouble);
//! ```

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Issues, Validate, key};
use crate::messages::{
    ErrorKind, ExchangeHealth, ExchangeState, FeedbackPhase, HealthState, HealthStats, OperatorAction, OperatorControl,
    OperatorEvent, ProxyFeedback,
};
use crate::subject::ExchangeId;

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Websocket close codes the model knows (RFC 6455 §7.4.1 and the IANA
/// "WebSocket Close Code Number Registry").
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, maintenance).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A close frame without a status code (never sent on the wire).
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame (never sent on the wire).
    pub const ABNORMAL: u16 = 1006;
    /// The peer's policy was violated (exchanges use it for abuse and bans).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The server met an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later: the server is overloaded or rate-limits the client.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A gateway in front of the server got an invalid answer.
    pub const BAD_GATEWAY: u16 = 1014;
    /// The TLS handshake failed (never sent on the wire).
    pub const TLS_HANDSHAKE: u16 = 1015;
}

/// Thresholds and durations of the health model. Every one is a setting
/// (`PROXYBUS_AGGREGATOR_HEALTH__{NAME}`, the pool's `PROXYBUS_POOL_HEALTH__RULES__{NAME}`);
/// the defaults and where each comes from are in `docs/health.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthPolicy {
    /// Proxy faults in a row that eject a proxy (default 5, Envoy's `consecutive_5xx`).
    pub consecutive_failures: u32,
    /// Proxy faults in a row that make a proxy `degraded` (default 2).
    pub degraded_consecutive_failures: u32,
    /// A proxy whose time-decayed success rate falls below this is ejected, once the
    /// decayed volume reaches `success_rate_min_volume` (default 0.5).
    pub ejection_success_rate: f64,
    /// A proxy whose decayed success rate falls below this is `degraded` (default 0.9).
    pub degraded_success_rate: f64,
    /// Decayed number of outcomes before the success rate counts (default 20,
    /// Envoy's `success_rate_request_volume` is 100 per interval).
    pub success_rate_min_volume: f64,
    /// Half-life of an outcome's weight in the success rate, in milliseconds (default 60 000).
    pub success_rate_half_life_ms: u64,
    /// Ejection time of the first ejection; the n-th lasts n times as long
    /// (default 30 000 ms, Envoy's `base_ejection_time`).
    pub base_ejection_time_ms: u64,
    /// Longest ejection (default 300 000 ms, Envoy's `max_ejection_time`).
    pub max_ejection_time_ms: u64,
    /// Largest share of a region's inventory that may be ejected at once, in percent;
    /// at least one proxy of a region can always be ejected (default 50; Envoy's
    /// `max_ejection_percent`, "will eject at least one host regardless of the value").
    pub max_ejection_percent: u32,
    /// Successes in a row that end the probation after an ejection (default 3).
    pub probation_successes: u32,
    /// Cool-down of an exchange after `http_429` or close 1013 without
    /// `retry_after_seconds` (default 60 000 ms).
    pub default_cooldown_ms: u64,
    /// Longest cool-down, whatever `retry_after_seconds` says (default 86 400 000 ms, a day).
    pub max_cooldown_ms: u64,
    /// First `http_418` ban of a proxy for an exchange without `retry_after_seconds`;
    /// each further one doubles it (default 120 000 ms: Binance bans "from 2 minutes").
    pub ban_418_base_ms: u64,
    /// Longest `http_418` ban, also the cap of its `retry_after_seconds`
    /// (default 259 200 000 ms: Binance bans "to 3 days").
    pub ban_418_max_ms: u64,
    /// How long `http_451` (restricted location, RFC 7725) bans a proxy for that
    /// exchange; a longer `retry_after_seconds` wins (default 604 800 000 ms, a week).
    pub ban_451_ms: u64,
    /// `http_403`s (or refused websocket handshakes, or closes 1008) in a row from one
    /// exchange that bar the proxy for it (default 3).
    pub refusals_to_bar: u32,
    /// How long such a bar lasts without `retry_after_seconds` (default 1 800 000 ms:
    /// Bybit bans an IP "usually 30 minutes").
    pub ban_403_ms: u64,
    /// Weight of a new latency sample in the latency EWMA (default 0.3).
    pub latency_ewma_alpha: f64,
    /// Passing probes (`ProxyFeedback::probe`) in a row that end an ejection before
    /// its time; the proxy then serves on probation (default 1: Envoy's
    /// `successful_active_health_check_uneject_host`, true by default, unejects a
    /// host on its first passing active health check).
    pub probe_readmit_successes: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            degraded_consecutive_failures: 2,
            ejection_success_rate: 0.5,
            degraded_success_rate: 0.9,
            success_rate_min_volume: 20.0,
            success_rate_half_life_ms: 60_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_percent: 50,
            probation_successes: 3,
            default_cooldown_ms: MINUTE_MS,
            max_cooldown_ms: DAY_MS,
            ban_418_base_ms: 2 * MINUTE_MS,
            ban_418_max_ms: 3 * DAY_MS,
            ban_451_ms: 7 * DAY_MS,
            refusals_to_bar: 3,
            ban_403_ms: 30 * MINUTE_MS,
            latency_ewma_alpha: 0.3,
            probe_readmit_successes: 1,
        }
    }
}

/// Who a failed outcome is about (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// Not an outcome: `connect_start`, or a `disconnected` that reports success.
    NotAnOutcome,
    /// The stage succeeded.
    Success,
    /// The proxy failed: counts toward its ejection everywhere.
    ProxyFault,
    /// The exchange refused the proxy's IP: bars it for that exchange only.
    ExchangeVerdict(Verdict),
    /// The exchange itself is in trouble: costs the proxy nothing.
    ExchangeTrouble,
    /// A failure that says nothing about the proxy or the exchange's view of it.
    Inconclusive,
}

/// What an exchange said about a proxy's IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `http_429` or close 1013: slow down (a cool-down).
    RateLimited,
    /// `http_418`: Binance's IP ban for ignoring 429s (a ban that grows with each repeat).
    IpBanned,
    /// `http_451`: the IP's location is restricted (a long ban).
    Restricted,
    /// `http_403`, a refused websocket handshake or close 1008: access denied (a bar
    /// after [`HealthPolicy::refusals_to_bar`] in a row).
    Refused,
}

/// A bar of a proxy for one exchange: its state and how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// `cooldown` or `banned`.
    pub state: ExchangeState,
    /// How long, from the outcome's time.
    pub duration: Duration,
}

/// The error kind an event stands for: its `error_kind`, else the kind of its
/// `status_code`, else `other`.
pub fn error_kind_of(event: &ProxyFeedback) -> ErrorKind {
    event.error_kind.or_else(|| event.status_code.and_then(ErrorKind::from_status)).unwrap_or(ErrorKind::Other)
}

/// Who the outcome `event` reports is about.
pub fn attribute(event: &ProxyFeedback) -> Attribution {
    let outcome = match event.phase {
        FeedbackPhase::Connected | FeedbackPhase::Failed | FeedbackPhase::Request => true,
        FeedbackPhase::Disconnected => !event.success,
        FeedbackPhase::ConnectStart => false,
    };
    match (outcome, event.success) {
        (false, _) => Attribution::NotAnOutcome,
        (true, true) => Attribution::Success,
        (true, false) => attribute_failure(event.error_kind, event.status_code, event.ws_close_code),
    }
}

/// Who a failure of `kind` (else of HTTP `status`, else of websocket close `close`)
/// is about. A kind names the party more precisely than a status: `refused` with
/// status 502 is the proxy's own answer to `CONNECT`.
pub fn attribute_failure(kind: Option<ErrorKind>, status: Option<u16>, close: Option<u16>) -> Attribution {
    match kind {
        Some(ErrorKind::Timeout | ErrorKind::Refused | ErrorKind::Dns | ErrorKind::Tls | ErrorKind::ProxyAuth) => {
            Attribution::ProxyFault
        }
        Some(ErrorKind::Http403 | ErrorKind::WsHandshakeRefused) => Attribution::ExchangeVerdict(Verdict::Refused),
        Some(ErrorKind::Http418) => Attribution::ExchangeVerdict(Verdict::IpBanned),
        Some(ErrorKind::Http429) => Attribution::ExchangeVerdict(Verdict::RateLimited),
        Some(ErrorKind::Http451) => Attribution::ExchangeVerdict(Verdict::Restricted),
        Some(ErrorKind::Http5xx) => Attribution::ExchangeTrouble,
        Some(ErrorKind::WsClosed) => attribute_close(close),
        Some(ErrorKind::Other) | None => match (status, close) {
            (Some(407), _) => Attribution::ProxyFault,
            (Some(status), _) => match ErrorKind::from_status(status) {
                Some(ErrorKind::Other) | None => Attribution::Inconclusive,
                kind => attribute_failure(kind, None, None),
            },
            (None, Some(close)) => attribute_close(Some(close)),
            (None, None) => Attribution::ProxyFault,
        },
    }
}

/// Who a websocket closed with `close` (none: no close frame) is about.
pub fn attribute_close(close: Option<u16>) -> Attribution {
    use close_code::*;
    match close {
        None | Some(ABNORMAL | TLS_HANDSHAKE) => Attribution::ProxyFault,
        Some(POLICY_VIOLATION) => Attribution::ExchangeVerdict(Verdict::Refused),
        Some(TRY_AGAIN_LATER) => Attribution::ExchangeVerdict(Verdict::RateLimited),
        Some(GOING_AWAY | INTERNAL_ERROR | SERVICE_RESTART | BAD_GATEWAY) => Attribution::ExchangeTrouble,
        Some(_) => Attribution::Inconclusive,
    }
}

impl HealthPolicy {
    /// How long the `ejections`-th ejection lasts: `base × ejections`, capped.
    pub fn ejection_time(&self, ejections: u32) -> Duration {
        let millis = self.base_ejection_time_ms.saturating_mul(u64::from(ejections.max(1)));
        Duration::from_millis(millis.min(self.max_ejection_time_ms))
    }

    /// How many of a region's `region_size` proxies may be ejected at once:
    /// `max_ejection_percent` of them, rounded down, but never fewer than one
    /// (Envoy outlier detection's `max_ejection_percent`).
    pub fn max_ejected(&self, region_size: usize) -> usize {
        (region_size.saturating_mul(self.max_ejection_percent as usize) / 100).max(1)
    }

    /// Whether one more proxy of a region of `region_size` proxies, `ejected_now` of
    /// them ejected, may be ejected.
    pub fn may_eject(&self, region_size: usize, ejected_now: usize) -> bool {
        ejected_now < self.max_ejected(region_size)
    }

    /// Cool-down after `http_429` / close 1013: `Retry-After` (capped at
    /// `max_cooldown_ms`), else `default_cooldown_ms`.
    pub fn cooldown(&self, retry_after_seconds: Option<u64>) -> Duration {
        let millis = retry_after_seconds.map_or(self.default_cooldown_ms, |s| s.saturating_mul(SECOND_MS));
        Duration::from_millis(millis.min(self.max_cooldown_ms))
    }

    /// Ban after the `repeat`-th `http_418` (1 for the first): `Retry-After` capped at
    /// `ban_418_max_ms`, else `ban_418_base_ms` doubled for each repeat, capped; never
    /// shorter than a 429's cool-down with the same `Retry-After`.
    pub fn ip_ban(&self, repeat: u32, retry_after_seconds: Option<u64>) -> Duration {
        let millis = match retry_after_seconds {
            Some(seconds) => seconds.saturating_mul(SECOND_MS),
            None => self.ban_418_base_ms.saturating_mul(1_u64 << repeat.saturating_sub(1).min(40)),
        };
        Duration::from_millis(millis.min(self.ban_418_max_ms)).max(self.cooldown(retry_after_seconds))
    }

    /// Ban after `http_451`: `ban_451_ms`, or a longer `Retry-After`.
    pub fn restricted_ban(&self, retry_after_seconds: Option<u64>) -> Duration {
        let given = retry_after_seconds.map_or(0, |s| s.saturating_mul(SECOND_MS));
        Duration::from_millis(self.ban_451_ms.max(given))
    }

    /// Applies an exchange's verdict to that exchange's part of a proxy's record:
    /// counts it (`refusals_in_a_row`, `ip_bans`) and returns the bar it earns, if any.
    pub fn judge(
        &self,
        exchange: &mut ExchangeHealth,
        verdict: Verdict,
        retry_after_seconds: Option<u64>,
    ) -> Option<Bar> {
        match verdict {
            Verdict::RateLimited => {
                Some(Bar { state: ExchangeState::Cooldown, duration: self.cooldown(retry_after_seconds) })
            }
            Verdict::IpBanned => {
                exchange.ip_bans = exchange.ip_bans.saturating_add(1);
                Some(Bar { state: ExchangeState::Banned, duration: self.ip_ban(exchange.ip_bans, retry_after_seconds) })
            }
            Verdict::Restricted => {
                Some(Bar { state: ExchangeState::Banned, duration: self.restricted_ban(retry_after_seconds) })
            }
            Verdict::Refused => {
                exchange.refusals_in_a_row = exchange.refusals_in_a_row.saturating_add(1);
                (exchange.refusals_in_a_row >= self.refusals_to_bar).then(|| Bar {
                    state: ExchangeState::Banned,
                    duration: retry_after_seconds.map_or(Duration::from_millis(self.ban_403_ms), |s| {
                        Duration::from_secs(s).min(Duration::from_millis(self.ban_418_max_ms))
                    }),
                })
            }
        }
    }
}

/// Records a success with an exchange: its refusals in a row start over.
pub fn exchange_success(exchange: &mut ExchangeHealth) {
    exchange.refusals_in_a_row = 0;
}

/// Puts `bar` on an exchange from `at` on. A ban outranks a cool-down, and neither
/// is ever shortened by a later, shorter one.
pub fn apply_bar(exchange: &mut ExchangeHealth, bar: Bar, at: DateTime<Utc>) {
    let until = at + delta(bar.duration);
    let keep_ban = exchange.state == ExchangeState::Banned
        && bar.state == ExchangeState::Cooldown
        && exchange.banned_until.is_none_or(|current| current > at);
    if !keep_ban {
        exchange.state = bar.state;
    }
    exchange.banned_until =
        Some(exchange.banned_until.filter(|current| *current > at).map_or(until, |current| current.max(until)));
}

/// What [`expire`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// The ejection ended (the proxy is now `degraded`, on probation).
    pub ejection: bool,
    /// Some exchange's cool-down or ban ended.
    pub bars: bool,
    /// An operator's ban or drain with a duration ran out.
    pub controls: bool,
}

impl Expired {
    /// Whether anything ended.
    pub fn any(self) -> bool {
        self.ejection || self.bars || self.controls
    }
}

/// Ends, in `stats`, an ejection and every exchange bar whose time is at or before
/// `now`: an ended ejection leaves the proxy `degraded` (on probation), an ended bar
/// leaves the exchange `healthy`.
pub fn expire(stats: &mut HealthStats, now: DateTime<Utc>) -> Expired {
    let mut expired = Expired::default();
    if stats.state == HealthState::Ejected && stats.ejected_until.is_some_and(|until| until <= now) {
        stats.state = HealthState::Degraded;
        stats.ejected_until = None;
        expired.ejection = true;
    }
    for exchange in stats.exchanges.values_mut() {
        if exchange.state != ExchangeState::Healthy && exchange.banned_until.is_some_and(|until| until <= now) {
            exchange.state = ExchangeState::Healthy;
            exchange.banned_until = None;
            expired.bars = true;
        }
    }
    let controls = stats.operator_controls.len();
    stats.operator_controls.retain(|control| control.until.is_none_or(|until| until > now));
    expired.controls = stats.operator_controls.len() != controls;
    expired
}

/// Whether [`expire`] at `now` would end anything in `stats` (without copying them).
pub fn has_expired(stats: &HealthStats, now: DateTime<Utc>) -> bool {
    let ejection = stats.state == HealthState::Ejected && stats.ejected_until.is_some_and(|until| until <= now);
    ejection
        || stats.exchanges.values().any(|exchange| {
            exchange.state != ExchangeState::Healthy && exchange.banned_until.is_some_and(|until| until <= now)
        })
        || stats.operator_controls.iter().any(|control| control.until.is_some_and(|until| until <= now))
}

/// `stats` as they stand at `now` (see [`expire`]).
pub fn as_of(stats: &HealthStats, now: DateTime<Utc>) -> HealthStats {
    let mut copy = stats.clone();
    expire(&mut copy, now);
    copy
}

/// Whether the proxy of `stats` is ejected at `now` (an ejection without an end is).
pub fn is_ejected(stats: &HealthStats, now: DateTime<Utc>) -> bool {
    stats.state == HealthState::Ejected && stats.ejected_until.is_none_or(|until| until > now)
}

/// Whether the proxy of `stats` is in a cool-down or ban for `exchange` at `now`.
pub fn is_barred(stats: &HealthStats, exchange: &ExchangeId, now: DateTime<Utc>) -> bool {
    stats.exchanges.get(exchange).is_some_and(|ex| is_exchange_barred(ex, now))
}

/// Whether one exchange's part of a record bars the proxy at `now`.
pub fn is_exchange_barred(exchange: &ExchangeHealth, now: DateTime<Utc>) -> bool {
    exchange.state != ExchangeState::Healthy && exchange.banned_until.is_none_or(|until| until > now)
}

/// Whether the proxy of `stats` may be handed out anew for `exchange` at `now`: not
/// ejected, not barred for that exchange, and no operator's ban, disable or drain
/// covers it ([`operator_control`]). `degraded` proxies may.
pub fn usable_for(stats: &HealthStats, exchange: &ExchangeId, now: DateTime<Utc>) -> bool {
    may_keep(stats, exchange, now) && operator_control(stats, OperatorAction::Drain, exchange, now).is_none()
}

/// Whether a lease already held on the proxy of `stats` for `exchange` may go on
/// (be renewed, or served again from a cache) at `now`: as [`usable_for`], except
/// that a drain does not end it — a drain stops new leases while existing ones finish.
pub fn may_keep(stats: &HealthStats, exchange: &ExchangeId, now: DateTime<Utc>) -> bool {
    !is_ejected(stats, now)
        && !is_barred(stats, exchange, now)
        && operator_control(stats, OperatorAction::Ban, exchange, now).is_none()
        && operator_control(stats, OperatorAction::Disable, exchange, now).is_none()
}

/// The operator's control of kind `action` (`ban`, `drain` or `disable`) in force on
/// the proxy of `stats` for `exchange` at `now`: one about that exchange or about every
/// exchange, whose `until` is later (or none).
pub fn operator_control<'a>(
    stats: &'a HealthStats,
    action: OperatorAction,
    exchange: &ExchangeId,
    now: DateTime<Utc>,
) -> Option<&'a OperatorControl> {
    stats.operator_controls.iter().find(|control| {
        control.action == action
            && control.exchange_id.as_ref().is_none_or(|only| only == exchange)
            && control.until.is_none_or(|until| until > now)
    })
}

/// Whether an operator's ban or disable of every exchange holds the proxy of `stats` out at `now`.
pub fn is_operator_excluded(stats: &HealthStats, now: DateTime<Utc>) -> bool {
    stats.operator_controls.iter().any(|control| {
        matches!(control.action, OperatorAction::Ban | OperatorAction::Disable)
            && control.exchange_id.is_none()
            && control.until.is_none_or(|until| until > now)
    })
}

/// Why an operator event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorEventError {
    /// The reason is empty or too long.
    #[error("an operator event needs a reason of 1 to {MAX_REASON_LEN} characters")]
    Reason,
    /// The operator's name is empty or too long.
    #[error("an operator event needs an operator name of 1 to {MAX_OPERATOR_LEN} characters")]
    Operator,
    /// `disable`/`enable` named an exchange.
    #[error("{0} is about the whole proxy: it takes no exchange")]
    ExchangeNotAllowed(OperatorAction),
    /// A duration was given to an action that does not last (`unban`, `undrain`, `disable`, `enable`).
    #[error("{0} takes no duration (only ban and drain do)")]
    DurationNotAllowed(OperatorAction),
    /// A duration of zero.
    #[error("a duration must be at least one second")]
    ZeroDuration,
}

/// Longest operator reason, in characters.
pub const MAX_REASON_LEN: usize = 512;
/// Longest operator name, in characters.
pub const MAX_OPERATOR_LEN: usize = 128;

/// Checks an operator event before it is published or folded.
pub fn validate_operator_event(event: &OperatorEvent) -> Result<(), OperatorEventError> {
    let reason = event.reason.trim();
    if reason.is_empty() || event.reason.chars().count() > MAX_REASON_LEN {
        return Err(OperatorEventError::Reason);
    }
    if event.operator.trim().is_empty() || event.operator.chars().count() > MAX_OPERATOR_LEN {
        return Err(OperatorEventError::Operator);
    }
    if event.exchange_id.is_some() && !event.action.takes_exchange() {
        return Err(OperatorEventError::ExchangeNotAllowed(event.action));
    }
    match event.duration_seconds {
        Some(_) if !event.action.takes_duration() => Err(OperatorEventError::DurationNotAllowed(event.action)),
        Some(0) => Err(OperatorEventError::ZeroDuration),
        _ => Ok(()),
    }
}

/// Applies an operator's event, stored at stream sequence `seq` at stream time `at`,
/// to the proxy's record: `ban`/`drain`/`disable` put a control in force (replacing
/// one of the same kind and exchange), lasting `duration_seconds` from `at` or until
/// lifted; `unban`/`undrain` lift that kind's controls of the exchange named, or all
/// of them when none is named; `enable` lifts a disable. The event becomes
/// `last_operator_action` either way.
pub fn apply_operator(stats: &mut HealthStats, event: &OperatorEvent, seq: u64, at: DateTime<Utc>) {
    let control = OperatorControl {
        action: event.action,
        exchange_id: event.exchange_id.clone(),
        until: event.duration_seconds.map(|seconds| at + delta(Duration::from_secs(seconds))),
        reason: crate::redact_text(&event.reason),
        operator: crate::redact_text(&event.operator),
        at,
        seq,
    };
    let lifts = |kind: OperatorAction| {
        move |held: &OperatorControl| {
            held.action == kind && (event.exchange_id.is_none() || held.exchange_id == event.exchange_id)
        }
    };
    match event.action {
        OperatorAction::Ban | OperatorAction::Drain | OperatorAction::Disable => {
            stats
                .operator_controls
                .retain(|held| !(held.action == control.action && held.exchange_id == control.exchange_id));
            stats.operator_controls.push(control.clone());
        }
        OperatorAction::Unban => stats.operator_controls.retain(|held| !lifts(OperatorAction::Ban)(held)),
        OperatorAction::Undrain => stats.operator_controls.retain(|held| !lifts(OperatorAction::Drain)(held)),
        OperatorAction::Enable => stats.operator_controls.retain(|held| held.action != OperatorAction::Disable),
    }
    stats.last_operator_action = Some(control);
}

/// Whether `candidate` should replace `held`, two records of one proxy: the one
/// with the later stream sequence (`last_seq`) wins; at equal sequences the later
/// `updated_at` (an expiry written without a new event); an equal record is applied
/// again harmlessly.
pub fn is_newer(candidate: &HealthStats, held: &HealthStats) -> bool {
    (candidate.last_seq, candidate.updated_at) >= (held.last_seq, held.updated_at)
}

/// `duration` as a chrono delta (saturating).
pub fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX / 2)
}

impl Validate for HealthPolicy {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "consecutive_failures"), self.consecutive_failures, 1..=1_000);
        issues.check_range(key(prefix, "degraded_consecutive_failures"), self.degraded_consecutive_failures, 1..=1_000);
        issues.check_range(key(prefix, "ejection_success_rate"), self.ejection_success_rate, 0.0..=1.0);
        issues.check_range(key(prefix, "degraded_success_rate"), self.degraded_success_rate, 0.0..=1.0);
        issues.check_range(key(prefix, "success_rate_min_volume"), self.success_rate_min_volume, 1.0..=1e9);
        issues.check_range(key(prefix, "success_rate_half_life_ms"), self.success_rate_half_life_ms, 1..=u64::MAX);
        issues.check_range(key(prefix, "base_ejection_time_ms"), self.base_ejection_time_ms, 1..=DAY_MS);
        issues.check_range(
            key(prefix, "max_ejection_time_ms"),
            self.max_ejection_time_ms,
            self.base_ejection_time_ms..=DAY_MS,
        );
        issues.check_range(key(prefix, "max_ejection_percent"), self.max_ejection_percent, 0..=100);
        issues.check_range(key(prefix, "probation_successes"), self.probation_successes, 1..=1_000);
        issues.check_range(
            key(prefix, "default_cooldown_ms"),
            self.default_cooldown_ms,
            1..=self.max_cooldown_ms.max(1),
        );
        issues.check_range(key(prefix, "ban_418_base_ms"), self.ban_418_base_ms, 1..=self.ban_418_max_ms.max(1));
        issues.check_range(key(prefix, "ban_418_max_ms"), self.ban_418_max_ms, 1..=365 * DAY_MS);
        issues.check_range(key(prefix, "ban_451_ms"), self.ban_451_ms, 1..=365 * DAY_MS);
        issues.check_range(key(prefix, "refusals_to_bar"), self.refusals_to_bar, 1..=1_000);
        issues.check_range(key(prefix, "ban_403_ms"), self.ban_403_ms, 1..=365 * DAY_MS);
        issues.check_range(key(prefix, "latency_ewma_alpha"), self.latency_ewma_alpha, 0.001..=1.0);
        issues.check_range(key(prefix, "probe_readmit_successes"), self.probe_readmit_successes, 1..=1_000);
        if self.degraded_success_rate < self.ejection_success_rate {
            issues.push(key(prefix, "degraded_success_rate"), "must not be below ejection_success_rate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.ejection_time(1), Duration::from_secs(30));
        assert_eq!(policy.ejection_time(2), Duration::from_secs(60));
        assert_eq!(policy.ejection_time(10), Duration::from_secs(300));
        assert_eq!(policy.ejection_time(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn at_least_one_proxy_of_a_region_can_always_be_ejected() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.max_ejected(1), 1, "Envoy: at least one host regardless of the percentage");
        assert_eq!(policy.max_ejected(3), 1, "3 × 50% rounds down to 1");
        assert_eq!(policy.max_ejected(4), 2);
        assert_eq!(policy.max_ejected(5), 2);
        assert!(policy.may_eject(3, 0));
        assert!(!policy.may_eject(3, 1));
        let none = HealthPolicy { max_ejection_percent: 0, ..HealthPolicy::default() };
        assert_eq!(none.max_ejected(10), 1);
    }

    #[test]
    fn durations_follow_the_exchanges_documents() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.cooldown(None), Duration::from_secs(60));
        assert_eq!(policy.cooldown(Some(7)), Duration::from_secs(7));
        assert_eq!(policy.cooldown(Some(10 * 86_400)), Duration::from_secs(86_400), "capped at a day");
        // 418: Binance bans from 2 minutes to 3 days, growing for repeat offenders.
        assert_eq!(policy.ip_ban(1, None), Duration::from_secs(120));
        assert_eq!(policy.ip_ban(2, None), Duration::from_secs(240));
        assert_eq!(policy.ip_ban(3, None), Duration::from_secs(480));
        assert_eq!(policy.ip_ban(30, None), Duration::from_secs(3 * 86_400));
        assert_eq!(policy.ip_ban(1, Some(900)), Duration::from_secs(900));
        assert_eq!(policy.ip_ban(1, Some(30 * 86_400)), Duration::from_secs(3 * 86_400), "Retry-After up to 3 days");
        let short = HealthPolicy { ban_418_base_ms: 1_000, ..HealthPolicy::default() };
        assert_eq!(short.ip_ban(1, None), short.cooldown(None), "a 418 never lasts less than a 429");
        assert_eq!(policy.restricted_ban(None), Duration::from_secs(7 * 86_400));
        assert_eq!(policy.restricted_ban(Some(60)), Duration::from_secs(7 * 86_400), "never shortened");
    }

    #[test]
    fn refusals_bar_only_after_enough_in_a_row() {
        let policy = HealthPolicy::default();
        let mut exchange = ExchangeHealth::default();
        assert_eq!(policy.judge(&mut exchange, Verdict::Refused, None), None);
        assert_eq!(policy.judge(&mut exchange, Verdict::Refused, None), None);
        exchange_success(&mut exchange);
        assert_eq!(policy.judge(&mut exchange, Verdict::Refused, None), None, "a success starts the count over");
        assert_eq!(policy.judge(&mut exchange, Verdict::Refused, None), None);
        let bar = policy.judge(&mut exchange, Verdict::Refused, None).unwrap();
        assert_eq!(bar, Bar { state: ExchangeState::Banned, duration: Duration::from_secs(1800) });
    }

    fn operator_event(action: OperatorAction, exchange: Option<&str>, seconds: Option<u64>) -> OperatorEvent {
        OperatorEvent {
            schema_version: 1,
            event_id: uuid::Uuid::new_v4(),
            proxy_id: crate::proxy_id("http://10.0.0.1:3128"),
            action,
            exchange_id: exchange.map(|e| e.parse().unwrap()),
            duration_seconds: seconds,
            reason: "maintenance at the provider".into(),
            operator: "alice".into(),
            timestamp: Utc::now(),
        }
    }

    #[test]
    fn operator_controls_bar_drain_and_lift() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc);
        let (binance, coinbase): (ExchangeId, ExchangeId) = ("binance".parse().unwrap(), "coinbase".parse().unwrap());
        let mut stats = HealthStats::new(crate::proxy_id("http://10.0.0.1:3128"), String::new(), None, at);
        apply_operator(&mut stats, &operator_event(OperatorAction::Ban, Some("binance"), Some(7200)), 1, at);
        assert!(!usable_for(&stats, &binance, at) && !may_keep(&stats, &binance, at), "a ban ends leases too");
        assert!(usable_for(&stats, &coinbase, at), "only binance");
        let later = at + TimeDelta::hours(2);
        assert!(usable_for(&stats, &binance, later), "a ban with a duration ends by itself");
        assert!(has_expired(&stats, later));
        assert!(expire(&mut stats, later).controls && stats.operator_controls.is_empty());

        apply_operator(&mut stats, &operator_event(OperatorAction::Drain, None, None), 2, at);
        assert!(!usable_for(&stats, &coinbase, later), "no new lease on a drained proxy");
        assert!(may_keep(&stats, &coinbase, later), "existing leases go on");
        apply_operator(&mut stats, &operator_event(OperatorAction::Undrain, Some("binance"), None), 3, at);
        assert!(!usable_for(&stats, &coinbase, later), "undraining one exchange does not lift a drain of all");
        apply_operator(&mut stats, &operator_event(OperatorAction::Undrain, None, None), 4, at);
        assert!(usable_for(&stats, &coinbase, later));

        apply_operator(&mut stats, &operator_event(OperatorAction::Disable, None, None), 5, at);
        assert!(!may_keep(&stats, &coinbase, later) && is_operator_excluded(&stats, later));
        assert_eq!(stats.last_operator_action.as_ref().map(|c| (c.action, c.seq)), Some((OperatorAction::Disable, 5)));
        apply_operator(&mut stats, &operator_event(OperatorAction::Enable, None, None), 6, at);
        assert!(usable_for(&stats, &coinbase, later) && stats.operator_controls.is_empty());
        assert_eq!(stats.last_operator_action.as_ref().unwrap().operator, "alice");
    }

    #[test]
    fn operator_events_are_checked() {
        let mut event = operator_event(OperatorAction::Disable, Some("binance"), None);
        assert_eq!(
            validate_operator_event(&event),
            Err(OperatorEventError::ExchangeNotAllowed(OperatorAction::Disable))
        );
        event.exchange_id = None;
        assert_eq!(validate_operator_event(&event), Ok(()));
        event.reason = "  ".into();
        assert_eq!(validate_operator_event(&event), Err(OperatorEventError::Reason));
        let unban = operator_event(OperatorAction::Unban, None, Some(60));
        assert_eq!(validate_operator_event(&unban), Err(OperatorEventError::DurationNotAllowed(OperatorAction::Unban)));
        assert_eq!(
            validate_operator_event(&operator_event(OperatorAction::Ban, None, Some(0))),
            Err(OperatorEventError::ZeroDuration)
        );
    }

    #[test]
    fn every_error_kind_and_close_code_has_its_party() {
        use Attribution::*;
        let cases = [
            (Some(ErrorKind::Timeout), None, None, ProxyFault),
            (Some(ErrorKind::Refused), Some(502), None, ProxyFault),
            (Some(ErrorKind::Dns), None, None, ProxyFault),
            (Some(ErrorKind::Tls), None, None, ProxyFault),
            (Some(ErrorKind::ProxyAuth), Some(407), None, ProxyFault),
            (Some(ErrorKind::Http403), Some(403), None, ExchangeVerdict(Verdict::Refused)),
            (Some(ErrorKind::WsHandshakeRefused), Some(400), None, ExchangeVerdict(Verdict::Refused)),
            (Some(ErrorKind::Http418), Some(418), None, ExchangeVerdict(Verdict::IpBanned)),
            (Some(ErrorKind::Http429), Some(429), None, ExchangeVerdict(Verdict::RateLimited)),
            (Some(ErrorKind::Http451), Some(451), None, ExchangeVerdict(Verdict::Restricted)),
            (Some(ErrorKind::Http5xx), Some(503), None, ExchangeTrouble),
            (Some(ErrorKind::WsClosed), None, None, ProxyFault),
            (Some(ErrorKind::WsClosed), None, Some(1006), ProxyFault),
            (Some(ErrorKind::WsClosed), None, Some(1015), ProxyFault),
            (Some(ErrorKind::WsClosed), None, Some(1008), ExchangeVerdict(Verdict::Refused)),
            (Some(ErrorKind::WsClosed), None, Some(1013), ExchangeVerdict(Verdict::RateLimited)),
            (Some(ErrorKind::WsClosed), None, Some(1001), ExchangeTrouble),
            (Some(ErrorKind::WsClosed), None, Some(1011), ExchangeTrouble),
            (Some(ErrorKind::WsClosed), None, Some(1012), ExchangeTrouble),
            (Some(ErrorKind::WsClosed), None, Some(1014), ExchangeTrouble),
            (Some(ErrorKind::WsClosed), None, Some(1000), Inconclusive),
            (Some(ErrorKind::WsClosed), None, Some(1002), Inconclusive),
            (Some(ErrorKind::WsClosed), None, Some(4001), Inconclusive),
            (Some(ErrorKind::Other), None, None, ProxyFault),
            (Some(ErrorKind::Other), Some(404), None, Inconclusive),
            (Some(ErrorKind::Other), Some(407), None, ProxyFault),
            (None, Some(503), None, ExchangeTrouble),
            (None, Some(429), None, ExchangeVerdict(Verdict::RateLimited)),
            (None, None, Some(1013), ExchangeVerdict(Verdict::RateLimited)),
        ];
        for (kind, status, close, party) in cases {
            assert_eq!(attribute_failure(kind, status, close), party, "{kind:?} {status:?} {close:?}");
        }
    }
}
