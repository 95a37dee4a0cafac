//! Leases and sticky sessions, both keyed by a [`Session`]: one client, one
//! exchange, one connection type.
//!
//! A lease says "this session is using this proxy": it is granted with every
//! answer, replaces the session's previous lease, and ends on feedback
//! `disconnected` (or `failed`) for that proxy or when the answer's TTL runs out.
//! `least_connections` and `p2c_ewma` count them, and `max_leases` caps them.
//!
//! A sticky binding outlives the lease: a websocket feed that disconnects and
//! reconnects within the TTL gets the same proxy (the same exit IP) while that
//! proxy stays healthy.
//!
//! A [`SessionKey`] (`ProxyRequest.session_key`) names a logical session that
//! any client may continue: its [`SessionBinding`] keeps the proxy while it stays
//! healthy, counts its uses, and says when the session is due to move
//! (the pool's rotation plan, `docs/health.md`).

use std::collections::{BTreeMap, HashMap};

use proxybus_shared::{ConnectionType, ExchangeId, ProxyId, ProxyRequest};
use tokio::time::Instant;

/// One client's use of one exchange over one connection type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Session {
    /// The client (`cryptofeed-{host}-{pid}`).
    pub client_id: String,
    /// The exchange.
    pub exchange: ExchangeId,
    /// The connection type.
    pub connection_type: ConnectionType,
}

impl Session {
    /// The session a request belongs to.
    pub(crate) fn of(request: &ProxyRequest) -> Self {
        Self {
            client_id: request.client_id.clone(),
            exchange: request.exchange_id.clone(),
            connection_type: request.connection_type,
        }
    }
}

#[derive(Debug)]
struct Lease {
    proxy: ProxyId,
    expires: Instant,
    seq: u64,
}

/// Active leases per proxy, expiring at their TTL.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    by_session: HashMap<Session, Lease>,
    active: HashMap<ProxyId, u32>,
    expiries: BTreeMap<(Instant, u64), Session>,
    seq: u64,
}

impl LeaseTable {
    /// Grants `session` a lease on `proxy` until `expires`, ending its previous lease.
    pub(crate) fn grant(&mut self, session: Session, proxy: ProxyId, expires: Instant) {
        self.end(&session);
        self.seq += 1;
        *self.active.entry(proxy).or_default() += 1;
        self.expiries.insert((expires, self.seq), session.clone());
        self.by_session.insert(session, Lease { proxy, expires, seq: self.seq });
    }

    /// Ends the lease of `session` if it is on `proxy`; whether there was one.
    pub(crate) fn release(&mut self, session: &Session, proxy: &ProxyId) -> bool {
        if self.by_session.get(session).is_some_and(|lease| &lease.proxy == proxy) {
            self.end(session);
            true
        } else {
            false
        }
    }

    fn end(&mut self, session: &Session) {
        if let Some(lease) = self.by_session.remove(session) {
            self.expiries.remove(&(lease.expires, lease.seq));
            self.decrement(&lease.proxy);
        }
    }

    fn decrement(&mut self, proxy: &ProxyId) {
        if let Some(count) = self.active.get_mut(proxy) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.active.remove(proxy);
            }
        }
    }

    /// Ends every lease whose TTL ran out by `now`; how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut ended = 0;
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, seq), session) = entry.remove_entry();
            if let Some(lease) = self.by_session.get(&session)
                && lease.seq == seq
            {
                let lease = self.by_session.remove(&session).expect("just seen");
                self.decrement(&lease.proxy);
                ended += 1;
            }
        }
        ended
    }

    /// Active leases on `proxy`.
    pub(crate) fn active(&self, proxy: &ProxyId) -> u32 {
        self.active.get(proxy).copied().unwrap_or(0)
    }

    /// The proxy `session` holds a lease on.
    pub(crate) fn held_by(&self, session: &Session) -> Option<&ProxyId> {
        self.by_session.get(session).map(|lease| &lease.proxy)
    }

    /// Whether there is no active lease.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}

/// Sticky bindings of sessions to proxies, each until its expiry.
#[derive(Debug, Default)]
pub(crate) struct StickyTable {
    bindings: HashMap<Session, (ProxyId, Instant)>,
    sweep_at: usize,
}

