"""ProxyInjector: websockets through a real HTTP proxy, refused handshakes classified and the proxy
barred, proxying off leaves the call unchanged, the synchronous REST answer from the cache."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import nats
import pytest
import websockets
from conftest import NatsServer, Proxybus
from loopback import ForwardProxy
from nats.js.api import StreamConfig
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from cryptofeed_proxybus import NatsSettings, ProxybusClient, ProxyInjector, ProxySettings, exchange_id_of
from cryptofeed_proxybus.injector import MIN_BAR_SECONDS
from cryptofeed_proxybus.outcomes import error_kind_of_exception


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def refuse_with(status: int, retry_after: str | None = None) -> Any:
    def process_request(connection: Any, request: Any) -> Response:
        headers = Headers([("Content-Length", "0")] + ([("Retry-After", retry_after)] if retry_after else []))
        return Response(status, "refused", headers, b"")

    return process_request


async def feedback_events(url: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    sub = await nc.subscribe("proxy.v1.feedback.>")
    events: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(events) < count and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            events.append(msgpack.unpackb(msg.data, raw=False))
    finally:
        await nc.close()
    return events


async def stream_on(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(
        StreamConfig(name="PROXY_FEEDBACK", subjects=["proxy.v1.feedback.>"], duplicate_window=120.0)
    )
    await nc.close()


def injector_for(nats_url: str, proxies: list[str]) -> ProxyInjector:
    """Service mode on a bus without a resolver: leases come from the embedded pool at once (no
    responders), feedback goes to JetStream."""
    settings = ProxySettings(
        enabled=True,
        default={"websocket": {"pool": {"proxies": [{"url": p} for p in proxies]}}},  # type: ignore[arg-type]
        external_service={"enabled": True},  # type: ignore[arg-type]
    )
    client = ProxybusClient(settings, NatsSettings(servers=[nats_url]), client_id="cryptofeed-inj-1")
    injector = ProxyInjector(settings, client)
    injector.start()
    return injector


def test_exchange_ids_come_from_cryptofeed_ids() -> None:
    assert exchange_id_of("BINANCE") == "binance"
    assert exchange_id_of("BINANCE.ws.3") == "binance"
    assert exchange_id_of("COINBASE.http.1.http.2") == "coinbase"
    assert exchange_id_of("BINANCE_FUTURES") == "binance_futures"
    with pytest.raises(ValueError):
        exchange_id_of("BIN ANCE")


async def test_websocket_goes_through_the_leased_proxy_and_reports(nats_server: NatsServer) -> None:
    await stream_on(nats_server.url)
    proxy = await ForwardProxy("lab1", "ws-secret").start()
    listener = asyncio.create_task(feedback_events(nats_server.url, 2))
    await asyncio.sleep(0.2)
    injector = injector_for(nats_server.url, [proxy.url])
    try:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            ws = await injector.create_websocket_connection(f"ws://127.0.0.1:{port}/ws", "BINANCE")
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.close()
        assert proxy.tunnels == [f"127.0.0.1:{port}"], "the connection went through the proxy"
        events = await listener
        assert [e["phase"] for e in events] == ["connect_start", "connected"]
        assert events[1]["success"] is True and events[1]["latency_ms"] >= 0
        assert events[1]["exchange_id"] == "binance" and events[1]["connection_type"] == "websocket"
        assert "ws-secret" not in str(events)
    finally:
        injector.close()
        await proxy.stop()


@pytest.mark.parametrize(
    ("status", "kind"), [(429, "http_429"), (451, "http_451"), (418, "http_418"), (403, "http_403")]
)
async def test_a_refused_handshake_is_reported_and_bars_the_proxy(
    nats_server: NatsServer, status: int, kind: str
) -> None:
    await stream_on(nats_server.url)
    first, second = (
        await ForwardProxy("a", "verdict-secret-a").start(),
        await ForwardProxy("b", "verdict-secret-b").start(),
    )
    listener = asyncio.create_task(feedback_events(nats_server.url, 2))
    await asyncio.sleep(0.2)
    injector = injector_for(nats_server.url, [first.url, second.url])
    try:
        async with serve(echo, "127.0.0.1", 0, process_request=refuse_with(status, "7")) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(websockets.exceptions.InvalidStatus):
                await injector.create_websocket_connection(f"ws://127.0.0.1:{port}/", "binance")
        events = await listener
        failed = events[-1]
        assert (failed["phase"], failed["success"], failed["error_kind"]) == ("failed", False, kind)
        assert failed["status_code"] == status and failed["retry_after_seconds"] == 7
        barred = injector.barred("binance", "websocket")
        assert len(barred) == 1
        lease = await injector.get_lease("binance", "websocket")
        assert lease is not None and lease.proxy_id not in barred, "the next connection uses another proxy"
        assert MIN_BAR_SECONDS >= 60
    finally:
        injector.close()
        await first.stop()
        await second.stop()


async def test_a_refused_proxy_login_is_proxy_auth(nats_server: NatsServer) -> None:
    await stream_on(nats_server.url)
    proxy = await ForwardProxy("a", "right-secret").start()
    wrong = proxy.url.replace("right-secret", "wrong-secret")
    listener = asyncio.create_task(feedback_events(nats_server.url, 2))
    await asyncio.sleep(0.2)
    injector = injector_for(nats_server.url, [wrong])
    try:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(websockets.exceptions.InvalidProxyStatus):
                await injector.create_websocket_connection(f"ws://127.0.0.1:{port}/", "binance")
        events = await listener
        assert events[-1]["error_kind"] == "proxy_auth" and proxy.refused_auth == 1
        assert injector.barred("binance", "websocket") == set(), "a proxy fault is no exchange verdict"
    finally:
        injector.close()
        await proxy.stop()


def test_a_proxys_own_refusal_of_connect_is_a_proxy_fault_whatever_its_status() -> None:
    # Squid answers 403 to CONNECT outside its SSL_ports; a proxy's own 429 or 451 is its
    # policy: none of them is the exchange's verdict, so no status goes with them.
    for status in (403, 429, 451, 502):
        err = websockets.exceptions.InvalidProxyStatus(Response(status, "Refused", Headers()))
        assert error_kind_of_exception(err) == ("refused", None), status
    login = websockets.exceptions.InvalidProxyStatus(Response(407, "Proxy Authentication Required", Headers()))
    assert error_kind_of_exception(login) == ("proxy_auth", 407)
    # The exchange's own refusal of the handshake keeps its status and kind.
    handshake = websockets.exceptions.InvalidStatus(Response(451, "Unavailable For Legal Reasons", Headers()))
    assert error_kind_of_exception(handshake) == ("http_451", 451)


async def test_proxying_off_leaves_the_call_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    real_connect = websockets.connect

    def recording(url: str, **kwargs: Any) -> Any:
        calls.append((url, dict(kwargs)))
        return real_connect(url, **kwargs)

    monkeypatch.setattr(websockets, "connect", recording)
    injector = ProxyInjector(ProxySettings(enabled=False))
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await injector.create_websocket_connection(f"ws://127.0.0.1:{port}/", "binance", ping_interval=None)
        await ws.close()
    assert calls == [(f"ws://127.0.0.1:{port}/", {"ping_interval": None})]
    assert injector.get_http_proxy_url("binance") is None


async def test_sync_http_url_cold_miss_answers_at_once_then_from_the_background_lease(proxybus: Proxybus) -> None:
    settings = ProxySettings(
        enabled=True,
        default={"http": {"url": "http://emb:emb-pw@127.0.0.1:3128"}},  # type: ignore[arg-type]
        external_service={"enabled": True},  # type: ignore[arg-type]
    )
    client = ProxybusClient(settings, NatsSettings(servers=[proxybus.nats.url]))
    injector = ProxyInjector(settings, client)
    injector.start()
    try:
        deadline = time.monotonic() + 10
        while not client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        first = injector.get_http_proxy_url("BINANCE")  # inside a running loop: no waiting
        assert time.perf_counter() - started < 0.05
        assert first == "http://emb:emb-pw@127.0.0.1:3128"
        deadline = time.monotonic() + 10
        url = first
        while url == first and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            url = injector.get_http_proxy_url("BINANCE")
        assert url in proxybus.proxy_urls, "the background lease from the resolver replaced the fallback"
        # Outside any running loop (cryptofeed building a feed) a cold miss may wait for the resolver.
        other = await asyncio.to_thread(injector.get_http_proxy_url, "coinbase")
        assert other in proxybus.proxy_urls
    finally:
        injector.close()
