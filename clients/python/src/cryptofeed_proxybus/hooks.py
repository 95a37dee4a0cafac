"""``install()``: released cryptofeed (2.5.0) through proxybus, without changing cryptofeed.

cryptofeed 2.5.0 has no proxy system beyond a GET-only ``http_proxy``: websockets never use a
proxy, nothing reports outcomes, and a 429 makes it sleep and retry through the same IP. This
module hooks its connection classes (``cryptofeed/connection.py``):

- ``WSAsyncConn._open`` connects through :meth:`ProxyInjector.connect_websocket` (a leased
  proxy, ``connect_start``/``connected``/``failed`` reported); ``read`` and ``close`` report the
  websocket's end (``disconnected`` with its close code and lifetime in ``latency_ms``).
- ``HTTPAsyncConn._open`` (and so ``HTTPPoll``/``HTTPConcurrentPoll``) gets a session whose
  ``get``/``post``/``delete`` go through the REST lease of the feed's exchange and report each
  answer (``request``: status, ``Retry-After``, the exchange's usage headers, latency).
- ``HTTPSync.read``/``write`` (symbol lists, read with ``requests`` while a feed is built) use
  the same lease, answered synchronously (:meth:`ProxyInjector.http_lease`).

The exchange id comes from the connection id (``BINANCE.ws.3`` -> ``binance``) or, for
``HTTPSync``, from the ``uuid`` cryptofeed passes (the exchange's id). After an exchange's verdict
(403/418/429/451, close 1008/1013) the injector bars that proxy for the exchange, and
cryptofeed's own reconnect gets a different one. A SOCKS proxy is never handed to aiohttp unless
``aiohttp-socks`` is installed (nor to ``requests`` without ``PySocks``): the lease is then asked
for with ``proxy_schemes`` ``http``/``https`` and a SOCKS answer is refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from .injector import (
    ProxyInjector,
    exchange_id_of,
    get_proxy_injector,
    init_proxy_system,
    schemes_for,
    socks_usable_by,
)
from .lease import ProxyLease
from .settings import ProxySettings
from .wire import is_socks, redact_text, scheme_of

LOG = logging.getLogger("cryptofeed_proxybus")

_ORIGINALS: dict[str, Any] = {}
_INJECTOR: list[ProxyInjector] = []


def _injector() -> ProxyInjector | None:
    injector = _INJECTOR[0] if _INJECTOR else get_proxy_injector()
    return injector if injector is not None and injector.enabled else None


def installed() -> bool:
    """Whether :func:`install` has hooked cryptofeed."""
    return bool(_ORIGINALS)


def install(settings: ProxySettings | None = None, *, injector: ProxyInjector | None = None) -> ProxyInjector | None:
    """Hooks cryptofeed's connection classes so every feed's traffic goes through leased proxies.

    ``injector`` default: the one :func:`init_proxy_system` set up, else one made from
    ``settings`` (default: ``CRYPTOFEED_PROXY_*``). With proxying off the hooks pass every call
    through unchanged. Calling it again replaces the injector; :func:`uninstall` undoes it.
    Returns the injector in use (None: proxying off).
    """
    import cryptofeed.connection as connection

    if injector is None:
        injector = get_proxy_injector() if settings is None else None
        if injector is None:
            injector = init_proxy_system(settings)
    _INJECTOR[:] = [injector] if injector is not None else []
    if injector is not None:
        injector.start()
    if _ORIGINALS:
        return injector
    ws, http, sync = connection.WSAsyncConn, connection.HTTPAsyncConn, connection.HTTPSync
    _ORIGINALS.update(
        ws_open=ws._open,
        ws_read=ws.read,
        ws_close=ws.close,
        http_open=http._open,
        sync_read=sync.read,
        sync_write=sync.write,
    )
    ws._open = _ws_open
    ws.read = _ws_read
    ws.close = _ws_close
    http._open = _http_open
    sync.read = _sync_read
    sync.write = _sync_write
    LOG.info("proxybus: cryptofeed hooked (websockets, aiohttp REST, requests symbol reads)")
    return injector


def uninstall() -> None:
    """Restores cryptofeed's connection classes."""
    import cryptofeed.connection as connection

    if not _ORIGINALS:
        return
    ws, http, sync = connection.WSAsyncConn, connection.HTTPAsyncConn, connection.HTTPSync
    ws._open = _ORIGINALS["ws_open"]
    ws.read = _ORIGINALS["ws_read"]
    ws.close = _ORIGINALS["ws_close"]
    http._open = _ORIGINALS["http_open"]
    sync.read = _ORIGINALS["sync_read"]
    sync.write = _ORIGINALS["sync_write"]
    _ORIGINALS.clear()
    _INJECTOR.clear()


