//! The [`Selector`]: the inventory plus everything learned while serving it
//! (health, leases, sticky sessions, latency), and the choice of a proxy.
//!
//! A request is answered in this order:
//! 0. only proxies that serve the exchange and the connection type, with a
//!    scheme the request's `proxy_schemes` accepts (all when it names none), and
//!    not listed in its `exclude_proxy_ids` (a retry through another proxy), count;
//! 1. **session** (a request with `session_key`): the session's proxy while it may
//!    still be chosen and its rotation is not due (`crate::sessions`); a due
//!    rotation prefers any other proxy;
//!    **sticky** (the others): the client's proxy from an earlier answer, if it is still in
//!    the inventory, serves the exchange, is healthy and has room;
//! 2. the requested region's pool (the default region's when the request names
//!    none, or one the inventory lacks), by the pool's strategy over its healthy
//!    proxies that serve the exchange, have room (`max_leases`) and are not near
//!    the exchange's per-IP limits (their rate budget, `proxybus_shared::budget`);
//! 3. **region fallback**: each of that pool's `fallback_regions`, nearest first
//!    (the answer's `region` says where it came from);
//! 4. nothing healthy anywhere: the requested pool's `when_all_ejected` —
//!    `panic` answers the least-bad proxy with `strategy: "panic"` (Envoy's panic
//!    mode), `fail` answers `no_proxy_available`, `direct` a direct connection.
//!
//! The selector is plain, synchronous code behind one mutex, usable in-process
//! without HTTP (the `proxybus up` CLI does so).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxybus_shared::budget::{BudgetBook, RateBudget};
use proxybus_shared::{
    ExchangeId, FallbackPolicy, FeedbackPhase, HealthState, HealthStats, Metadata, ProxyFeedback, ProxyId,
    ProxyRequest, ProxyResponse, Region, ResponseSource,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::time::Instant;

use crate::health::{HealthOptions, LocalHealth};
use crate::inventory::{Inventory, Pool, Proxy, WhenAllEjected};
use crate::leases::{LeaseTable, Session, SessionBinding, SessionKey, SessionTable, StickyTable};
use crate::metrics as m;
use crate::strategy::{Candidate, PeakEwma, pick};

/// Tuning of the selector.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorOptions {
    /// Local outlier detection and active-check thresholds.
    pub health: HealthOptions,
    /// Latency assumed for a proxy nothing is known about, in ms (`p2c_ewma`).
    pub default_latency_ms: f64,
    /// Time constant of the peak-EWMA decay.
    pub ewma_decay: Duration,
    /// Seed of the random choices (`None`: from the OS); tests fix it.
    pub seed: Option<u64>,
    /// Rate budgets: which exchanges are budgeted and each one's headroom.
    pub budgets: proxybus_shared::budget::BudgetSettings,
    /// Sessions of `session_key`: how long they are kept, and their rotation plans.
    pub sessions: crate::sessions::SessionSettings,
}

impl Default for SelectorOptions {
    fn default() -> Self {
        Self {
            health: HealthOptions::default(),
            default_latency_ms: 100.0,
            ewma_decay: Duration::from_secs(60),
            seed: None,
            budgets: proxybus_shared::budget::BudgetSettings::default(),
            sessions: crate::sessions::SessionSettings::default(),
        }
    }
}

/// The outcome of a selection, before it becomes a [`ProxyResponse`].
#[derive(Debug, Clone)]
pub struct Selection {
    /// The proxy; `None` means "connect directly".
    pub proxy: Option<Arc<Proxy>>,
    /// How it was chosen: a strategy name, `sticky`, `panic` or `direct`.
    pub strategy: &'static str,
    /// From the answering pool.
    pub ttl_seconds: u64,
    /// From the answering pool.
    pub fallback_policy: FallbackPolicy,
    /// Region of the proxy.
    pub region: Option<Region>,
    /// The region the request asked for (or the default one).
    pub requested_region: Region,
    /// Whether the answer comes from a fallback region.
    pub region_fallback: bool,
    /// The `session_key` session the answer continues or starts, if the request named one.
    pub session: Option<SessionInfo>,
}

/// A `session_key` session as an answer reports it (in `metadata`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Answers given to the session with this proxy, this one included.
    pub uses: u32,
    /// Whether the session just moved because its rotation was due.
    pub rotated: bool,
    /// Seconds until the session is due to move (`None`: not by time).
    pub rotate_in_seconds: Option<u64>,
}

