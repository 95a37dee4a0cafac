//! What the dashboard shows, kept in memory: every proxy's health as of now (redacted), a timeline
//! of ejections, bars and recoveries over the last hour, the feedback of the last hour counted per
//! minute, and the lab feeds' counters. Every change becomes an [`Update`] for the browsers.
//!
//! Nothing that reaches a browser is taken from the bus as it came: proxy URLs go through
//! [`redact_url`], free text through [`redact_text`], and the rest is ids, enums and numbers.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use proxybus_shared::{
    ConnectionType, ErrorKind, ExchangeState, HealthState, HealthStats, OperatorAction, OperatorControl, ProxyFeedback,
    ProxyId, health, redact_text, redact_url,
};
use serde::Serialize;

/// How far back the timeline and the feedback counts reach (the issue: "over the last hour").
pub(crate) const WINDOW: TimeDelta = TimeDelta::hours(1);
/// Success-rate samples kept per proxy for its sparkline.
const HISTORY: usize = 120;
/// Feedback events kept for the "latest feedback" list.
const RECENT: usize = 25;

/// One proxy as the page shows it: its health as of now ([`health::as_of`]), redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProxyView {
    pub(crate) proxy_id: ProxyId,
    /// Redacted ([`redact_url`]).
    pub(crate) proxy_url: String,
    pub(crate) region: Option<String>,
    pub(crate) state: HealthState,
    pub(crate) ejected_until: Option<DateTime<Utc>>,
    /// Time-decayed success rate, 0..1.
    pub(crate) success_rate: f64,
    pub(crate) total: u64,
    pub(crate) latency_p50_ms: Option<f64>,
    pub(crate) latency_p99_ms: Option<f64>,
    pub(crate) consecutive_failures: u32,
    pub(crate) ejections: u32,
    pub(crate) last_error_kind: Option<ErrorKind>,
    /// Exchanges that bar the proxy now.
    pub(crate) bars: Vec<BarView>,
    pub(crate) updated_at: DateTime<Utc>,
    /// `[unix seconds, success rate]`, oldest first, one per stored change.
    pub(crate) history: Vec<(i64, f64)>,
    /// The operators' bans, drains and disables in force (`proxybus ban|drain|disable`).
    pub(crate) operator_controls: Vec<OperatorView>,
    /// The last operator event about this proxy, in force or not.
    pub(crate) last_operator_action: Option<OperatorView>,
}

/// An operator's control of a proxy: who did what, when and why ([`OperatorControl`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OperatorView {
    pub(crate) action: OperatorAction,
    /// The one exchange it is about; `None`: every exchange.
    pub(crate) exchange: Option<String>,
    pub(crate) until: Option<DateTime<Utc>>,
    /// Free text, through [`redact_text`].
    pub(crate) reason: String,
    pub(crate) operator: String,
    pub(crate) at: DateTime<Utc>,
    /// Stream sequence of the event in `PROXY_FEEDBACK` (the audit trail).
    pub(crate) seq: u64,
}

impl OperatorView {
    fn of(control: &OperatorControl) -> Self {
        Self {
            action: control.action,
            exchange: control.exchange_id.as_ref().map(ToString::to_string),
            until: control.until,
            reason: redact_text(&control.reason),
            operator: redact_text(&control.operator),
            at: control.at,
            seq: control.seq,
        }
    }
}

/// A bar of a proxy for one exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BarView {
    pub(crate) exchange: String,
    /// `cooldown` or `banned`.
    pub(crate) state: ExchangeState,
    pub(crate) until: Option<DateTime<Utc>>,
    pub(crate) last_error_kind: Option<ErrorKind>,
}

/// What happened to a proxy, for the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Happening {
    /// It was ejected.
    Ejected,
    /// Its ejection ended.
    Recovered,
    /// An exchange barred it (cool-down or ban).
    Barred,
    /// An exchange's bar ended.
    Unbarred,
    /// An operator acted on it (`proxybus ban|unban|drain|undrain|disable|enable`).
    Operator,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TimelineEntry {
    pub(crate) at: DateTime<Utc>,
    pub(crate) kind: Happening,
    pub(crate) proxy_id: ProxyId,
    pub(crate) region: Option<String>,
    pub(crate) exchange: Option<String>,
    /// End of the ejection or bar, when it has one.
    pub(crate) until: Option<DateTime<Utc>>,
    /// The operator's event, for [`Happening::Operator`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) operator: Option<OperatorView>,
}

