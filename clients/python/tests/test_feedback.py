"""Feedback: folded exactly once by the real aggregator; retried across a nats-server restart with
the same Nats-Msg-Id; never blocking, drops counted and logged."""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
import nats
import pytest
from conftest import NatsServer, Proxybus, free_port
from nats.js.api import StreamConfig

from cryptofeed_proxybus import NatsSettings, ProxybusClient, ProxyFeedback, ProxySettings
from cryptofeed_proxybus.lease import ProxyLease


def lease_of(url: str, exchange: str = "binance") -> ProxyLease:
    from cryptofeed_proxybus import proxy_id

    return ProxyLease(
        proxy_url=url,
        proxy_id=proxy_id(url),
        ttl_seconds=60,
        strategy="round_robin",
        source="service",
        exchange_id=exchange,
        connection_type="websocket",
    )


async def drained(client: ProxybusClient, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while client.pending_feedback and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert client.pending_feedback == 0, "feedback not published in time"


async def health_of(url: str, proxy: str, want_total: int, timeout: float = 20) -> dict[str, object]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("PROXY_HEALTH")
        deadline = time.monotonic() + timeout
        record: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                entry = await kv.get(proxy)
                record = msgpack.unpackb(entry.value, raw=False)
                if record.get("total", 0) >= want_total:
                    return record
            except Exception:  # noqa: S110 - not folded yet
                pass
            await asyncio.sleep(0.2)
        return record
    finally:
        await nc.close()


async def test_the_same_event_twice_is_folded_once(proxybus: Proxybus) -> None:
    client = ProxybusClient(ProxySettings(), NatsSettings(servers=[proxybus.nats.url]), client_id="cryptofeed-fb-1")
    await client.start()
    assert await client.wait_connected(10)
    lease = lease_of(proxybus.proxy_urls[0])
    try:
        first = lease.feedback(client.client_id, "connected", True, latency_ms=20)
        assert first is not None
        client.report_feedback(first)
        client.report_feedback(ProxyFeedback.model_validate(first.model_dump()))  # same event_id: a repeat
        client.report_feedback(lease.feedback(client.client_id, "failed", False, error_kind="timeout"))
        await drained(client)
        assert client.feedback_stats.published == 3
        assert client.feedback_stats.duplicates == 1, "JetStream recognised the repeat by Nats-Msg-Id"
        record = await health_of(proxybus.nats.url, lease.proxy_id or "", want_total=2)
        await asyncio.sleep(1.0)  # a wrongly folded repeat would show up by now
        record = await health_of(proxybus.nats.url, lease.proxy_id or "", want_total=2)
        assert (record["total"], record["successes"], record["failures"]) == (2, 1, 1)
        assert "***" in str(record["proxy_url"])
    finally:
        await client.close()


async def test_feedback_is_retried_across_a_server_restart_with_the_same_id(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(name="PROXY_FEEDBACK", subjects=["proxy.v1.feedback.>"], duplicate_window=120.0)
    )
    await nc.close()
    client = ProxybusClient(ProxySettings(), NatsSettings(servers=[nats_server.url]))
    await client.start()
    assert await client.wait_connected(10)
    try:
        nats_server.stop()
        event = lease_of("http://u:p@127.0.0.1:9").feedback(client.client_id, "connected", True)
        assert event is not None
        client.report_feedback(event)
        await asyncio.sleep(1.5)  # attempts fail while the server is down
        assert client.pending_feedback == 1
        nats_server.start()
        await drained(client, timeout=30)
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().stream_info("PROXY_FEEDBACK")
        msg = await nc.jetstream().get_last_msg("PROXY_FEEDBACK", "proxy.v1.feedback.binance.websocket")
        await nc.close()
        assert info.state.messages == 1, "stored exactly once"
        assert msg.headers and msg.headers["Nats-Msg-Id"] == event.event_id
    finally:
        await client.close()


async def test_report_never_blocks_and_counts_and_logs_drops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cryptofeed_proxybus")
    client = ProxybusClient(
        ProxySettings(), NatsSettings(servers=[f"nats://127.0.0.1:{free_port()}"]), feedback_queue_size=3
    )
    await client.start()
    lease = lease_of("http://u:p@127.0.0.1:9")
    events = [lease.feedback(client.client_id, "connected", True) for _ in range(5)]
    started = time.perf_counter()
    for event in events:
        client.report_feedback(event)
    assert time.perf_counter() - started < 0.05
    assert client.feedback_stats.dropped == 2 and client.pending_feedback == 3
    assert "dropped event" in caplog.text and events[0].event_id in caplog.text  # type: ignore[union-attr]
    await client.close()