impl Selection {
    /// The contract's answer; the only place a proxy URL leaves with its credentials.
    pub fn into_response(self, request_id: String) -> ProxyResponse {
        let mut metadata = Metadata::new();
        metadata.insert("requested_region".into(), self.requested_region.as_str().into());
        metadata.insert("region_fallback".into(), self.region_fallback.into());
        if let Some(proxy) = &self.proxy {
            metadata.insert("tags".into(), proxy.tags().into());
        }
        if let Some(session) = &self.session {
            metadata.insert("session_uses".into(), session.uses.into());
            metadata.insert("session_rotated".into(), session.rotated.into());
            if let Some(seconds) = session.rotate_in_seconds {
                metadata.insert("session_rotate_in_seconds".into(), seconds.into());
            }
        }
        ProxyResponse {
            schema_version: proxybus_shared::SCHEMA_VERSION,
            proxy_url: self.proxy.as_ref().map(|p| p.url().expose().to_owned()),
            proxy_id: self.proxy.as_ref().map(|p| *p.id()),
            strategy: self.strategy.to_owned(),
            ttl_seconds: self.ttl_seconds,
            fallback_policy: self.fallback_policy,
            source: if self.proxy.is_some() { ResponseSource::Service } else { ResponseSource::Direct },
            region: self.region,
            request_id,
            metadata,
            resolver_region: None,
        }
    }
}

/// Why no proxy could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No proxy is healthy and the pool is configured to fail, or no proxy serves the exchange at all.
    #[error("no proxy available for {exchange} in region {region}: {reason}")]
    NoProxyAvailable {
        /// The requested region.
        region: Region,
        /// The exchange.
        exchange: ExchangeId,
        /// Why.
        reason: &'static str,
    },
}

/// One proxy as `GET /api/v1/proxies` shows it: no credentials.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyView {
    /// Its identity.
    pub proxy_id: ProxyId,
    /// Its URL, password redacted.
    pub proxy_url: String,
    /// Its region.
    pub region: Region,
    /// Relative weight.
    pub weight: f64,
    /// Labels.
    pub tags: Vec<String>,
    /// Whether the inventory lets it be handed out.
    pub enabled: bool,
    /// Active leases.
    pub active_leases: u32,
    /// Lease cap (`null`: unlimited).
    pub max_leases: Option<u32>,
    /// `healthy`, `degraded` or `ejected`, all sources combined (exchange bans aside).
    pub state: HealthState,
    /// This service's own view.
    pub local: LocalView,
    /// The latest `HealthStats` received, if any.
    pub health: Option<HealthStats>,
}

/// What this service itself observed about a proxy.
#[derive(Debug, Clone, Serialize)]
pub struct LocalView {
    /// Ejected by local outlier detection.
    pub ejected: bool,
    /// Seconds left of that ejection.
    pub ejected_for_seconds: Option<u64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Exchanges it is banned or cooling down for.
    pub barred_exchanges: Vec<ExchangeId>,
    /// Active checks: `up`, `down` or `unchecked`.
    pub check: &'static str,
    /// Peak-EWMA latency in ms from feedback.
    pub latency_ewma_ms: Option<f64>,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    turns: HashMap<Region, u64>,
    pushed: HashMap<ProxyId, HealthStats>,
    local: HashMap<ProxyId, LocalHealth>,
    checked: HashSet<ProxyId>,
    latency: HashMap<ProxyId, PeakEwma>,
    leases: LeaseTable,
    sticky: StickyTable,
    /// Rate budgets from `PROXY_BUDGETS`, by proxy and exchange.
    budgets: BudgetBook,
    /// Sessions of `session_key`.
    sessions: SessionTable,
}

impl State {
    /// Whether `proxy`'s budget at `exchange` leaves room (`headroom`: the
    /// exchange's, `None` when it is not budgeted).
    fn has_budget_room(
        &self,
        proxy: &Proxy,
        exchange: &ExchangeId,
        headroom: Option<f64>,
        wall: DateTime<Utc>,
    ) -> bool {
        let Some(headroom) = headroom else { return true };
        self.budgets.get(proxy.id(), exchange).is_none_or(|budget| budget.has_room(wall, headroom))
    }

    fn budget_load(&self, proxy: &Proxy, exchange: &ExchangeId, wall: DateTime<Utc>) -> f64 {
        self.budgets.get(proxy.id(), exchange).map_or(0.0, |budget| budget.load(wall))
    }

    fn usable(&self, proxy: &Proxy, exchange: &ExchangeId, now: Instant, wall: DateTime<Utc>) -> bool {
        self.pushed.get(proxy.id()).is_none_or(|stats| stats.usable_for(exchange, wall))
            && self.local.get(proxy.id()).is_none_or(|local| local.usable_for(exchange, now))
    }