/// One feedback event as the page lists it (no URL, no free text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FeedbackView {
    pub(crate) at: DateTime<Utc>,
    pub(crate) proxy_id: ProxyId,
    pub(crate) exchange: String,
    pub(crate) connection: ConnectionType,
    pub(crate) success: bool,
    pub(crate) error_kind: Option<ErrorKind>,
    pub(crate) latency_ms: Option<u64>,
}

/// Successes and failures reported in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct MinuteCount {
    /// Unix seconds of the minute's start.
    pub(crate) minute: i64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
}

/// Everything a browser gets when it connects.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    pub(crate) now: DateTime<Utc>,
    pub(crate) proxies: Vec<ProxyView>,
    pub(crate) timeline: Vec<TimelineEntry>,
    pub(crate) feedback: Vec<FeedbackView>,
    pub(crate) minutes: Vec<MinuteCount>,
    pub(crate) feeds: Option<serde_json::Value>,
}

/// A change, as one server-sent event: its `event:` name and its JSON `data:`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Update {
    /// `proxy`, `removed`, `timeline`, `feedback` or `feeds`.
    pub(crate) event: &'static str,
    /// JSON.
    pub(crate) data: String,
}

impl Update {
    fn of(event: &'static str, value: &impl Serialize) -> Self {
        Self { event, data: serde_json::to_string(value).unwrap_or_else(|_| "null".into()) }
    }
}

/// The dashboard's memory; each change returns the updates to send.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// The newest stored stats of each proxy, as received (read through [`view_of`] only).
    stored: BTreeMap<ProxyId, HealthStats>,
    views: BTreeMap<ProxyId, ProxyView>,
    timeline: VecDeque<TimelineEntry>,
    feedback: VecDeque<FeedbackView>,
    minutes: BTreeMap<i64, MinuteCount>,
    feeds: Option<serde_json::Value>,
}

impl Model {
    /// Takes `stats` (from the bucket or a health subject) unless older than what is held
    /// ([`health::is_newer`]).
    pub(crate) fn put(&mut self, stats: HealthStats, now: DateTime<Utc>) -> Vec<Update> {
        if let Some(held) = self.stored.get(&stats.proxy_id)
            && !health::is_newer(&stats, held)
        {
            return Vec::new();
        }
        let id = stats.proxy_id;
        let changed = self.stored.get(&id) != Some(&stats);
        let mut history = self.views.get(&id).map(|v| v.history.clone()).unwrap_or_default();
        if changed
            && history.last().is_none_or(|&(at, rate)| (at, rate) != (stats.updated_at.timestamp(), stats.success_rate))
        {
            history.push((stats.updated_at.timestamp(), stats.success_rate));
            if history.len() > HISTORY {
                history.remove(0);
            }
        }
        let at = stats.updated_at;
        self.stored.insert(id, stats);
        self.refresh(&id, now, at, history)
    }

    /// Forgets a proxy whose key was deleted.
    pub(crate) fn remove(&mut self, id: &ProxyId) -> Vec<Update> {
        self.stored.remove(id);
        match self.views.remove(id) {
            Some(_) => vec![Update::of("removed", &serde_json::json!({ "proxy_id": id }))],
            None => Vec::new(),
        }
    }

