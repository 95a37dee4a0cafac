"""``ProxybusClient``: the seed's ``ProxyServiceClient`` speaking NATS (nats-py, msgpack).

``get_proxy`` answers from a local cache within the lease's TTL, else asks the resolver on
``proxy.v1.request.{exchange}.{connection_type}`` behind a :class:`CircuitBreaker`; when the bus is
not connected, has no resolver ("no responders", answered at once by servers with headers), is
silent (timeout) or the breaker is open, it answers from the embedded ``ProxySettings``, then a
direct connection — the seed's graceful degradation, and what ``proxybus-client`` (Rust) does.

``report_feedback`` never blocks: events go into a bounded queue (the oldest is dropped and
counted when it is full) and a task publishes each to JetStream with ``Nats-Msg-Id`` =
``event_id``, awaiting the ack and retrying with the same id across reconnects, so stream
``PROXY_FEEDBACK`` folds a repeat once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from .breaker import CircuitBreaker
from .embedded import EmbeddedSelector
from .lease import ProxyLease
from .models import ErrorReply, ProxyFeedback, ProxyRequest, ProxyResponse
from .settings import NatsSettings, ProxySettings
from .wire import (
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    MSG_ID_HEADER,
    SERVICE_ERROR_CODE_HEADER,
    ConnectionType,
    Encoding,
    check_token,
    decode,
    encode,
    feedback_subject,
    proxy_id,
    redact_text,
    redact_url,
    request_subject,
)

LOG = logging.getLogger("cryptofeed_proxybus")

#: How long an answer from the embedded settings or a direct answer is kept (seconds), as in proxybus-client.
FALLBACK_TTL_SECONDS = 30
#: How long to wait for the resolver (seconds); proxybus-client's default.
DEFAULT_REQUEST_TIMEOUT = 2.0
#: How long to wait for a JetStream ack before publishing the same event again (seconds); proxybus-client's.
ACK_TIMEOUT = 3.0
#: Feedback events kept while they wait to be published; proxybus-client's default.
DEFAULT_FEEDBACK_QUEUE = 10_000


class ProxybusError(Exception):
    """Base of this package's errors."""


class ResolverError(ProxybusError):
    """The resolver answered with an error reply (``reply.code``/``reply.error``: 400, 404, 413, 503, 500)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(f"resolver: {reply.error} ({reply.code}): {redact_text(reply.message)}")
        self.reply = reply


class NoProxyError(ProxybusError):
    """No proxy could be had and the fallback policy is ``fail``."""


def default_client_id() -> str:
    """``cryptofeed-{hostname}-{pid}``, the contract's example of a ``client_id``."""
    return f"cryptofeed-{socket.gethostname().lower()}-{os.getpid()}"


@dataclass
class FeedbackStats:
    """Counters of the feedback queue: events queued, published (acked), repeats the stream
    recognised as duplicates, publish attempts retried, and events dropped (queue full)."""

    queued: int = 0
    published: int = 0
    duplicates: int = 0
    retried: int = 0
    dropped: int = 0


@dataclass
class ClientStats:
    """Where answers came from: ``cache``, ``resolver``, ``embedded``, ``direct``; and resolver failures."""

    cache: int = 0
    resolver: int = 0
    embedded: int = 0
    direct: int = 0
    resolver_failures: int = 0
    no_responders: int = 0


