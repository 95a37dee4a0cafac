"""ProxybusClient against the real resolver (``proxybus up``) and a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import nats
import pytest
from conftest import LOGS, PLANTED_SECRET, NatsServer, Proxybus, free_port

from cryptofeed_proxybus import CircuitBreaker, NatsSettings, ProxybusClient, ProxySettings, proxy_id
from cryptofeed_proxybus.breaker import BreakerState


def embedded(**tree: object) -> ProxySettings:
    return ProxySettings(**tree)  # type: ignore[arg-type]


EMBEDDED = {"enabled": True, "default": {"http": {"url": "http://emb:emb-pw@127.0.0.1:3128"}}}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def connected_client(url: str, client_id: str = "cryptofeed-test-1", **kwargs: object) -> ProxybusClient:
    client = ProxybusClient(embedded(), NatsSettings(servers=[url]), client_id=client_id, **kwargs)  # type: ignore[arg-type]
    await client.start()
    assert await client.wait_connected(10)
    return client


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_resolver_answers_in_both_encodings_and_the_cache_keeps_the_lease(
    proxybus: Proxybus, encoding: str
) -> None:
    clock = Clock()
    client = await connected_client(proxybus.nats.url, encoding=encoding, clock=clock)
    try:
        lease = await client.get_proxy("binance", "websocket")
        assert lease.source == "service" or lease.source == "cache"
        assert lease.proxy_url in proxybus.proxy_urls
        assert lease.proxy_id == proxy_id(lease.proxy_url)
        assert lease.ttl_seconds == 60
        expected = "application/json" if encoding == "json" else "application/msgpack"
        assert client.last_reply_content_type == expected
        again = await client.get_proxy("binance", "websocket")
        assert again.cached and again.proxy_url == lease.proxy_url
        assert (client.stats.resolver, client.stats.cache) == (1, 1)
        clock.now += 61  # past the TTL: asks again
        await client.get_proxy("binance", "websocket")
        assert client.stats.resolver == 2
        # Another exchange is another cache entry.
        await client.get_proxy("coinbase", "http")
        assert client.stats.resolver == 3
    finally:
        await client.close()


async def test_exclude_asks_anew_and_sends_exclude_proxy_ids_only_when_non_empty(nats_server: NatsServer) -> None:
    """What goes on the wire, seen by a plain nats-py subscriber standing where the resolver would."""
    seen: list[dict[str, object]] = []
    nc = await nats.connect(nats_server.url)
    import msgpack

    async def answer(msg: nats.aio.msg.Msg) -> None:
        seen.append(msgpack.unpackb(msg.data))
        url = "http://u:p@127.0.0.1:9"
        body = {"proxy_url": url, "proxy_id": proxy_id(url), "strategy": "round_robin", "ttl_seconds": 60}
        await msg.respond(msgpack.packb(body))

    await nc.subscribe("proxy.v1.request.binance.http", cb=answer)
    client = await connected_client(nats_server.url)
    try:
        first = await client.get_proxy("binance", "http")
        await client.get_proxy("binance", "http", exclude=[first.proxy_id])  # type: ignore[list-item]
        assert len(seen) == 2, "an excluding request bypasses the cache"
        assert "exclude_proxy_ids" not in seen[0]
        assert seen[1]["exclude_proxy_ids"] == [first.proxy_id]
        assert seen[0]["client_id"] == "cryptofeed-test-1" and seen[0]["schema_version"] == 1
    finally:
        await client.close()
        await nc.close()


async def test_the_real_resolver_never_hands_out_an_excluded_proxy(proxybus: Proxybus) -> None:
    """Issue 14's ``exclude_proxy_ids`` end to end: the Rust resolver and pool skip excluded ids,
    even right after the same lease was cached for this client."""
    client = await connected_client(proxybus.nats.url)
    try:
        all_ids = {proxy_id(url) for url in proxybus.proxy_urls}
        first = await client.get_proxy("binance", "http")
        assert first.proxy_id in all_ids
        keep = sorted(all_ids - {first.proxy_id})[0]
        excluded = sorted(all_ids - {keep})
        for _ in range(6):  # round robin would reach every proxy within three answers
            lease = await client.get_proxy("binance", "http", exclude=excluded)
            assert lease.proxy_id == keep, f"excluded {excluded}, got {lease.proxy_id}"
            assert not lease.cached
    finally:
        await client.close()


async def test_a_session_key_keeps_one_proxy_across_clients_and_is_cached_apart(proxybus: Proxybus) -> None:
    """Issue 14's ``session_key``: the pool keeps one proxy per logical session (round robin would
    move on at every answer), whichever client asks; the local cache keeps sessions apart."""
    # Two feeds (two client ids: the resolver caches per client, so the second one's answers
    # come from the pool's session table).
    first = await connected_client(proxybus.nats.url)
    second = await connected_client(proxybus.nats.url, client_id="cryptofeed-test-2")
    try:
        lease = await first.get_proxy("binance", "websocket", session_key="books-btcusdt")
        for client in (first, second, first, second):
            again = await client.get_proxy("binance", "websocket", session_key="books-btcusdt", use_cache=False)
            assert again.proxy_id == lease.proxy_id, "the session moved"
        others = {
            (await first.get_proxy("binance", "websocket", session_key=f"other-{n}", use_cache=False)).proxy_id
            for n in range(6)
        }
        assert len(others) > 1, "distinct sessions are spread over the pool"
        assert first.stats.cache == 0
        cached = await first.get_proxy("binance", "websocket", session_key="books-btcusdt")
        assert cached.cached and cached.proxy_id == lease.proxy_id
    finally:
        await first.close()
        await second.close()


async def test_bus_down_first_answer_is_the_embedded_fallback_within_50ms() -> None:
    client = ProxybusClient(embedded(**EMBEDDED), NatsSettings(servers=[f"nats://127.0.0.1:{free_port()}"]))
    await client.start()
    try:
        started = time.perf_counter()
        lease = await client.get_proxy("binance", "http")
        elapsed = time.perf_counter() - started
        assert lease.source == "embedded" and lease.proxy_url == "http://emb:emb-pw@127.0.0.1:3128"
        assert elapsed < 0.050, f"first answer took {elapsed * 1000:.1f} ms"
        # Nothing embedded for websockets: a direct lease.
        direct = await client.get_proxy("binance", "websocket")
        assert direct.is_direct and direct.source == "direct"
    finally:
        await client.close()


async def test_no_responders_moves_to_the_fallback_at_once(nats_server: NatsServer) -> None:
    """nats-py raises NoRespondersError as soon as the server says nobody listens (servers with headers)."""
    client = ProxybusClient(embedded(**EMBEDDED), NatsSettings(servers=[nats_server.url]), request_timeout=5.0)
    await client.start()
    assert await client.wait_connected(10)
    try:
        started = time.perf_counter()
        lease = await client.get_proxy("binance", "http")
        assert time.perf_counter() - started < 1.0, "waited for a timeout instead of the no-responders status"
        assert lease.source == "embedded"
        assert client.stats.no_responders == 1
    finally:
        await client.close()


async def test_breaker_opens_after_five_failures_and_probes_after_thirty_seconds(nats_server: NatsServer) -> None:
    clock = Clock()
    client = ProxybusClient(
        embedded(**EMBEDDED), NatsSettings(servers=[nats_server.url]), breaker=CircuitBreaker(clock=clock), clock=clock
    )
    await client.start()
    assert await client.wait_connected(10)
    try:
        for _ in range(7):
            assert (await client.get_proxy("binance", "http")).source == "embedded"
        assert client.stats.resolver_failures == 5, "open after 5: the 6th and 7th never asked"
        assert client.breaker.state is BreakerState.OPEN
        clock.now += 30
        assert client.breaker.state is BreakerState.HALF_OPEN
        await client.get_proxy("binance", "http")
        assert client.stats.resolver_failures == 6, "one probe"
        assert client.breaker.state is BreakerState.OPEN
    finally:
        await client.close()


async def test_no_credential_in_any_log_line(
    proxybus: Proxybus, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Leases, feedback, fallbacks and failures at DEBUG, Python and Rust side: the planted password never shows."""
    caplog.set_level(logging.DEBUG)
    client = await connected_client(proxybus.nats.url)
    try:
        lease = await client.get_proxy("binance", "websocket")
        logging.getLogger("cryptofeed_proxybus").debug("lease %s %r", lease, lease)
        client.report_feedback(
            lease.feedback(
                client.client_id,
                "failed",
                False,
                error_kind="timeout",
                error_details=f"connect to {lease.proxy_url} timed out",
            )
        )
        client.report_feedback(lease.feedback(client.client_id, "connected", True, latency_ms=12))
        deadline = time.monotonic() + 10
        while client.pending_feedback and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert client.pending_feedback == 0
        await asyncio.sleep(1.0)  # let the aggregator fold and log
    finally:
        await client.close()
    assert PLANTED_SECRET in proxybus.inventory.read_text()
    texts = {"python log": caplog.text}
    texts.update({str(path): path.read_text(errors="replace") for path in LOGS if path.exists()})
    assert any("proxy" in t for t in texts.values())
    for where, text in texts.items():
        assert PLANTED_SECRET not in text, f"credential in {where}"