# --- websockets ---------------------------------------------------------------------------------


async def _ws_open(self: Any) -> None:
    """``WSAsyncConn._open`` of cryptofeed 2.5.0, connecting through the injector."""
    injector = _injector()
    if injector is None:
        await _ORIGINALS["ws_open"](self)
        return
    if self.is_open:
        LOG.warning("%s: websocket already open", self.id)
    else:
        LOG.debug("%s: connecting to %s", self.id, self.address)
        if self.raw_data_callback:
            await self.raw_data_callback(None, time.time(), self.id, connect=self.address)
        if self.authentication:
            self.address, self.ws_kwargs = await self.authentication(self.address, self.ws_kwargs)
        self.conn, lease = await injector.connect_websocket(self.address, self.id, **dict(self.ws_kwargs))
        self._proxybus_lease = lease
        self._proxybus_opened = time.perf_counter()
        self._proxybus_reported = False
        if lease is not None:
            LOG.info("%s: websocket through proxy %s (%s)", self.id, lease.proxy_id, lease.redacted_url)
    self.sent = 0
    self.received = 0
    self.last_message = None


def _report_ws_end(self: Any, conn: Any) -> None:
    if getattr(self, "_proxybus_reported", True):
        return
    lease: ProxyLease | None = getattr(self, "_proxybus_lease", None)
    injector = _injector()
    if lease is None or injector is None or conn is None:
        return
    self._proxybus_reported = True
    lifetime = int((time.perf_counter() - self._proxybus_opened) * 1000)
    code = getattr(conn, "close_code", None)
    reason = getattr(conn, "close_reason", None) or ""
    injector.report_websocket_closed(lease, code, lifetime, redact_text(str(reason)))


async def _ws_read(self: Any) -> AsyncIterator[Any]:
    """``WSAsyncConn.read``, reporting the websocket's end when the peer closes it."""
    conn = self.conn
    try:
        async for message in _ORIGINALS["ws_read"](self):
            yield message
    finally:
        if conn is not None and getattr(getattr(conn, "state", None), "name", "") == "CLOSED":
            _report_ws_end(self, conn)


async def _ws_close(self: Any) -> None:
    """``AsyncConnection.close`` for websockets, reporting the end if not reported yet."""
    conn = self.conn
    await _ORIGINALS["ws_close"](self)
    _report_ws_end(self, conn)


# --- REST through aiohttp ------------------------------------------------------------------------


async def _http_open(self: Any) -> None:
    """``HTTPAsyncConn._open``: the session is a :class:`ProxiedSession` for the feed's exchange."""
    await _ORIGINALS["http_open"](self)
    injector = _injector()
    if injector is None or isinstance(self.conn, ProxiedSession):
        return
    try:
        exchange = exchange_id_of(self.id)
    except ValueError:
        return
    self.conn = ProxiedSession(self.conn, injector, exchange)


