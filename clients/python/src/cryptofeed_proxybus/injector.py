"""The seed's ``ProxyInjector`` for cryptofeed, backed by :class:`ProxybusClient`.

cryptofeed's connection code calls ``get_http_proxy_url(exchange_id)`` **synchronously**, so it is
answered from a local cache of leases, warmed at start and refreshed in the background before each
lease's TTL runs out. On a cold miss inside a running event loop it answers at once from the
embedded settings (or directly) and fetches a lease in the background; outside any running loop
(cryptofeed reading symbols while a feed is built) it may wait for the resolver, since no loop is
held up. ``create_websocket_connection`` calls ``websockets.connect`` through the module attribute,
adding ``proxy=`` only when a proxy is used, and reports ``connect_start``, then ``connected`` with
the latency or ``failed`` with the ``error_kind`` (handshake status 403/418/429/451 …).

After an exchange's verdict on a proxy (403, 418, 429, 451, websocket close 1008/1013) the proxy is
barred for that exchange locally (for ``Retry-After``, at least :data:`MIN_BAR_SECONDS`) and the next
lease asks the resolver to exclude it (``exclude_proxy_ids``), so the feed reconnects elsewhere.

The :class:`ProxybusClient` runs on the injector's own thread and event loop ("proxybus"), so any
number of feed loops can share it and no NATS round trip ever runs on a feed's loop.

Module functions as in cryptofeed's proxy branch: :func:`init_proxy_system`,
:func:`get_proxy_injector`, :func:`load_proxy_settings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import websockets

from .client import DEFAULT_REQUEST_TIMEOUT, ProxybusClient, ProxybusError
from .lease import ProxyLease
from .models import FeedbackPhase
from .outcomes import (
    error_kind_of_exception,
    error_kind_of_status,
    is_verdict,
    response_headers_of,
    retry_after_seconds,
    usage_headers,
)
from .settings import NatsSettings, ProxySettings, load_proxy_settings
from .wire import TOKEN_PATTERN, ConnectionType, is_socks, redact_text, scheme_of

LOG = logging.getLogger("cryptofeed_proxybus")
T = TypeVar("T")

#: Shortest local bar of a proxy after an exchange's verdict without ``Retry-After`` (seconds):
#: proxybus' health model cools a 429/418 down for 60 s by default (``docs/health.md``).
MIN_BAR_SECONDS = 60
#: A cached lease is refreshed when this share of its TTL has passed.
REFRESH_AT = 0.8


def exchange_id_of(name: str) -> str:
    """The bus's exchange id of a cryptofeed feed or connection id.

    ``BINANCE`` -> ``binance``; a connection id ``BINANCE.ws.3`` or ``COINBASE.http.1`` -> the part
    before the first dot. Raises ``ValueError`` when the result is not ``[a-z0-9_-]{1,64}``.
    """
    exchange = name.split(".", 1)[0].strip().lower()
    if not TOKEN_PATTERN.match(exchange):
        raise ValueError(f"cannot derive an exchange id from {name!r}")
    return exchange


def socks_usable_by(library: str) -> bool:
    """Whether ``library`` (``aiohttp``, ``requests``, ``websockets``) can connect through SOCKS here
    (``aiohttp-socks``, ``PySocks``, ``python-socks`` installed)."""
    module = {"aiohttp": "aiohttp_socks", "requests": "socks", "websockets": "python_socks"}[library]
    return importlib.util.find_spec(module) is not None


def schemes_for(library: str) -> tuple[str, ...]:
    """Proxy schemes ``library`` can use here: ``http``/``https``, plus SOCKS when its package is installed."""
    if socks_usable_by(library):
        return ()  # any
    return ("http", "https")


class _LoopThread:
    """An event loop on a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class ProxyInjector:
    """Proxies for cryptofeed's connections, leased from proxybus (or the embedded settings).

    ``service_client`` None means embedded mode: leases come from ``proxy_settings`` alone.
    ``warm`` names ``(exchange_id, connection_type)`` pairs leased at :meth:`start`.
    Proxying is off when ``proxy_settings.enabled`` is false: every method then answers
    "no proxy", calls pass through unchanged and nothing is reported.
    """

    def __init__(
        self,
        proxy_settings: ProxySettings,
        service_client: ProxybusClient | None = None,
        *,
        warm: Iterable[tuple[str, ConnectionType]] = (),
        http_library: str = "aiohttp",
        embedded_client: ProxybusClient | None = None,
    ) -> None:
        self.settings = proxy_settings
        self.service_client = service_client
        self.embedded_mode = service_client is None
        #: The client leases come from; in embedded mode one that never connects (``embedded_client``
        #: sets its names and fallback policy) and answers from the settings alone.
        self.client = service_client or embedded_client or ProxybusClient(proxy_settings, NatsSettings(servers=[]))
        self._warm = list(warm)
        self._http_library = http_library
        self._runner: _LoopThread | None = None
        self._lock = threading.Lock()
        self._http_leases: dict[str, ProxyLease] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._barred: dict[tuple[str, str], dict[str, float]] = {}
        self._started = False
        self._started_at = 0.0

    @property
    def enabled(self) -> bool:
        """Whether proxying is on (``CRYPTOFEED_PROXY_ENABLED``)."""
        return self.settings.enabled

    # --- life cycle -----------------------------------------------------------------------------

    def start(self, warm_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        """Starts the bus client on the injector's thread and warms the cache (waits up to
        ``warm_timeout`` seconds for the warm-up when called outside a running event loop)."""
        with self._lock:
            if self._started or not self.enabled:
                return
            self._started = True
            self._started_at = time.monotonic()
            self._runner = _LoopThread("proxybus")
        if not self.embedded_mode:
            self._runner.submit(self.client.start()).result(timeout=5)
            self._runner.submit(self._refresh_forever())
        if self._warm:
            warmed = self._runner.submit(self._warm_up(self._warm, warm_timeout))
            if not _in_running_loop():
                with contextlib.suppress(Exception):
                    warmed.result(timeout=warm_timeout + 1)

    def close(self) -> None:
        """Publishes queued feedback (briefly), closes the bus client and stops the thread."""
        with self._lock:
            runner, self._runner, self._started = self._runner, None, False
        if runner is None:
            return
        if not self.embedded_mode:
            with contextlib.suppress(Exception):
                runner.submit(self.client.close()).result(timeout=10)
        with contextlib.suppress(Exception):
            runner.submit(_cancel_other_tasks()).result(timeout=5)
        runner.stop()

    async def _warm_up(self, pairs: list[tuple[str, ConnectionType]], timeout: float) -> None:
        if not self.embedded_mode:
            await self.client.wait_connected(timeout)
        for exchange, connection_type in pairs:
            with contextlib.suppress(Exception):
                lease = await self._lease(exchange_id_of(exchange), connection_type)
                if connection_type == "http":
                    self._http_leases[lease.exchange_id] = lease

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for exchange, lease in list(self._http_leases.items()):
                age = lease.ttl_seconds - (lease.expires_at - now)
                if lease.source != "embedded" and age >= REFRESH_AT * lease.ttl_seconds:
                    with contextlib.suppress(Exception):
                        self._http_leases[exchange] = await self._lease(exchange, "http", use_cache=False)

    def _ensure_started(self) -> _LoopThread:
        if self._runner is None:
            self.start(warm_timeout=0)
        assert self._runner is not None
        return self._runner

    async def _on_runner(self, coro: Coroutine[Any, Any, T]) -> T:
        """Awaits ``coro`` on the injector's loop from any loop."""
        runner = self._ensure_started()
        if runner.is_current:
            return await coro
        return await asyncio.wrap_future(runner.submit(coro))

    # --- leases ---------------------------------------------------------------------------------

    def barred(self, exchange_id: str, connection_type: ConnectionType) -> set[str]:
        """Proxy ids barred locally for ``exchange_id``/``connection_type`` now."""
        now = time.monotonic()
        bars = self._barred.get((exchange_id, connection_type), {})
        for pid, until in list(bars.items()):
            if until <= now:
                del bars[pid]
        return set(bars)

    def bar(self, lease: ProxyLease, retry_after: int | None = None) -> None:
        """Bars ``lease``'s proxy for its exchange and connection type (and the other connection
        type too: the exchange judged the IP) for ``retry_after`` seconds, at least
        :data:`MIN_BAR_SECONDS`, and forgets cached leases of it."""
        if lease.proxy_id is None:
            return
        until = time.monotonic() + max(retry_after or 0, MIN_BAR_SECONDS)
        for connection_type in ("http", "websocket"):
            self._barred.setdefault((lease.exchange_id, connection_type), {})[lease.proxy_id] = until
            self.client.invalidate(ProxyLease(**{**lease.__dict__, "connection_type": connection_type}))
        cached = self._http_leases.get(lease.exchange_id)
        if cached is not None and cached.proxy_id == lease.proxy_id:
            del self._http_leases[lease.exchange_id]
        LOG.warning(
            "proxybus: %s barred %s (%s) for %s s; next connections use another proxy",
            lease.exchange_id,
            lease.proxy_id,
            lease.redacted_url,
            max(retry_after or 0, MIN_BAR_SECONDS),
        )

    async def _lease(
        self,
        exchange_id: str,
        connection_type: ConnectionType,
        schemes: tuple[str, ...] = (),
        use_cache: bool = True,
    ) -> ProxyLease:
        """A lease on the injector's loop: barred proxies excluded, unusable schemes refused."""
        exclude = self.barred(exchange_id, connection_type)
        if self.embedded_mode:
            return self.client.fallback(exchange_id, connection_type, exclude=exclude, schemes=schemes)
        try:
            lease = await self.client.get_proxy(
                exchange_id, connection_type, exclude=exclude, schemes=schemes, use_cache=use_cache
            )
        except ProxybusError as err:
            LOG.warning("proxybus: %s; using the fallback", err)
            return self.client.fallback(exchange_id, connection_type, exclude=exclude, schemes=schemes)
        if lease.proxy_url is not None and (
            lease.proxy_id in exclude or (schemes and scheme_of(lease.proxy_url) not in schemes)
        ):
            # A resolver older than exclude_proxy_ids / proxy_schemes ignored them.
            self.client.invalidate(lease)
            return self.client.fallback(exchange_id, connection_type, exclude=exclude, schemes=schemes)
        return lease

    async def get_lease(
        self, exchange_id: str, connection_type: ConnectionType, schemes: tuple[str, ...] = ()
    ) -> ProxyLease | None:
        """A lease for ``exchange_id`` (any case, or a cryptofeed connection id); None when proxying is off."""
        if not self.enabled:
            return None
        return await self._on_runner(self._lease(exchange_id_of(exchange_id), connection_type, schemes))

    def http_lease(self, exchange_id: str, schemes: tuple[str, ...] | None = None) -> ProxyLease | None:
        """The REST lease for ``exchange_id`` without waiting on a running loop (see the module doc)."""
        if not self.enabled:
            return None
        exchange = exchange_id_of(exchange_id)
        accepted = schemes_for(self._http_library) if schemes is None else schemes
        lease = self._http_leases.get(exchange)
        if lease is not None and not lease.expired() and lease.proxy_id not in self.barred(exchange, "http"):
            return lease
        runner = self._ensure_started()
        if runner.is_current or _in_running_loop():
            key = (exchange, "http")
            if key not in self._refreshing:
                self._refreshing.add(key)
                runner.submit(self._fill_http(exchange, accepted))
            exclude = self.barred(exchange, "http")
            return self.client.fallback(exchange, "http", exclude=exclude, schemes=accepted)
        # Only while the bus may still be connecting after start; later a down bus costs nothing.
        connect_wait = (
            0.0
            if self.embedded_mode
            else max(0.0, self._started_at + self.client.nats_settings.connect_timeout_seconds - time.monotonic())
        )
        future = runner.submit(self._lease_once_connected(exchange, accepted, connect_wait))
        try:
            lease = future.result(timeout=connect_wait + self.client.request_timeout + 1)
        except Exception as err:
            LOG.warning("proxybus: no lease for %s/http (%s); using the fallback", exchange, redact_text(str(err)))
            return self.client.fallback(exchange, "http", exclude=self.barred(exchange, "http"), schemes=accepted)
        if lease.source != "embedded":
            self._http_leases[exchange] = lease
        return lease

    async def _lease_once_connected(self, exchange: str, schemes: tuple[str, ...], wait: float) -> ProxyLease:
        """A REST lease for a caller that may wait (no event loop of its own runs): at start, the
        bus is given up to ``wait`` seconds (what is left of the connect timeout after
        :meth:`start`) to connect before the fallback answers."""
        if wait > 0 and not self.client.connected:
            await self.client.wait_connected(wait)
        return await self._lease(exchange, "http", schemes)

    async def _fill_http(self, exchange: str, schemes: tuple[str, ...]) -> None:
        try:
            lease = await self._lease(exchange, "http", schemes)
            if lease.source != "embedded":
                self._http_leases[exchange] = lease
        finally:
            self._refreshing.discard((exchange, "http"))

    def get_http_proxy_url(self, exchange_id: str) -> str | None:
        """The proxy URL for REST calls to ``exchange_id``, synchronously; None: connect directly."""
        lease = self.http_lease(exchange_id)
        return lease.proxy_url if lease is not None else None

    # --- websockets -----------------------------------------------------------------------------

    async def create_websocket_connection(self, url: str, exchange_id: str, **kwargs: Any) -> Any:
        """``websockets.connect(url, **kwargs)`` through the leased proxy (``proxy=`` added only then).

        Reports ``connect_start``, ``connected`` with the latency, or ``failed`` with the
        ``error_kind`` (and status and ``Retry-After`` of a refused handshake), then re-raises.
        """
        connection, _ = await self.connect_websocket(url, exchange_id, **kwargs)
        return connection

    async def connect_websocket(self, url: str, exchange_id: str, **kwargs: Any) -> tuple[Any, ProxyLease | None]:
        """As :meth:`create_websocket_connection`, also returning the lease (None: direct or off)."""
        if not self.enabled:
            return await websockets.connect(url, **kwargs), None
        lease = await self.get_lease(exchange_id, "websocket", schemes_for("websockets"))
        if lease is None or lease.proxy_url is None:
            return await websockets.connect(url, **kwargs), None
        kwargs["proxy"] = lease.proxy_url
        self.report(lease, "connect_start", True)
        started = time.perf_counter()
        try:
            connection = await websockets.connect(url, **kwargs)
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError):
                raise
            self.report_failure(lease, err, _ms_since(started))
            raise
        self.report(lease, "connected", True, latency_ms=_ms_since(started))
        return connection, lease

    # --- reporting ------------------------------------------------------------------------------

    def report(self, lease: ProxyLease | None, phase: FeedbackPhase, success: bool, **fields: Any) -> None:
        """Queues feedback about ``lease`` (nothing for a direct connection or in embedded mode)."""
        if lease is None or lease.proxy_url is None or self.embedded_mode:
            return
        self.client.report_feedback(lease.feedback(self.client.client_id, phase, success, **fields))

    def report_failure(self, lease: ProxyLease | None, err: BaseException, latency_ms: int | None = None) -> None:
        """Reports a failed connection attempt classified from ``err``; bars the proxy on a verdict."""
        if lease is None or lease.proxy_url is None:
            return
        kind, status = error_kind_of_exception(err)
        headers = response_headers_of(err)
        retry_after = retry_after_seconds(headers)
        self.report(
            lease,
            "failed",
            False,
            latency_ms=latency_ms,
            error_kind=kind,
            status_code=status,
            retry_after_seconds=retry_after,
            error_details=f"{type(err).__name__}: {err}",
            usage_headers=usage_headers(headers),
        )
        if is_verdict(status=status):
            self.bar(lease, retry_after)
        elif kind in ("timeout", "refused", "proxy_auth", "tls", "dns"):
            self.client.invalidate(lease)  # the proxy failed: ask again next time

    def report_http_response(self, lease: ProxyLease | None, status: int, headers: Any, latency_ms: int | None) -> None:
        """Reports one REST answer through ``lease`` (phase ``request``): its status, ``Retry-After``,
        the exchange's usage headers and the latency; bars the proxy on a verdict."""
        if lease is None or lease.proxy_url is None:
            return
        plain = {str(k): str(v) for k, v in headers.items()} if headers is not None else {}
        retry_after = retry_after_seconds(plain)
        self.report(
            lease,
            "request",
            status < 400,
            latency_ms=latency_ms,
            error_kind=error_kind_of_status(status),
            status_code=status,
            retry_after_seconds=retry_after,
            usage_headers=usage_headers(plain),
        )
        if is_verdict(status=status):
            self.bar(lease, retry_after)

    def report_websocket_closed(
        self, lease: ProxyLease | None, close_code: int | None, lifetime_ms: int, reason: str = ""
    ) -> None:
        """Reports a websocket's end (phase ``disconnected``) with its close code and lifetime;
        a normal close (1000) is a success; bars the proxy on a verdict close (1008, 1013)."""
        if lease is None or lease.proxy_url is None:
            return
        success = close_code == 1000
        self.report(
            lease,
            "disconnected",
            success,
            latency_ms=lifetime_ms,
            error_kind=None if success else "ws_closed",
            error_details=None if success else f"close code {close_code}: {reason}"[:200],
            ws_close_code=close_code,
        )
        if is_verdict(close_code=close_code):
            self.bar(lease)


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _ms_since(started: float) -> int:
    return max(0, int((time.perf_counter() - started) * 1000))


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_INJECTOR: ProxyInjector | None = None
_INJECTOR_LOCK = threading.Lock()