class ProxybusClient:
    """Leases proxies from the proxybus resolver over NATS and reports outcomes to JetStream.

    Use on one asyncio loop: ``await start()``, ``await get_proxy(...)``, ``report_feedback(...)``
    (also from other threads), ``await close()``. ``clock`` is a monotonic clock in seconds
    (injected by tests that move time by hand).
    """

    def __init__(
        self,
        settings: ProxySettings | None = None,
        nats_settings: NatsSettings | None = None,
        *,
        client_id: str | None = None,
        region: str | None = None,
        encoding: Encoding = "msgpack",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        feedback_queue_size: int = DEFAULT_FEEDBACK_QUEUE,
        fallback_policy: str = "direct_connection",
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else ProxySettings()
        self.nats_settings = nats_settings if nats_settings is not None else NatsSettings.from_env()
        self.client_id = client_id or default_client_id()
        self.region = region
        self.encoding: Encoding = encoding
        self.request_timeout = request_timeout
        self.fallback_policy = fallback_policy
        self._clock = clock
        enabled = self.settings.external_service.circuit_breaker_enabled
        self.breaker = breaker or CircuitBreaker(clock=clock, failure_threshold=5 if enabled else 2**31)
        self.embedded = EmbeddedSelector(self.settings)
        self.stats = ClientStats()
        self.feedback_stats = FeedbackStats()
        self._cache: dict[tuple[str, str, str | None, tuple[str, ...], str | None], ProxyLease] = {}
        self._nc: NatsClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: collections.deque[ProxyFeedback] = collections.deque()
        self._queue_size = feedback_queue_size
        self._queue_lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._closing = False
        #: ``Content-Type`` of the resolver's last reply (``application/msgpack`` or ``application/json``).
        self.last_reply_content_type: str | None = None

    # --- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts connecting to the bus and the feedback publisher; returns at once.

        Until the bus is connected every ``get_proxy`` is answered by the fallback.
        """
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="proxybus-connect"))
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="proxybus-feedback"))

    async def wait_connected(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the bus; whether it is connected."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    @property
    def connected(self) -> bool:
        """Whether the bus is connected now."""
        return self._nc is not None and self._nc.is_connected

    async def _connect_loop(self) -> None:
        options = self._connect_options()
        while not self._closing:
            try:
                self._nc = await nats.connect(**options)
                self._connected.set()
                where = self._nc.connected_url.geturl() if self._nc.connected_url else "?"
                LOG.info("proxybus: connected to NATS %s", redact_url(where))
                return
            except Exception as err:
                LOG.warning("proxybus: NATS not reachable (%s); using the fallback meanwhile", redact_text(str(err)))
                await asyncio.sleep(1.0)

    def _connect_options(self) -> dict[str, Any]:
        s = self.nats_settings

        async def on_error(err: Exception) -> None:
            LOG.debug("proxybus: NATS: %s", redact_text(str(err)))

        async def on_disconnected() -> None:
            self._connected.clear()
            LOG.warning("proxybus: disconnected from NATS; feedback waits, leases come from the fallback")

        async def on_reconnected() -> None:
            self._connected.set()
            LOG.info("proxybus: reconnected to NATS")
            if self._wakeup is not None:
                self._wakeup.set()

        options: dict[str, Any] = {
            "servers": s.servers,
            "name": self.client_id,
            "connect_timeout": s.connect_timeout_seconds,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        if s.token is not None:
            options["token"] = s.token.get_secret_value()
        if s.user is not None:
            options["user"] = s.user
            options["password"] = s.password.get_secret_value() if s.password else ""
        if s.creds:
            options["user_credentials"] = s.creds
        if s.ca:
            options["tls"] = ssl.create_default_context(cafile=s.ca)
        return options

    async def close(self) -> None:
        """Publishes what is queued (up to :data:`ACK_TIMEOUT` more), then closes the connection."""
        if self._connected.is_set():
            deadline = time.monotonic() + ACK_TIMEOUT
            while self._queue and time.monotonic() < deadline and self.connected:
                await asyncio.sleep(0.02)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self._queue:
            LOG.warning("proxybus: closing with %d feedback events unpublished", len(self._queue))

    # --- leases ---------------------------------------------------------------------------------

    async def get_proxy(
        self,
        exchange_id: str,
        connection_type: ConnectionType,
        region: str | None = None,
        exclude: Collection[str] = (),
        *,
        schemes: Collection[str] = (),
        use_cache: bool = True,
        session_key: str | None = None,
    ) -> ProxyLease:
        """A proxy for ``exchange_id`` (lowercase, ``[a-z0-9_-]{1,64}``) and ``connection_type``.

        From the local cache within the TTL (not when ``exclude`` names proxy ids to avoid: such a
        request asks anew and its answer replaces the cached one), else from the resolver, else
        from the embedded settings, else a direct lease. ``schemes`` limits the proxy URL schemes
        (empty: any); ``use_cache=False`` asks anew (a refresh before the TTL runs out).
        ``session_key`` (1-128 characters) names one logical session: the pool keeps its proxy
        while it stays healthy and rotates it as planned; each session is cached on its own.
        Raises ``ValueError`` for an invalid exchange id, :class:`ResolverError` when the resolver
        refuses the request, :class:`NoProxyError` when the policy is ``fail``.
        """
        check_token("exchange_id", exchange_id)
        if connection_type not in ("http", "websocket"):
            raise ValueError(f"connection_type {connection_type!r} is not http or websocket")
        region = region or self.region
        excluded = sorted(set(exclude))
        accepted = tuple(sorted(set(schemes)))
        key = (exchange_id, connection_type, region, accepted, session_key)
        now = self._clock()
        if not excluded and use_cache:
            cached = self._cache.get(key)
            if cached is not None and now < cached.expires_at:
                self.stats.cache += 1
                return ProxyLease(**{**cached.__dict__, "cached": True})
        reason = "not connected to NATS"
        if self.connected and self.breaker.allow():
            try:
                lease = await self._ask_resolver(exchange_id, connection_type, region, excluded, accepted, session_key)
            except ResolverError:
                self.breaker.on_success()  # the resolver is up and said no: not a fault of the bus
                raise
            except nats.errors.NoRespondersError:
                self.breaker.on_failure()
                self.stats.resolver_failures += 1
                self.stats.no_responders += 1
                reason = "no resolver on the bus (no responders)"
            except (TimeoutError, nats.errors.TimeoutError):
                self.breaker.on_failure()
                self.stats.resolver_failures += 1
                reason = f"no answer within {self.request_timeout:g} s"
            except Exception as err:
                self.breaker.on_failure()
                self.stats.resolver_failures += 1
                reason = redact_text(str(err)) or type(err).__name__
            else:
                self.breaker.on_success()
                self.stats.resolver += 1
                if lease.ttl_seconds > 0:
                    self._cache[key] = lease
                return lease
        elif self.connected:
            reason = "resolver breaker open"
        LOG.warning(
            "proxybus: resolver unavailable for %s/%s (%s); using the fallback", exchange_id, connection_type, reason
        )
        return self.fallback(exchange_id, connection_type, region, excluded, accepted)

    def fallback(
        self,
        exchange_id: str,
        connection_type: ConnectionType,
        region: str | None = None,
        exclude: Collection[str] = (),
        schemes: Collection[str] = (),
    ) -> ProxyLease:
        """The answer without the bus: the embedded settings, else direct (or :class:`NoProxyError`
        when the policy is ``fail``). Synchronous and local: never waits."""
        now = self._clock()
        fallback_enabled = (
            self.settings.external_service.fallback_to_embedded or not self.settings.external_service.enabled
        )
        choice = self.embedded.select(exchange_id, connection_type, exclude, schemes) if fallback_enabled else None
        if choice is not None:
            self.stats.embedded += 1
            return ProxyLease(
                proxy_url=choice.url,
                proxy_id=proxy_id(choice.url),
                ttl_seconds=FALLBACK_TTL_SECONDS,
                strategy=choice.strategy,
                source="embedded",
                exchange_id=exchange_id,
                connection_type=connection_type,
                region=region,
                expires_at=now + FALLBACK_TTL_SECONDS,
            )
        if self.fallback_policy == "fail":
            raise NoProxyError(f"no proxy for {exchange_id}/{connection_type} and the fallback policy is fail")
        self.stats.direct += 1
        return ProxyLease(
            proxy_url=None,
            proxy_id=None,
            ttl_seconds=FALLBACK_TTL_SECONDS,
            strategy="direct",
            source="direct",
            exchange_id=exchange_id,
            connection_type=connection_type,
            region=region,
            expires_at=now + FALLBACK_TTL_SECONDS,
        )

    def invalidate(self, lease: ProxyLease) -> None:
        """Forgets every cached lease of ``lease``'s proxy for its exchange and connection type."""
        for key, cached in list(self._cache.items()):
            if (
                cached.proxy_id == lease.proxy_id
                and cached.exchange_id == lease.exchange_id
                and cached.connection_type == lease.connection_type
            ):
                del self._cache[key]

    async def _ask_resolver(
        self,
        exchange_id: str,
        connection_type: ConnectionType,
        region: str | None,
        exclude: list[str],
        schemes: tuple[str, ...],
        session_key: str | None = None,
    ) -> ProxyLease:
        assert self._nc is not None
        request = ProxyRequest(
            exchange_id=exchange_id,
            connection_type=connection_type,
            region=region,
            client_id=self.client_id,
            exclude_proxy_ids=exclude,
            proxy_schemes=list(schemes),
            session_key=session_key,
        )
        headers = {CONTENT_TYPE_HEADER: JSON_CONTENT_TYPE} if self.encoding == "json" else None
        reply = await self._nc.request(
            request_subject(exchange_id, connection_type),
            encode(request.to_wire(), self.encoding),
            timeout=self.request_timeout,
            headers=headers,
        )
        self.last_reply_content_type = (reply.headers or {}).get(CONTENT_TYPE_HEADER)
        body = decode(reply.data, reply.headers)
        if reply.headers and SERVICE_ERROR_CODE_HEADER in reply.headers:
            raise ResolverError(ErrorReply.model_validate(body))
        response = ProxyResponse.model_validate(body)
        url = response.proxy_url
        if url is not None and response.proxy_id is not None and response.proxy_id != proxy_id(url):
            LOG.warning("proxybus: resolver's proxy_id %s does not match its URL; using the URL's", response.proxy_id)
        return ProxyLease(
            proxy_url=url,
            proxy_id=proxy_id(url) if url else None,
            ttl_seconds=response.ttl_seconds,
            strategy=response.strategy,
            source=response.source,
            exchange_id=exchange_id,
            connection_type=connection_type,
            region=response.region,
            fallback_policy=response.fallback_policy,
            request_id=response.request_id or request.request_id,
            expires_at=self._clock() + response.ttl_seconds,
            metadata=response.metadata,
        )

    # --- feedback -------------------------------------------------------------------------------

    def report_feedback(self, feedback: ProxyFeedback | None) -> None:
        """Queues ``feedback`` for JetStream; never blocks, callable from any thread.

        When the queue is full the oldest event is dropped, counted in ``feedback_stats.dropped``
        and logged. ``None`` (feedback about a direct connection) is ignored.
        """
        if feedback is None:
            return
        with self._queue_lock:
            if len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
                self.feedback_stats.dropped += 1
                LOG.warning(
                    "proxybus: feedback queue full (%d); dropped event %s (%d dropped so far)",
                    self._queue_size,
                    dropped.event_id,
                    self.feedback_stats.dropped,
                )
            self._queue.append(feedback)
            self.feedback_stats.queued += 1
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                wakeup.set()
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wakeup.set)

    @property
    def pending_feedback(self) -> int:
        """Events waiting to be published."""
        return len(self._queue)

    async def _publish_loop(self) -> None:
        assert self._wakeup is not None
        backoff = 0.1
        while True:
            with self._queue_lock:
                event = self._queue[0] if self._queue else None
            if event is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self.connected:
                await self._connected.wait()
                continue
            assert self._nc is not None
            try:
                ack = await self._nc.jetstream(timeout=ACK_TIMEOUT).publish(
                    feedback_subject(event.exchange_id, event.connection_type),
                    encode(event.to_wire()),
                    timeout=ACK_TIMEOUT,
                    headers={MSG_ID_HEADER: event.event_id},
                )
            except (ValueError, TypeError) as err:  # cannot be encoded: never will be
                self._drop_head(event, f"cannot be published: {err}")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.feedback_stats.retried += 1
                LOG.debug("proxybus: feedback %s not acked (%s); retrying with the same id", event.event_id, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            with self._queue_lock:
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()
            self.feedback_stats.published += 1
            if getattr(ack, "duplicate", False):
                self.feedback_stats.duplicates += 1

    def _drop_head(self, event: ProxyFeedback, why: str) -> None:
        with self._queue_lock:
            if self._queue and self._queue[0] is event:
                self._queue.popleft()
        self.feedback_stats.dropped += 1
        LOG.warning("proxybus: dropped feedback %s: %s", event.event_id, why)
