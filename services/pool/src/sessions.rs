//! Rotation plans of sessions (`ProxyRequest.session_key`): when a session that
//! keeps its proxy is due to move to another one.
//!
//! Why rotate at all: a long-lived session piles its connections onto one IP, and
//! exchanges end long connections on their own schedule — Binance cuts every
//! websocket at 24 hours ("A single connection is only valid for 24 hours; expect
//! to be disconnected at the 24 hour mark",
//! <https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams>).
//! Sessions opened together (a deployment, a restart) would all be cut, and all
//! reconnect, in the same minute. A rotation planned before the cut, each session at
//! its own time drawn from `[after × (1 − jitter), after]`, spreads the reconnects
//! and moves the sessions onto other IPs on the way.

use std::collections::BTreeMap;
use std::time::Duration;

use proxybus_shared::ExchangeId;
use serde::Deserialize;

/// When a session of one exchange moves. Both limits may be set; the first reached wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationSettings {
    /// Answers after which the session moves to another proxy (0: never by uses).
    pub rotate_after_uses: u32,
    /// Seconds after which the session moves (0: never by time), less up to
    /// `jitter` of it, drawn per session.
    pub rotate_after_seconds: u64,
    /// Fraction of `rotate_after_seconds` by which a session may move earlier, 0–0.5
    /// (default 0.1: within the last tenth).
    pub jitter: f64,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self { rotate_after_uses: 0, rotate_after_seconds: 0, jitter: 0.1 }
    }
}

impl RotationSettings {
    /// Binance: 23 hours, jitter 0.1 — every session moves between 20.7 h and 23 h,
    /// before Binance's 24-hour websocket cut (module docs).
    pub fn binance() -> Self {
        Self { rotate_after_uses: 0, rotate_after_seconds: 23 * 3_600, jitter: 0.1 }
    }

    /// How long a session bound now keeps its proxy, given `unit` uniform in [0, 1);
    /// `None` when it does not move by time.
    pub fn lifetime(&self, unit: f64) -> Option<Duration> {
        (self.rotate_after_seconds > 0).then(|| {
            let after = self.rotate_after_seconds as f64;
            Duration::from_secs_f64(after * (1.0 - self.jitter * unit.clamp(0.0, 1.0)))
        })
    }
}

/// Sessions of `session_key`: how long an unused one is kept, and the rotation
/// plan of each exchange.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// A session unused for this long is forgotten (its next request starts a new one), seconds.
    pub idle_seconds: u64,
    /// The plan of exchanges without their own.
    pub default: RotationSettings,
    /// Plans per exchange id (default: `binance` with [`RotationSettings::binance`]).
    pub exchanges: BTreeMap<ExchangeId, RotationSettings>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        let binance: ExchangeId = "binance".parse().expect("a valid exchange id");
        Self {
            idle_seconds: 3_600,
            default: RotationSettings::default(),
            exchanges: [(binance, RotationSettings::binance())].into_iter().collect(),
        }
    }
}

impl SessionSettings {
    /// The rotation plan of `exchange`.
    pub fn rotation(&self, exchange: &ExchangeId) -> &RotationSettings {
        self.exchanges.get(exchange).unwrap_or(&self.default)
    }

    /// How long an unused session is kept.
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_seconds)
    }

    /// Problems, each as `(key under sessions, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(1..=7 * 86_400).contains(&self.idle_seconds) {
            out.push(("idle_seconds".to_owned(), "must be 1 to 604800".to_owned()));
        }
        let plans = std::iter::once(("default".to_owned(), &self.default))
            .chain(self.exchanges.iter().map(|(id, plan)| (format!("exchanges.{id}"), plan)));
        for (name, plan) in plans {
            if !(0.0..=0.5).contains(&plan.jitter) {
                out.push((format!("{name}.jitter"), format!("{} is not within 0..=0.5", plan.jitter)));
            }
            if plan.rotate_after_seconds > 30 * 86_400 {
                out.push((format!("{name}.rotate_after_seconds"), "must be at most 2592000 (30 days)".into()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_spread_over_the_jitter_and_binance_moves_before_the_24_hour_cut() {
        let plan = RotationSettings::binance();
        let earliest = plan.lifetime(1.0).unwrap();
        let latest = plan.lifetime(0.0).unwrap();
        assert_eq!(latest, Duration::from_secs(23 * 3_600));
        assert!(earliest < latest && earliest >= Duration::from_secs(20 * 3_600));
        assert!(latest < Duration::from_secs(24 * 3_600), "before Binance's cut");
        assert_eq!(RotationSettings::default().lifetime(0.5), None, "no plan by time");
        let bad = SessionSettings {
            default: RotationSettings { jitter: 0.9, ..RotationSettings::default() },
            ..SessionSettings::default()
        };
        assert_eq!(bad.problems()[0].0, "default.jitter");
        assert!(SessionSettings::default().problems().is_empty());
    }
}