    /// Whether `session`'s lease on `proxy` may be renewed: as [`usable`](Self::usable),
    /// except that an operator's drain lets existing leases go on (`health::may_keep`).
    fn keepable(&self, proxy: &Proxy, exchange: &ExchangeId, now: Instant, wall: DateTime<Utc>) -> bool {
        self.pushed.get(proxy.id()).is_none_or(|stats| proxybus_shared::health::may_keep(stats, exchange, wall))
            && self.local.get(proxy.id()).is_none_or(|local| local.usable_for(exchange, now))
    }

    /// Whether an operator's ban, drain or disable keeps `proxy` from `exchange`: such a
    /// proxy is never handed out anew, not even in panic mode.
    fn operator_excluded(&self, proxy: &Proxy, exchange: &ExchangeId, wall: DateTime<Utc>) -> bool {
        use proxybus_shared::OperatorAction::{Ban, Disable, Drain};
        self.pushed.get(proxy.id()).is_some_and(|stats| {
            [Ban, Drain, Disable]
                .into_iter()
                .any(|action| proxybus_shared::health::operator_control(stats, action, exchange, wall).is_some())
        })
    }

    fn has_room(&self, proxy: &Proxy, session: &Session) -> bool {
        let Some(max) = proxy.max_leases() else { return true };
        let own = u32::from(self.leases.held_by(session) == Some(proxy.id()));
        self.leases.active(proxy.id()).saturating_sub(own) < max
    }

    fn latency_ms(&self, proxy: &Proxy, now: Instant, default: f64) -> f64 {
        self.latency
            .get(proxy.id())
            .map(|ewma| ewma.value(now))
            .or_else(|| self.pushed.get(proxy.id()).and_then(|stats| stats.latency_ewma_ms))
            .unwrap_or(default)
    }