def get_proxy_injector() -> ProxyInjector | None:
    """The process's injector set by :func:`init_proxy_system` (None: proxying off or not set up)."""
    return _INJECTOR


def init_proxy_system(
    settings: ProxySettings | None = None,
    *,
    nats_settings: NatsSettings | None = None,
    client_id: str | None = None,
    warm: Iterable[tuple[str, ConnectionType]] = (),
) -> ProxyInjector | None:
    """Sets up the process's injector from ``settings`` (default: :func:`load_proxy_settings`).

    Proxying off (``enabled`` false): no injector, cryptofeed connects as it always did. With
    ``external_service.enabled`` leases come from proxybus on ``NATS_URL``; otherwise from the
    embedded settings alone. A previous injector is closed. As the Rust client,
    ``PROXYBUS_CLIENT_ID`` and ``PROXYBUS_REGION`` name the feed and its preferred region;
    ``PROXYBUS_FALLBACK_POLICY=fail`` forbids direct connections when neither proxybus nor the
    embedded settings give a proxy (default ``direct_connection``). Raises ``ValueError`` for an
    invalid region or policy.
    """
    global _INJECTOR
    settings = settings if settings is not None else load_proxy_settings()
    with _INJECTOR_LOCK:
        if _INJECTOR is not None:
            _INJECTOR.close()
            _INJECTOR = None
        if not settings.enabled:
            LOG.info("proxybus: proxying is off (CRYPTOFEED_PROXY_ENABLED is false)")
            return None
        region = os.environ.get("PROXYBUS_REGION") or None
        if region is not None and not TOKEN_PATTERN.match(region):
            raise ValueError(f"PROXYBUS_REGION {region!r} is not [a-z0-9_-]{{1,64}}")
        policy = os.environ.get("PROXYBUS_FALLBACK_POLICY") or "direct_connection"
        if policy not in ("direct_connection", "fail"):
            raise ValueError(f"PROXYBUS_FALLBACK_POLICY {policy!r} is not direct_connection or fail")
        client = ProxybusClient(
            settings,
            (nats_settings or NatsSettings.from_env())
            if settings.external_service.enabled
            else NatsSettings(servers=[]),
            client_id=client_id or os.environ.get("PROXYBUS_CLIENT_ID") or None,
            region=region,
            fallback_policy=policy,
            request_timeout=float(min(settings.external_service.timeout_seconds, DEFAULT_REQUEST_TIMEOUT)),
        )
        if settings.external_service.enabled:
            _INJECTOR = ProxyInjector(settings, client, warm=warm)
        else:  # embedded mode: the client only answers from the settings, with the policy above
            _INJECTOR = ProxyInjector(settings, None, warm=warm, embedded_client=client)
        _INJECTOR.start()
        return _INJECTOR


def shutdown_proxy_system() -> None:
    """Closes the process's injector (publishing queued feedback first)."""
    global _INJECTOR
    with _INJECTOR_LOCK:
        if _INJECTOR is not None:
            _INJECTOR.close()
            _INJECTOR = None


__all__ = [
    "ProxyInjector",
    "exchange_id_of",
    "get_proxy_injector",
    "init_proxy_system",
    "is_socks",
    "load_proxy_settings",
    "shutdown_proxy_system",
]
