"""install() on released cryptofeed 2.5.0: its own connection classes (WSAsyncConn, HTTPAsyncConn,
HTTPSync) go through the leased proxy — a real HTTP proxy on loopback — to real local servers, and
every outcome is reported; a verdict bars the proxy and the next connection uses another."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import trustme
import websockets
from aiohttp import web
from conftest import NatsServer
from cryptofeed.connection import HTTPAsyncConn, HTTPSync, WSAsyncConn
from loopback import ForwardProxy
from test_injector import feedback_events, injector_for, stream_on
from websockets.asyncio.server import serve

import cryptofeed_proxybus
from cryptofeed_proxybus import ProxySettings


@pytest.fixture
def tls() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    yield server, client


async def exchange_app() -> web.Application:
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"X-MBX-USED-WEIGHT-1M": "7"})

    async def limited(request: web.Request) -> web.Response:
        return web.json_response(
            {"code": -1003}, status=429, headers={"Retry-After": "30", "X-MBX-USED-WEIGHT-1M": "121"}
        )

    app = web.Application()
    app.router.add_get("/api/v3/ping", ping)
    app.router.add_get("/api/v3/limited", limited)
    return app


@pytest.fixture
async def exchange() -> AsyncIterator[str]:
    runner = web.AppRunner(await exchange_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def http_injector(nats_url: str, proxies: list[str]) -> Any:
    injector = injector_for(nats_url, proxies)
    injector.settings.default.http = injector.settings.default.websocket  # same pool for REST
    return injector


async def test_rest_goes_through_the_lease_and_reports_status_usage_and_retry_after(
    nats_server: NatsServer, exchange: str
) -> None:
    await stream_on(nats_server.url)
    first, second = await ForwardProxy("a", "rest-secret-a").start(), await ForwardProxy("b", "rest-secret-b").start()
    listener = asyncio.create_task(feedback_events(nats_server.url, 2))
    await asyncio.sleep(0.2)
    injector = http_injector(nats_server.url, [first.url, second.url])
    cryptofeed_proxybus.install(injector=injector)
    conn = HTTPAsyncConn("BINANCE")
    try:
        assert await conn.read(f"{exchange}/api/v3/ping") == "{}"
        with pytest.raises(aiohttp.ClientResponseError):
            await conn.read(f"{exchange}/api/v3/limited")
        events = await listener
        ok, limited = events
        assert (ok["phase"], ok["success"], ok["status_code"]) == ("request", True, 200)
        assert ok["usage_headers"] == {"x-mbx-used-weight-1m": "7"} and ok["latency_ms"] >= 0
        assert ok["exchange_id"] == "binance" and ok["connection_type"] == "http"
        assert (limited["error_kind"], limited["status_code"], limited["retry_after_seconds"]) == ("http_429", 429, 30)
        forwarded = first.forwarded + second.forwarded
        assert forwarded == [f"{exchange}/api/v3/ping", f"{exchange}/api/v3/limited"], "both through a proxy"
        barred = injector.barred("binance", "http")
        assert barred == {limited["proxy_id"]}
        lease = await injector.get_lease("binance", "http")
        assert lease is not None and lease.proxy_id not in barred
        assert "rest-secret" not in str(events)
    finally:
        await conn.close()
        cryptofeed_proxybus.uninstall()
        injector.close()
        await first.stop()
        await second.stop()


async def test_symbol_reads_with_requests_use_the_lease_synchronously(nats_server: NatsServer, exchange: str) -> None:
    await stream_on(nats_server.url)
    proxy = await ForwardProxy("s", "sync-secret").start()
    listener = asyncio.create_task(feedback_events(nats_server.url, 1))
    await asyncio.sleep(0.2)
    injector = http_injector(nats_server.url, [proxy.url])
    cryptofeed_proxybus.install(injector=injector)
    try:
        # cryptofeed reads symbols while a feed is built, outside the event loop (uuid = the exchange's id).
        text = await asyncio.to_thread(HTTPSync().read, f"{exchange}/api/v3/ping", uuid="BINANCE")
        assert text == "{}"
        assert proxy.forwarded == [f"{exchange}/api/v3/ping"]
        (event,) = await listener
        assert (event["phase"], event["status_code"], event["exchange_id"]) == ("request", 200, "binance")
    finally:
        cryptofeed_proxybus.uninstall()
        injector.close()
        await proxy.stop()


async def test_websocket_through_the_lease_reports_lifetime_and_close_code_then_moves_on(
    nats_server: NatsServer, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, client_tls = tls
    await stream_on(nats_server.url)
    first, second = await ForwardProxy("a", "ws-secret-a").start(), await ForwardProxy("b", "ws-secret-b").start()

    async def exchange_closes_1008(ws: Any) -> None:
        await ws.send('{"e":"aggTrade"}')
        await asyncio.sleep(0.3)
        await ws.close(1008, "Too many messages")

    listener = asyncio.create_task(feedback_events(nats_server.url, 3))
    await asyncio.sleep(0.2)
    injector = injector_for(nats_server.url, [first.url, second.url])
    cryptofeed_proxybus.install(injector=injector)
    try:
        async with serve(exchange_closes_1008, "127.0.0.1", 0, ssl=server_tls) as server:
            port = server.sockets[0].getsockname()[1]
            conn = WSAsyncConn(f"wss://127.0.0.1:{port}/stream?streams=btcusdt@aggTrade", "BINANCE", ssl=client_tls)
            messages = []
            with pytest.raises(websockets.exceptions.ConnectionClosedError):  # what cryptofeed's handler catches
                async with conn.connect() as connection:
                    async for message in connection.read():
                        messages.append(message)
            assert messages == ['{"e":"aggTrade"}']
        events = await listener
        assert [e["phase"] for e in events] == ["connect_start", "connected", "disconnected"]
        closed = events[2]
        assert (closed["success"], closed["error_kind"], closed["ws_close_code"]) == (False, "ws_closed", 1008)
        assert closed["latency_ms"] >= 150, "the websocket's lifetime (the server held it 300 ms)"
        assert len(first.tunnels) + len(second.tunnels) == 1
        barred = injector.barred("binance", "websocket")
        assert barred == {closed["proxy_id"]}, "close 1008 is an exchange's verdict"
        lease = await injector.get_lease("binance", "websocket")
        assert lease is not None and lease.proxy_id not in barred
    finally:
        cryptofeed_proxybus.uninstall()
        injector.close()
        await first.stop()
        await second.stop()


async def test_with_proxying_off_install_changes_nothing(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    injector = cryptofeed_proxybus.ProxyInjector(ProxySettings(enabled=False))
    cryptofeed_proxybus.install(injector=injector)
    try:
        async with serve(echo, "127.0.0.1", 0, ssl=server_tls) as server:
            port = server.sockets[0].getsockname()[1]
            conn = WSAsyncConn(f"wss://127.0.0.1:{port}/", "BINANCE", ssl=client_tls, proxy=None)
            async with conn.connect() as connection:
                await connection.write("hi")
                assert await connection.conn.recv() == "hi"
            assert not hasattr(conn, "_proxybus_lease")
    finally:
        cryptofeed_proxybus.uninstall()


def test_uninstall_restores_cryptofeed() -> None:
    originals = (WSAsyncConn._open, HTTPAsyncConn._open, HTTPSync.read)
    cryptofeed_proxybus.install(injector=cryptofeed_proxybus.ProxyInjector(ProxySettings(enabled=False)))
    assert WSAsyncConn._open is not originals[0] and cryptofeed_proxybus.installed()
    cryptofeed_proxybus.uninstall()
    assert (WSAsyncConn._open, HTTPAsyncConn._open, HTTPSync.read) == originals
    assert time.monotonic() > 0


async def test_no_socks_proxy_reaches_aiohttp_without_aiohttp_socks(
    nats_server: NatsServer, exchange: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a machine without aiohttp-socks: a pool of a SOCKS and an HTTP proxy; REST calls only
    ever get the HTTP one (the lease is asked for with proxy_schemes http/https)."""
    import cryptofeed_proxybus.hooks
    import cryptofeed_proxybus.injector

    def without_aiohttp_socks(library: str) -> bool:
        return library != "aiohttp"

    monkeypatch.setattr(cryptofeed_proxybus.injector, "socks_usable_by", without_aiohttp_socks)
    monkeypatch.setattr(cryptofeed_proxybus.hooks, "socks_usable_by", without_aiohttp_socks)
    await stream_on(nats_server.url)
    proxy = await ForwardProxy("h", "http-only-secret").start()
    injector = http_injector(nats_server.url, ["socks5://s:socks-secret@127.0.0.1:1", proxy.url])
    cryptofeed_proxybus.install(injector=injector)
    conn = HTTPAsyncConn("BINANCE")
    try:
        for _ in range(4):  # round robin over the pool would hand out the SOCKS proxy every other time
            assert await conn.read(f"{exchange}/api/v3/ping") == "{}"
        assert len(proxy.forwarded) == 4, "every request went through the HTTP proxy"
    finally:
        await conn.close()
        cryptofeed_proxybus.uninstall()
        injector.close()
        await proxy.stop()