    /// How bad a proxy is for panic mode; lower is better.
    fn badness(
        &self,
        proxy: &Proxy,
        exchange: &ExchangeId,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> (u8, f64, f64, f64, u32) {
        let pushed = self.pushed.get(proxy.id());
        let local = self.local.get(proxy.id());
        let barred = pushed.is_some_and(|s| proxybus_shared::health::is_barred(s, exchange, wall))
            || local.is_some_and(|l| l.barred_for(exchange, now));
        let pushed_left = pushed.filter(|s| s.state == HealthState::Ejected).map_or(0.0, |s| {
            s.ejected_until.map_or(f64::MAX, |until| (until - wall).num_milliseconds().max(0) as f64 / 1000.0)
        });
        let local_left =
            local.and_then(|l| l.ejected_until).map_or(0.0, |until| until.saturating_duration_since(now).as_secs_f64());
        let check_down = local.is_some_and(|l| l.check_down);
        let ejected_left = pushed_left.max(local_left) + if check_down { 1e9 } else { 0.0 };
        let failure_rate = 1.0 - pushed.map_or(1.0, |s| s.success_rate);
        let load = self.budget_load(proxy, exchange, wall);
        (u8::from(barred), ejected_left, load, failure_rate, self.leases.active(proxy.id()))
    }
}

/// The selection core: inventory, health, leases and sticky sessions.
///
/// # Examples
/// ```
/// use proxybus_pool::{Inventory, Selector, SelectorOptions};
/// use proxybus_shared::{ConnectionType, ProxyRequest};
///
/// let inventory = Inventory::from_toml_str(r#"
///     default_region = "eu-west"
///     [regions.eu-west]
///     strategy = "round_robin"
///     [[regions.eu-west.proxies]]
///     url = "http://user:pw@203.0.113.10:3128"
/// "#).unwrap();
/// let selector = Selector::new(inventory, SelectorOptions::default());
/// let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Websocket, "feed-1");
/// let answer = selector.respond(&request).unwrap();
/// assert_eq!(answer.proxy_url.as_deref(), Some("http://user:pw@203.0.113.10:3128"));
/// assert_eq!(answer.region.unwrap().as_str(), "eu-west");
/// ```
#[derive(Debug)]
pub struct Selector {
    inventory: RwLock<Arc<Inventory>>,
    /// Counts inventory replacements, for those who publish it.
    inventory_version: tokio::sync::watch::Sender<u64>,
    state: Mutex<State>,
    options: SelectorOptions,
}

impl Selector {
    /// A selector over `inventory` with nothing learned yet.
    pub fn new(inventory: Inventory, options: SelectorOptions) -> Self {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            inventory: RwLock::new(Arc::new(inventory)),
            inventory_version: tokio::sync::watch::Sender::new(0),
            state: Mutex::new(State {
                rng,
                turns: HashMap::new(),
                pushed: HashMap::new(),
                local: HashMap::new(),
                checked: HashSet::new(),
                latency: HashMap::new(),
                leases: LeaseTable::default(),
                sticky: StickyTable::default(),
                budgets: BudgetBook::default(),
                sessions: SessionTable::default(),
            }),
            options,
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &SelectorOptions {
        &self.options
    }

    /// The current inventory.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.inventory.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Swaps in a new inventory atomically: a request is answered wholly from the
    /// old one or wholly from the new one. Health, leases and sticky sessions are
    /// kept by `proxy_id`, so proxies that stay keep what was learned about them.
    pub fn replace_inventory(&self, inventory: Inventory) {
        let proxies = inventory.len();
        *self.inventory.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(inventory);
        self.inventory_version.send_modify(|version| *version += 1);
        tracing::info!(proxies, "inventory replaced");
    }

    /// Changes whenever the inventory is replaced.
    pub fn inventory_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inventory_version.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a request: chooses a proxy, grants the session a lease and
    /// (in sticky pools) binds the session to it.
    pub fn respond(&self, request: &ProxyRequest) -> Result<ProxyResponse, SelectError> {
        let request_id = request.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.select(request).map(|selection| selection.into_response(request_id))
    }

    /// Chooses a proxy for `request` (see the module documentation for the order).
    ///
    /// A request with a `session_key` continues that session: its proxy while it
    /// may still be chosen (healthy, serving, room) and the session is not due to
    /// move (`rotate_after_uses` answers, or its `rotate_after_seconds` less its
    /// jitter); else a new proxy — another than the session's old one when any
    /// other may be chosen — that the session keeps from now on. The answer's
    /// `ttl_seconds` ends no later than the planned move, and its `metadata` says
    /// `session_uses`, `session_rotated` and `session_rotate_in_seconds`.
    pub fn select(&self, request: &ProxyRequest) -> Result<Selection, SelectError> {
        let Some(key) = SessionKey::of(request) else { return self.choose(request, None, None) };
        let now = Instant::now();
        let binding = self.state().sessions.get(&key, now, self.options.sessions.idle()).cloned();
        let due = binding.as_ref().is_some_and(|binding| self.rotation_due(request, binding, now));
        let keep = binding.as_ref().filter(|_| !due).map(|b| &b.proxy);
        let avoid = binding.as_ref().filter(|_| due).map(|b| &b.proxy);
        let mut selection = self.choose(request, keep, avoid)?;
        if avoid.is_some() && matches!(selection.strategy, "panic" | "direct") {
            // No other proxy may be chosen: the session stays where it is for another round.
            selection = self.choose(request, None, None)?;
        }
        let Some(proxy) = selection.proxy.as_ref().map(|p| *p.id()) else { return Ok(selection) };
        let session = self.record_session_use(request, key, proxy, selection.strategy, due, now);
        if let Some(seconds) = session.rotate_in_seconds {
            selection.ttl_seconds = selection.ttl_seconds.min(seconds);
        }
        selection.session = Some(session);
        Ok(selection)
    }

    /// Whether the session of `binding` is due to move to another proxy: after its
    /// plan's `rotate_after_uses` answers, or at its `rotate_at`.
    fn rotation_due(&self, request: &ProxyRequest, binding: &SessionBinding, now: Instant) -> bool {
        let plan = self.options.sessions.rotation(&request.exchange_id);
        (plan.rotate_after_uses > 0 && binding.uses >= plan.rotate_after_uses)
            || binding.rotate_at.is_some_and(|at| now >= at)
    }

    /// Records that the session `key` was answered with `proxy` by `strategy`: one
    /// more use of its proxy (`session`), nothing kept (`panic`), or else a new
    /// binding with its planned move (a rotation when it was `due`).
    fn record_session_use(
        &self,
        request: &ProxyRequest,
        key: SessionKey,
        proxy: ProxyId,
        strategy: &str,
        due: bool,
        now: Instant,
    ) -> SessionInfo {
        let sessions = &self.options.sessions;
        let mut state = self.state();
        let (uses, rotate_at, rotated) = if strategy == "session" {
            let held = state.sessions.used(&key, now).expect("the session's binding was just read");
            (held.uses, held.rotate_at, false)
        } else if strategy == "panic" {
            (1, None, false)
        } else {
            let unit: f64 = rand::Rng::random(&mut state.rng);
            let rotate_at = sessions.rotation(&request.exchange_id).lifetime(unit).map(|lifetime| now + lifetime);
            state.sessions.bind(key, proxy, rotate_at, now, sessions.idle());
            if due {
                metrics::counter!(m::SESSION_ROTATIONS, "exchange" => request.exchange_id.to_string()).increment(1);
            }
            (1, rotate_at, due)
        };
        let rotate_in_seconds = rotate_at.map(|at| at.saturating_duration_since(now).as_secs().max(1));
        SessionInfo { uses, rotated, rotate_in_seconds }
    }

    /// The choice itself, in the module documentation's order: `keep` is a session's
    /// proxy, answered (`session`) when it may still be chosen; `avoid` a session's
    /// proxy it should move away from.
    fn choose(
        &self,
        request: &ProxyRequest,
        keep: Option<&ProxyId>,
        avoid: Option<&ProxyId>,
    ) -> Result<Selection, SelectError> {
        let inventory = self.inventory();
        let headroom = self.options.budgets.limits(&request.exchange_id).map(|limits| limits.headroom);
        let choice = Choice::new(&inventory, request, headroom);
        let session = Session::of(request);
        let mut state = self.state();
        state.leases.expire(choice.now);

        let held = keep
            .and_then(|id| choice.session_proxy(&state, &session, id).map(|proxy| (proxy, "session")))
            .or_else(|| choice.sticky_proxy(&state, &session).map(|proxy| (proxy, "sticky")))
            .or_else(|| choice.drained_lease_proxy(&state, &session).map(|proxy| (proxy, "sticky")));
        if let Some((proxy, strategy)) = held {
            let pool = choice.pool_of(&proxy);
            return Ok(choice.grant(&mut state, session, pool, proxy, strategy));
        }
        let default_latency_ms = self.options.default_latency_ms;
        if let Some((pool, proxy)) = choice.pick_by_strategy(&mut state, &session, avoid, default_latency_ms) {
            return Ok(choice.grant(&mut state, session, pool, proxy, pool.strategy().as_str()));
        }
        choice.when_all_ejected(&mut state, session)
    }

    /// Folds feedback from a feed: latency, lease release (`disconnected`,
    /// `failed`), local outlier detection and per-exchange bans. Feedback for a
    /// proxy not in the inventory is ignored; returns whether it was known.
    pub fn feedback(&self, feedback: &ProxyFeedback) -> bool {
        let inventory = self.inventory();
        let Some(proxy) = inventory.proxy(&feedback.proxy_id) else {
            metrics::counter!(m::FEEDBACK, "phase" => phase_name(feedback.phase), "outcome" => "unknown_proxy")
                .increment(1);
            return false;
        };
        let now = Instant::now();
        let mut state = self.state();
        if feedback.success
            && let Some(latency) = feedback.latency_ms
            && matches!(feedback.phase, FeedbackPhase::Connected | FeedbackPhase::Request)
        {
            let sample = latency as f64;
            let decay = self.options.ewma_decay;
            state.latency.entry(*proxy.id()).or_insert_with(|| PeakEwma::new(sample, decay, now)).observe(sample, now);
        }
        if matches!(feedback.phase, FeedbackPhase::Disconnected | FeedbackPhase::Failed) {
            let session = Session {
                client_id: feedback.client_id.clone(),
                exchange: feedback.exchange_id.clone(),
                connection_type: feedback.connection_type,
            };
            state.leases.release(&session, proxy.id());
        }
        let ejected = state.local.entry(*proxy.id()).or_default().fold(feedback, &self.options.health, now);
        if ejected {
            metrics::counter!(m::EJECTIONS, "source" => "feedback").increment(1);
            tracing::warn!(proxy_id = %proxy.id(), proxy_url = %proxy.redacted_url(), "proxy ejected after consecutive failures");
        }
        metrics::counter!(m::FEEDBACK, "phase" => phase_name(feedback.phase), "outcome" => if feedback.success { "success" } else { "failure" })
            .increment(1);
        true
    }

    /// Applies health statistics (from the aggregator); older stats than those
    /// held for the proxy are ignored. Returns whether they were applied.
    pub fn apply_health(&self, stats: HealthStats, source: m::HealthSource) -> bool {
        let mut state = self.state();
        let newer =
            state.pushed.get(&stats.proxy_id).is_none_or(|held| proxybus_shared::health::is_newer(&stats, held));
        let outcome = if newer { "applied" } else { "stale" };
        metrics::counter!(m::HEALTH_UPDATES, "source" => source.as_str(), "outcome" => outcome).increment(1);
        if newer {
            tracing::debug!(proxy_id = %stats.proxy_id, state = ?stats.state, "health statistics applied");
            state.pushed.insert(stats.proxy_id, stats);
        }
        newer
    }

    /// Applies a rate budget from `PROXY_BUDGETS` (an older one than held is ignored).
    pub fn apply_budget(&self, budget: RateBudget) {
        self.state().budgets.record(budget);
    }

    /// Forgets the budget under `key` (`{proxy_id}.{exchange_id}`, deleted or expired).
    pub fn forget_budget(&self, key: &str) {
        self.state().budgets.forget(key);
    }

    /// The budget held for `proxy` at `exchange`.
    pub fn budget(&self, proxy: &ProxyId, exchange: &ExchangeId) -> Option<RateBudget> {
        self.state().budgets.get(proxy, exchange).cloned()
    }

    /// Whether `proxy` is banned or cooling down for `exchange` now, by the aggregator's
    /// health or by this service's own: a probe must not ask that exchange through it
    /// (Binance bans an IP, 418, that keeps asking while a 429's `Retry-After` runs).
    pub fn barred_for(&self, proxy: &ProxyId, exchange: &ExchangeId) -> bool {
        let state = self.state();
        let (now, wall) = (Instant::now(), Utc::now());
        state.pushed.get(proxy).is_some_and(|stats| proxybus_shared::health::is_barred(stats, exchange, wall))
            || state.local.get(proxy).is_some_and(|local| local.barred_for(exchange, now))
    }

    /// Folds the result of one active check of `proxy`.
    pub fn record_check(&self, proxy: &ProxyId, passed: bool) {
        let mut state = self.state();
        state.checked.insert(*proxy);
        let changed = state.local.entry(*proxy).or_default().fold_check(passed, &self.options.health);
        if changed {
            tracing::warn!(proxy_id = %proxy, up = passed, "active checks changed the proxy's state");
        }
    }

    /// Active leases of `proxy`.
    pub fn active_leases(&self, proxy: &ProxyId) -> u32 {
        let mut state = self.state();
        state.leases.expire(Instant::now());
        state.leases.active(proxy)
    }

    /// Every proxy of the inventory (or of one region) with its health, credentials redacted.
    pub fn proxies(&self, region: Option<&Region>) -> Vec<ProxyView> {
        let inventory = self.inventory();
        let now = Instant::now();
        let wall = Utc::now();
        let mut state = self.state();
        state.leases.expire(now);
        inventory
            .proxies()
            .filter(|p| region.is_none_or(|r| p.region() == r))
            .map(|proxy| {
                let local = state.local.get(proxy.id()).cloned().unwrap_or_default();
                let pushed = state.pushed.get(proxy.id()).cloned();
                let pushed_ejected = pushed.as_ref().is_some_and(|s| proxybus_shared::health::is_ejected(s, wall));
                let state_now = if pushed_ejected || local.ejected(now) || local.check_down {
                    HealthState::Ejected
                } else if pushed.as_ref().is_some_and(|s| s.state == HealthState::Degraded) {
                    HealthState::Degraded
                } else {
                    HealthState::Healthy
                };
                let mut barred: Vec<ExchangeId> =
                    local.barred.iter().filter(|(_, until)| **until > now).map(|(ex, _)| ex.clone()).collect();
                barred.sort();
                ProxyView {
                    proxy_id: *proxy.id(),
                    proxy_url: proxy.redacted_url().to_owned(),
                    region: proxy.region().clone(),
                    weight: proxy.weight(),
                    tags: proxy.tags().to_vec(),
                    enabled: proxy.enabled(),
                    active_leases: state.leases.active(proxy.id()),
                    max_leases: proxy.max_leases(),
                    state: state_now,
                    local: LocalView {
                        ejected: local.ejected(now),
                        ejected_for_seconds: local
                            .ejected_until
                            .filter(|until| *until > now)
                            .map(|until| until.duration_since(now).as_secs()),
                        consecutive_failures: local.consecutive_failures,
                        barred_exchanges: barred,
                        check: match (state.checked.contains(proxy.id()), local.check_down) {
                            (false, _) => "unchecked",
                            (true, true) => "down",
                            (true, false) => "up",
                        },
                        latency_ewma_ms: state.latency.get(proxy.id()).map(|e| e.value(now)),
                    },
                    health: pushed,
                }
            })
            .collect()
    }
}

/// One request's choice: what it asks for, where it may be answered from, and the
/// time, fixed while the choice is made. Each step of the module documentation's
/// order is one method.
struct Choice<'a> {
    request: &'a ProxyRequest,
    inventory: &'a Inventory,
    /// The requested pool, then its fallback regions, nearest first.
    chain: Vec<&'a Pool>,
    /// The requested pool (the default region's when the request names none, or one
    /// the inventory lacks).
    home: &'a Pool,
    /// The region asked for (`home`'s when the request names none).
    requested_region: Region,
    /// The exchange's rate-budget headroom (`None`: the exchange is not budgeted).
    headroom: Option<f64>,
    now: Instant,
    wall: DateTime<Utc>,
}

impl<'a> Choice<'a> {
    fn new(inventory: &'a Inventory, request: &'a ProxyRequest, headroom: Option<f64>) -> Self {
        let chain = inventory.region_chain(request.region.as_ref());
        let home = chain[0];
        let requested_region = request.region.clone().unwrap_or_else(|| home.region().clone());
        Self { request, inventory, chain, home, requested_region, headroom, now: Instant::now(), wall: Utc::now() }
    }