    /// Ends the ejections and bars whose time has come, and drops what left the window.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Vec<Update> {
        let ids: Vec<ProxyId> = self.stored.keys().cloned().collect();
        let mut updates = Vec::new();
        for id in ids {
            let history = self.views.get(&id).map(|v| v.history.clone()).unwrap_or_default();
            updates.extend(self.refresh(&id, now, now, history));
        }
        let start = now - WINDOW;
        while self.timeline.front().is_some_and(|e| e.at < start) {
            self.timeline.pop_front();
        }
        self.minutes.retain(|&minute, _| minute >= start.timestamp() - 60);
        updates
    }

    /// Counts one feedback event.
    pub(crate) fn feedback(&mut self, event: &ProxyFeedback, now: DateTime<Utc>) -> Vec<Update> {
        if event.timestamp < now - WINDOW {
            return Vec::new();
        }
        let view = FeedbackView {
            at: event.timestamp,
            proxy_id: event.proxy_id,
            exchange: event.exchange_id.to_string(),
            connection: event.connection_type,
            success: event.success,
            error_kind: (!event.success).then(|| health::error_kind_of(event)),
            latency_ms: event.latency_ms,
        };
        let minute = event.timestamp.timestamp().div_euclid(60) * 60;
        let count = self.minutes.entry(minute).or_insert(MinuteCount { minute, ..Default::default() });
        match event.success {
            true => count.ok += 1,
            false => count.failed += 1,
        }
        self.feedback.push_back(view.clone());
        if self.feedback.len() > RECENT {
            self.feedback.pop_front();
        }
        vec![Update::of("feedback", &view)]
    }

    /// Keeps the lab feeds' counters (a JSON array; every string in it is redacted before it is kept).
    pub(crate) fn feeds(&mut self, payload: &[u8]) -> Vec<Update> {
        let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(payload) else { return Vec::new() };
        if !value.is_array() {
            return Vec::new();
        }
        redact_strings(&mut value);
        self.feeds = Some(value.clone());
        vec![Update::of("feeds", &value)]
    }

    /// Everything, for a browser that connects.
    pub(crate) fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        Snapshot {
            now,
            proxies: self.views.values().cloned().collect(),
            timeline: self.timeline.iter().cloned().collect(),
            feedback: self.feedback.iter().cloned().collect(),
            minutes: self.minutes.values().copied().collect(),
            feeds: self.feeds.clone(),
        }
    }

    /// Recomputes the view of `id` as of `now`; a change becomes an update, and what it
    /// started or ended becomes timeline entries dated `at`.
    fn refresh(
        &mut self,
        id: &ProxyId,
        now: DateTime<Utc>,
        at: DateTime<Utc>,
        history: Vec<(i64, f64)>,
    ) -> Vec<Update> {
        let Some(stored) = self.stored.get(id) else { return Vec::new() };
        let view = view_of(stored, now, history);
        let before = self.views.get(id);
        if before == Some(&view) {
            return Vec::new();
        }
        let mut updates = Vec::new();
        for entry in happenings(before, &view, at) {
            updates.push(Update::of("timeline", &entry));
            self.timeline.push_back(entry);
        }
        updates.push(Update::of("proxy", &view));
        self.views.insert(*id, view);
        updates
    }
}

/// Every string in `value` that holds a URL through [`redact_text`]. Strings without `://` are
/// names (`binance btcusdt@trade`), which the text redactor would take for `user@host`.
fn redact_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.contains("://") => *text = redact_text(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(redact_strings),
        _ => {}
    }
}

/// The page's view of `stored` as of `now`.
fn view_of(stored: &HealthStats, now: DateTime<Utc>, history: Vec<(i64, f64)>) -> ProxyView {
    let s = health::as_of(stored, now);
    let bars = s
        .exchanges
        .iter()
        .filter(|(_, e)| health::is_exchange_barred(e, now))
        .map(|(exchange, e)| BarView {
            exchange: exchange.to_string(),
            state: e.state,
            until: e.banned_until,
            last_error_kind: e.last_error_kind,
        })
        .collect();
    ProxyView {
        proxy_id: s.proxy_id,
        proxy_url: redact_url(&s.proxy_url),
        region: s.region.map(|r| r.to_string()),
        state: s.state,
        ejected_until: s.ejected_until,
        success_rate: s.success_rate,
        total: s.total,
        latency_p50_ms: s.latency_p50_ms,
        latency_p99_ms: s.latency_p99_ms,
        consecutive_failures: s.consecutive_failures,
        ejections: s.ejections,
        last_error_kind: s.last_error_kind,
        bars,
        updated_at: s.updated_at,
        history,
        operator_controls: s.operator_controls.iter().map(OperatorView::of).collect(),
        last_operator_action: s.last_operator_action.as_ref().map(OperatorView::of),
    }
}