class ProxiedSession:
    """An ``aiohttp.ClientSession`` stand-in for cryptofeed's REST calls: each ``get``/``post``/
    ``delete`` goes through the exchange's REST lease (``proxy=`` for HTTP(S) proxies, a session
    with an ``aiohttp-socks`` connector per SOCKS proxy) and its answer is reported."""

    def __init__(self, session: Any, injector: ProxyInjector, exchange_id: str) -> None:
        self._session = session
        self._injector = injector
        self.exchange_id = exchange_id
        self._socks_sessions: dict[str, Any] = {}

    @property
    def closed(self) -> bool:
        """Whether the underlying session is closed."""
        return bool(self._session.closed)

    async def close(self) -> None:
        """Closes the session and every SOCKS session."""
        for session in self._socks_sessions.values():
            await session.close()
        self._socks_sessions.clear()
        await self._session.close()

    def get(self, url: Any, **kwargs: Any) -> _ProxiedRequest:
        """As ``ClientSession.get``."""
        return _ProxiedRequest(self, "GET", url, kwargs)

    def post(self, url: Any, **kwargs: Any) -> _ProxiedRequest:
        """As ``ClientSession.post``."""
        return _ProxiedRequest(self, "POST", url, kwargs)

    def delete(self, url: Any, **kwargs: Any) -> _ProxiedRequest:
        """As ``ClientSession.delete``."""
        return _ProxiedRequest(self, "DELETE", url, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def _socks_session(self, proxy_url: str) -> Any:
        session = self._socks_sessions.get(proxy_url)
        if session is None:
            import aiohttp
            from aiohttp_socks import ProxyConnector, ProxyType

            parts = urlsplit(proxy_url)
            scheme = scheme_of(proxy_url)
            connector = ProxyConnector(
                proxy_type=ProxyType.SOCKS5 if scheme.startswith("socks5") else ProxyType.SOCKS4,
                host=parts.hostname or "",
                port=parts.port or 1080,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                rdns=scheme in ("socks5h", "socks4a"),
            )
            session = aiohttp.ClientSession(connector=connector)
            self._socks_sessions[proxy_url] = session
        return session


class _ProxiedRequest:
    """``async with session.get(...) as response`` through the lease, reporting the answer."""

    def __init__(self, owner: ProxiedSession, method: str, url: Any, kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._method = method
        self._url = url
        self._kwargs = kwargs
        self._context: Any = None
        self._lease: ProxyLease | None = None

    async def __aenter__(self) -> Any:
        owner = self._owner
        lease = await owner._injector.get_lease(owner.exchange_id, "http", schemes_for("aiohttp"))
        kwargs = dict(self._kwargs)
        session = owner._session
        proxy_url = lease.proxy_url if lease is not None else None
        if proxy_url is not None:
            if is_socks(proxy_url):
                if not socks_usable_by("aiohttp"):  # never hand a SOCKS URL to aiohttp itself
                    lease = None
                else:
                    session = owner._socks_session(proxy_url)
                    kwargs.pop("proxy", None)
            else:
                kwargs["proxy"] = proxy_url
        self._lease = lease
        started = time.perf_counter()
        self._context = session.request(self._method, self._url, **kwargs)
        try:
            response = await self._context.__aenter__()
        except Exception as err:
            owner._injector.report_failure(lease, err, int((time.perf_counter() - started) * 1000))
            raise
        owner._injector.report_http_response(
            lease, response.status, response.headers, int((time.perf_counter() - started) * 1000)
        )
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        result: bool | None = await self._context.__aexit__(exc_type, exc, tb)
        return result


# --- REST through requests (symbol lists) -------------------------------------------------------


def _sync_proxies(uuid: Any) -> tuple[ProxyLease | None, dict[str, str] | None, ProxyInjector | None]:
    injector = _injector()
    if injector is None or uuid is None:
        return None, None, injector
    try:
        lease = injector.http_lease(str(uuid), schemes_for("requests"))
    except ValueError:
        return None, None, injector
    if lease is None or lease.proxy_url is None:
        return lease, None, injector
    url = lease.proxy_url
    return lease, {"http": url, "https": url}, injector


def _sync_read(
    self: Any,
    address: str,
    params: Any = None,
    headers: Any = None,
    json: bool = False,
    text: bool = True,
    uuid: Any = None,
) -> Any:
    """``HTTPSync.read`` through the exchange's REST lease (``uuid`` is the exchange's id)."""
    import requests

    lease, proxies, injector = _sync_proxies(uuid)
    if injector is None or proxies is None:
        return _ORIGINALS["sync_read"](self, address, params=params, headers=headers, json=json, text=text, uuid=uuid)
    LOG.debug("HTTPSync: requesting data from %s through %s", address, lease.redacted_url if lease else None)
    response = _sync_call(injector, lease, requests.get, address, headers=headers, params=params, proxies=proxies)
    return self.process_response(response, address, json=json, text=text, uuid=uuid)


def _sync_write(
    self: Any,
    address: str,
    data: Any = None,
    json: bool = False,
    text: bool = True,
    uuid: Any = None,
    is_data_json: bool = False,
) -> Any:
    """``HTTPSync.write`` through the exchange's REST lease."""
    import requests

    lease, proxies, injector = _sync_proxies(uuid)
    if injector is None or proxies is None:
        return _ORIGINALS["sync_write"](
            self, address, data=data, json=json, text=text, uuid=uuid, is_data_json=is_data_json
        )
    body = {"json": data} if is_data_json else {"data": data}
    response = _sync_call(injector, lease, requests.post, address, proxies=proxies, **body)
    return self.process_response(response, address, json=json, text=text, uuid=uuid)


def _sync_call(injector: ProxyInjector, lease: ProxyLease | None, call: Any, address: str, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        response = call(address, timeout=30, **kwargs)
    except Exception as err:
        injector.report_failure(lease, err, int((time.perf_counter() - started) * 1000))
        raise
    injector.report_http_response(
        lease, response.status_code, response.headers, int((time.perf_counter() - started) * 1000)
    )
    return response