    fn exchange(&self) -> &'a ExchangeId {
        &self.request.exchange_id
    }

    /// Whether `proxy` serves the request at all: its exchange and connection type,
    /// a scheme the caller can use (`proxy_schemes`), and not excluded by the caller
    /// (`exclude_proxy_ids`, a retry). One that does not is never chosen, not even in
    /// panic mode.
    fn serves(&self, proxy: &Proxy) -> bool {
        proxy.serves(self.exchange(), self.request.connection_type)
            && proxy.url().scheme().accepted_by(&self.request.proxy_schemes)
            && !self.request.excludes(proxy.id())
    }

    /// Whether `proxy` may be chosen for `session` now: it serves the request, is
    /// usable, has room, and is not near the exchange's per-IP limit (its rate budget:
    /// such a proxy is skipped while others have room; when none has, panic mode
    /// answers the least loaded).
    fn may_choose(&self, state: &State, proxy: &Proxy, session: &Session) -> bool {
        self.serves(proxy)
            && state.usable(proxy, self.exchange(), self.now, self.wall)
            && state.has_room(proxy, session)
            && state.has_budget_room(proxy, self.exchange(), self.headroom, self.wall)
    }

    /// Whether `proxy` belongs to the requested region or one of its fallbacks.
    fn in_chain(&self, proxy: &Proxy) -> bool {
        self.chain.iter().any(|pool| pool.region() == proxy.region())
    }