impl StickyTable {
    /// The proxy `session` is bound to at `now`.
    pub(crate) fn get(&self, session: &Session, now: Instant) -> Option<&ProxyId> {
        self.bindings.get(session).filter(|(_, until)| *until > now).map(|(proxy, _)| proxy)
    }

    /// Binds `session` to `proxy` until `until` (`now` is the current time).
    pub(crate) fn bind(&mut self, session: Session, proxy: ProxyId, until: Instant, now: Instant) {
        self.bindings.insert(session, (proxy, until));
        if self.bindings.len() > self.sweep_at {
            // Expired bindings are swept when the table has doubled since the last sweep,
            // so that clients that never come back cost nothing for long.
            self.bindings.retain(|_, (_, expires)| *expires > now);
            self.sweep_at = (self.bindings.len() * 2).max(1024);
        }
    }
}

/// A logical session of `ProxyRequest.session_key`, per exchange and connection type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    /// The caller's session key.
    pub key: String,
    /// The exchange.
    pub exchange: ExchangeId,
    /// The connection type.
    pub connection_type: ConnectionType,
}

impl SessionKey {
    /// The session a request names, if it names one.
    pub(crate) fn of(request: &ProxyRequest) -> Option<Self> {
        Some(Self {
            key: request.session_key.clone()?,
            exchange: request.exchange_id.clone(),
            connection_type: request.connection_type,
        })
    }
}

/// Where a session is and when it moves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionBinding {
    /// The session's proxy.
    pub proxy: ProxyId,
    /// Answers given with it since it was bound.
    pub uses: u32,
    /// When it is due to move (`None`: not by time).
    pub rotate_at: Option<Instant>,
    /// The last answer given with it.
    pub last_used: Instant,
}

/// Sessions of `session_key` and their proxies; a session unused for `idle` is forgotten.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    bindings: HashMap<SessionKey, SessionBinding>,
    sweep_at: usize,
}

impl SessionTable {
    /// The binding of `session`, unless it was unused for `idle` by `now`.
    pub(crate) fn get(&self, session: &SessionKey, now: Instant, idle: std::time::Duration) -> Option<&SessionBinding> {
        self.bindings.get(session).filter(|b| b.last_used + idle > now)
    }

    /// Counts one more answer with the session's proxy.
    pub(crate) fn used(&mut self, session: &SessionKey, now: Instant) -> Option<&SessionBinding> {
        let binding = self.bindings.get_mut(session)?;
        binding.uses += 1;
        binding.last_used = now;
        Some(binding)
    }

    /// Binds `session` to `proxy` (its first use), due to move at `rotate_at`.
    pub(crate) fn bind(
        &mut self,
        session: SessionKey,
        proxy: ProxyId,
        rotate_at: Option<Instant>,
        now: Instant,
        idle: std::time::Duration,
    ) {
        self.bindings.insert(session, SessionBinding { proxy, uses: 1, rotate_at, last_used: now });
        if self.bindings.len() > self.sweep_at {
            self.bindings.retain(|_, b| b.last_used + idle > now);
            self.sweep_at = (self.bindings.len() * 2).max(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn session(client: &str) -> Session {
        Session {
            client_id: client.into(),
            exchange: "binance".parse().unwrap(),
            connection_type: ConnectionType::Http,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_end_on_release_on_a_new_grant_and_at_their_ttl() {
        let a = proxybus_shared::proxy_id("http://a:1");
        let b = proxybus_shared::proxy_id("http://b:1");
        let mut table = LeaseTable::default();
        let now = Instant::now();
        table.grant(session("c1"), a, now + Duration::from_secs(10));
        table.grant(session("c2"), a, now + Duration::from_secs(20));
        assert_eq!(table.active(&a), 2);
        table.grant(session("c1"), b, now + Duration::from_secs(10));
        assert_eq!((table.active(&a), table.active(&b)), (1, 1), "a new grant ends the session's old lease");
        assert!(!table.release(&session("c2"), &b), "release names the proxy the lease is on");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(table.expire(Instant::now()), 1);
        assert_eq!((table.active(&a), table.active(&b)), (1, 0));
        assert!(table.release(&session("c2"), &a));
        assert!(table.is_empty());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(table.expire(Instant::now()), 0, "released leases do not expire twice");
    }
}