/// What changed between two views of one proxy, as timeline entries.
fn happenings(before: Option<&ProxyView>, after: &ProxyView, at: DateTime<Utc>) -> Vec<TimelineEntry> {
    let entry = |kind, exchange: Option<&str>, until| TimelineEntry {
        at,
        kind,
        proxy_id: after.proxy_id,
        region: after.region.clone(),
        exchange: exchange.map(str::to_owned),
        until,
        operator: None,
    };
    let mut out = Vec::new();
    let was_ejected = before.is_some_and(|b| b.state == HealthState::Ejected);
    let is_ejected = after.state == HealthState::Ejected;
    // A new ejection of a proxy that was already ejected shows as its count going up.
    if is_ejected && (!was_ejected || before.is_some_and(|b| b.ejections < after.ejections)) {
        out.push(entry(Happening::Ejected, None, after.ejected_until));
    } else if was_ejected && !is_ejected {
        out.push(entry(Happening::Recovered, None, None));
    }
    let barred_before: BTreeMap<&str, &BarView> =
        before.map(|b| b.bars.iter().map(|bar| (bar.exchange.as_str(), bar)).collect()).unwrap_or_default();
    for bar in &after.bars {
        if barred_before.get(bar.exchange.as_str()).is_none_or(|old| old.until != bar.until || old.state != bar.state) {
            out.push(entry(Happening::Barred, Some(&bar.exchange), bar.until));
        }
    }
    for exchange in barred_before.keys() {
        if !after.bars.iter().any(|bar| bar.exchange == *exchange) {
            out.push(entry(Happening::Unbarred, Some(exchange), None));
        }
    }
    if let Some(action) = &after.last_operator_action
        && before.is_none_or(|b| b.last_operator_action.as_ref().is_none_or(|old| old.seq != action.seq))
    {
        let mut line = entry(Happening::Operator, action.exchange.as_deref(), action.until);
        line.at = action.at;
        line.operator = Some(action.clone());
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxybus_shared::{ExchangeHealth, ExchangeId, proxy_id};

    const URL: &str = "http://alice:s3cret-pw@198.51.100.7:3128";

    fn stats(now: DateTime<Utc>) -> HealthStats {
        HealthStats::new(proxy_id(URL), URL.to_owned(), Some("eu-west".parse().unwrap()), now)
    }

    #[test]
    fn the_view_is_redacted_and_an_ejection_and_its_end_reach_the_timeline() {
        let t0 = Utc::now();
        let mut model = Model::default();
        let mut s = stats(t0);
        let updates = model.put(s.clone(), t0);
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert!(!updates[0].data.contains("s3cret-pw") && updates[0].data.contains("198.51.100.7"), "{updates:?}");

        s.state = HealthState::Ejected;
        s.ejections = 1;
        s.ejected_until = Some(t0 + TimeDelta::seconds(30));
        s.last_seq = 5;
        s.updated_at = t0 + TimeDelta::seconds(1);
        let updates = model.put(s.clone(), t0 + TimeDelta::seconds(1));
        let events: Vec<_> = updates.iter().map(|u| u.event).collect();
        assert_eq!(events, ["timeline", "proxy"]);
        assert!(updates[0].data.contains("\"ejected\""), "{updates:?}");

        // An older record (lower sequence) changes nothing.
        let mut old = s.clone();
        old.last_seq = 4;
        old.state = HealthState::Healthy;
        assert!(model.put(old, t0 + TimeDelta::seconds(2)).is_empty());

        assert!(model.tick(t0 + TimeDelta::seconds(10)).is_empty(), "nothing ran out yet");
        let updates = model.tick(t0 + TimeDelta::seconds(31));
        assert!(updates[0].event == "timeline" && updates[0].data.contains("\"recovered\""), "{updates:?}");
        assert!(updates[1].data.contains("\"degraded\""), "as of now the ejection is over: {updates:?}");
        assert_eq!(model.snapshot(t0).timeline.len(), 2);
        assert!(model.tick(t0 + TimeDelta::hours(2)).is_empty());
        assert!(model.snapshot(t0).timeline.is_empty(), "entries older than an hour are dropped");
    }

    #[test]
    fn an_operator_ban_shows_who_what_and_why_redacted_and_reaches_the_timeline_once() {
        let t0 = Utc::now();
        let mut model = Model::default();
        let mut s = stats(t0);
        model.put(s.clone(), t0);
        let ban = OperatorControl {
            action: OperatorAction::Ban,
            exchange_id: Some("binance".parse().unwrap()),
            until: Some(t0 + TimeDelta::hours(2)),
            reason: format!("provider said {URL} is leaking"),
            operator: "alice".into(),
            at: t0,
            seq: 42,
        };
        s.operator_controls.push(ban.clone());
        s.last_operator_action = Some(ban);
        s.last_seq = 42;
        s.updated_at = t0 + TimeDelta::seconds(1);
        let updates = model.put(s.clone(), t0 + TimeDelta::seconds(1));
        let events: Vec<_> = updates.iter().map(|u| u.event).collect();
        assert_eq!(events, ["timeline", "proxy"]);
        for update in &updates {
            assert!(!update.data.contains("s3cret-pw"), "a reason is redacted: {update:?}");
            assert!(update.data.contains("\"alice\"") && update.data.contains("\"ban\""), "{update:?}");
        }
        assert!(updates[0].data.contains("\"operator\""), "{updates:?}");
        // The same record again (a later health change) adds no second timeline line.
        s.last_seq = 43;
        s.total = 1;
        let events: Vec<_> = model.put(s, t0 + TimeDelta::seconds(2)).iter().map(|u| u.event).collect();
        assert_eq!(events, ["proxy"]);
    }

    #[test]
    fn a_bar_and_its_end_reach_the_timeline_and_feedback_is_counted_per_minute() {
        let t0 = Utc::now();
        let mut model = Model::default();
        let mut s = stats(t0);
        s.exchanges.insert(
            "binance".parse::<ExchangeId>().unwrap(),
            ExchangeHealth {
                state: ExchangeState::Cooldown,
                banned_until: Some(t0 + TimeDelta::seconds(60)),
                last_error_kind: Some(ErrorKind::Http429),
                ..Default::default()
            },
        );
        let updates = model.put(s, t0);
        assert!(updates[0].data.contains("\"barred\"") && updates[0].data.contains("binance"), "{updates:?}");
        let updates = model.tick(t0 + TimeDelta::seconds(61));
        assert!(updates[0].data.contains("\"unbarred\""), "{updates:?}");

        let mut event = proxybus_shared::ProxyFeedback {
            schema_version: proxybus_shared::SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v4(),
            proxy_id: proxy_id(URL),
            proxy_url: URL.into(),
            exchange_id: "binance".parse().unwrap(),
            connection_type: ConnectionType::Websocket,
            region: None,
            phase: proxybus_shared::FeedbackPhase::Failed,
            success: false,
            latency_ms: None,
            error_kind: Some(ErrorKind::Timeout),
            status_code: None,
            retry_after_seconds: None,
            error_details: Some(format!("via {URL}")),
            ws_close_code: None,
            usage_headers: Default::default(),
            connect_count: None,
            probe: false,
            timestamp: t0,
            client_id: "t".into(),
        };
        let updates = model.feedback(&event, t0);
        assert!(!updates[0].data.contains("s3cret") && updates[0].data.contains("timeout"), "{updates:?}");
        event.success = true;
        model.feedback(&event, t0);
        event.timestamp = t0 - TimeDelta::hours(2);
        assert!(model.feedback(&event, t0).is_empty(), "older than the window");
        let minutes = model.snapshot(t0).minutes;
        assert_eq!((minutes.len(), minutes[0].ok, minutes[0].failed), (1, 1, 1));
    }

    #[test]
    fn feed_counters_are_redacted_and_anything_but_an_array_is_ignored() {
        let mut model = Model::default();
        assert!(model.feeds(b"{\"not\": \"an array\"}").is_empty());
        let updates = model.feeds(format!("[{{\"name\":\"binance btcusdt@trade\",\"proxy\":\"{URL}\"}}]").as_bytes());
        assert!(!updates[0].data.contains("s3cret-pw") && updates[0].data.contains("198.51.100.7"), "{updates:?}");
        assert!(updates[0].data.contains("binance btcusdt@trade"), "names stay as they are: {updates:?}");
    }
}