    fn pool_of(&self, proxy: &Proxy) -> &'a Pool {
        self.inventory.pool(proxy.region()).expect("a proxy's region has a pool")
    }

    /// Step 1, session: the `session_key` session's proxy `id`, while it may still be chosen.
    fn session_proxy(&self, state: &State, session: &Session, id: &ProxyId) -> Option<Arc<Proxy>> {
        let proxy = self.inventory.proxy(id)?;
        (self.in_chain(proxy) && self.may_choose(state, proxy, session)).then(|| proxy.clone())
    }

    /// Step 1, sticky: in a sticky pool, the client's proxy from an earlier answer while
    /// it may still be chosen. A `session_key` session is sticky by itself; per-client
    /// stickiness is for the others.
    fn sticky_proxy(&self, state: &State, session: &Session) -> Option<Arc<Proxy>> {
        if !self.home.sticky() || self.request.session_key.is_some() {
            return None;
        }
        let proxy = self.inventory.proxy(state.sticky.get(session, self.now)?)?;
        (self.in_chain(proxy) && self.may_choose(state, proxy, session)).then(|| proxy.clone())
    }

    /// Step 1, a drained lease: a session that holds a lease on a drained proxy keeps
    /// it; a drain stops new leases while existing ones finish (docs/health.md,
    /// "Operator controls").
    fn drained_lease_proxy(&self, state: &State, session: &Session) -> Option<Arc<Proxy>> {
        let proxy = self.inventory.proxy(state.leases.held_by(session)?)?;
        let keeps = self.in_chain(proxy)
            && self.serves(proxy)
            && !state.usable(proxy, self.exchange(), self.now, self.wall)
            && state.keepable(proxy, self.exchange(), self.now, self.wall);
        keeps.then(|| proxy.clone())
    }

    /// Steps 2 and 3, region then fallback regions: the first pool of the chain with a
    /// proxy that may be chosen (other than `avoid`) answers, by its strategy.
    fn pick_by_strategy(
        &self,
        state: &mut State,
        session: &Session,
        avoid: Option<&ProxyId>,
        default_latency_ms: f64,
    ) -> Option<(&'a Pool, Arc<Proxy>)> {
        for &pool in &self.chain {
            let healthy: Vec<&Arc<Proxy>> = pool
                .proxies()
                .iter()
                .filter(|p| self.may_choose(state, p, session) && avoid.is_none_or(|avoided| p.id() != avoided))
                .collect();
            if healthy.is_empty() {
                continue;
            }
            let candidates: Vec<Candidate> = healthy
                .iter()
                .map(|p| Candidate {
                    weight: p.weight(),
                    leases: state.leases.active(p.id()),
                    latency_ms: state.latency_ms(p, self.now, default_latency_ms),
                })
                .collect();
            let turn = state.turns.entry(pool.region().clone()).or_default();
            let index = pick(pool.strategy(), &candidates, turn, &mut state.rng);
            if pool.region() != self.home.region() {
                metrics::counter!(m::REGION_FALLBACKS, "from" => self.home.region().to_string(), "to" => pool.region().to_string())
                    .increment(1);
            }
            return Some((pool, healthy[index].clone()));
        }
        None
    }

    /// Step 4, nothing may be chosen anywhere: the requested pool's `when_all_ejected`
    /// (`panic` answers the least-bad proxy, `fail` no proxy, `direct` a direct connection).
    fn when_all_ejected(&self, state: &mut State, session: Session) -> Result<Selection, SelectError> {
        let home = self.home;
        match home.when_all_ejected() {
            WhenAllEjected::Fail => {
                metrics::counter!(m::NO_PROXY, "region" => home.region().to_string()).increment(1);
                Err(self.no_proxy("no healthy proxy and the pool is configured to fail"))
            }
            WhenAllEjected::Direct => {
                metrics::counter!(m::PANICS, "region" => home.region().to_string(), "answer" => "direct").increment(1);
                Ok(Selection {
                    proxy: None,
                    strategy: "direct",
                    ttl_seconds: home.ttl_seconds(),
                    fallback_policy: home.fallback_policy(),
                    region: None,
                    requested_region: self.requested_region.clone(),
                    region_fallback: false,
                    session: None,
                })
            }
            WhenAllEjected::Panic => {
                let Some(proxy) = self.least_bad(state) else {
                    metrics::counter!(m::NO_PROXY, "region" => home.region().to_string()).increment(1);
                    return Err(self.no_proxy("no proxy of the region or its fallbacks serves this exchange"));
                };
                metrics::counter!(m::PANICS, "region" => home.region().to_string(), "answer" => "least_bad")
                    .increment(1);
                tracing::warn!(region = %home.region(), exchange = %self.exchange(), proxy_id = %proxy.id(), "panic mode: every proxy is ejected, answering the least bad");
                let pool = self.pool_of(&proxy);
                Ok(self.grant(state, session, pool, proxy, "panic"))
            }
        }
    }

    /// Panic mode's answer: of the proxies that serve the request and that no operator
    /// keeps from its exchange, the least bad of the nearest region that has one.
    fn least_bad(&self, state: &State) -> Option<Arc<Proxy>> {
        let (exchange, now, wall) = (self.exchange(), self.now, self.wall);
        self.chain
            .iter()
            .find_map(|pool| {
                pool.proxies().iter().filter(|p| self.serves(p) && !state.operator_excluded(p, exchange, wall)).min_by(
                    |a, b| {
                        let (a, b) = (state.badness(a, exchange, now, wall), state.badness(b, exchange, now, wall));
                        a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
                    },
                )
            })
            .cloned()
    }

    fn no_proxy(&self, reason: &'static str) -> SelectError {
        SelectError::NoProxyAvailable {
            region: self.requested_region.clone(),
            exchange: self.exchange().clone(),
            reason,
        }
    }

    /// Hands `proxy` of `pool` to `session` by `strategy`: a lease for the pool's TTL,
    /// and in a sticky pool the client's binding (not for `panic` or `session` answers).
    fn grant(
        &self,
        state: &mut State,
        session: Session,
        pool: &Pool,
        proxy: Arc<Proxy>,
        strategy: &'static str,
    ) -> Selection {
        let now = self.now;
        let ttl = Duration::from_secs(pool.ttl_seconds());
        if self.home.sticky() && strategy != "panic" && strategy != "session" {
            state.sticky.bind(session.clone(), *proxy.id(), now + ttl, now);
        }
        state.leases.grant(session, *proxy.id(), now + ttl);
        metrics::counter!(m::SELECTIONS, "region" => pool.region().to_string(), "strategy" => strategy).increment(1);
        Selection {
            region: Some(pool.region().clone()),
            // Asked of another region than the one answering (a region the inventory lacks
            // included: its requests are served by the default region).
            region_fallback: pool.region() != &self.requested_region,
            proxy: Some(proxy),
            strategy,
            ttl_seconds: pool.ttl_seconds(),
            fallback_policy: pool.fallback_policy(),
            requested_region: self.requested_region.clone(),
            session: None,
        }
    }
}

fn phase_name(phase: FeedbackPhase) -> &'static str {
    match phase {
        FeedbackPhase::ConnectStart => "connect_start",
        FeedbackPhase::Connected => "connected",
        FeedbackPhase::Failed => "failed",
        FeedbackPhase::Disconnected => "disconnected",
        FeedbackPhase::Request => "request",
    }
}
