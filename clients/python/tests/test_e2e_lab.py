"""End to end against the exchange lab (``proxybus lab``, issue #13): its proxies on loopback, each
sending from its own 127.0.0.x, its exchange simulator with per-IP limits, and ``proxybus up`` (pool,
resolver, aggregator) on a real nats-server serving the lab's inventory.

- cryptofeed 2.5.0's own ``WSAsyncConn`` and ``ConnectionHandler`` (its reconnect loop), hooked by
  ``install()``, on the lab's Binance trade stream: trades flow through a leased proxy; when the
  simulator rate-limits that proxy's IP (429 on the handshake), the feedback arrives, the aggregator
  bars the proxy for binance, and the reconnect goes through another proxy.
- a whole ``FeedHandler`` with a Binance trades feed and a Coinbase trades feed (real cryptofeed
  2.5.0, in its own process so the lab's CA is trusted from the start): trades reach the callback,
  and the same rate limit moves the Binance feed to another proxy.

The lab serves what cryptofeed 2.5.0 asks the real exchanges for: Binance's ``exchangeInfo`` (with
its ``PRICE_FILTER``) and ``aggTrade`` combined streams, Coinbase Advanced Trade's product list
(``api.coinbase.com``) and ``market_trades`` websocket (``advanced-trade-ws.coinbase.com``).

The lab is found as ``$PROXYBUS_LAB_BIN``, ``<bin dir>/proxybus-lab`` or ``proxybus lab``. Each test
is skipped, saying why, while the build has no lab. Feeds run with the fallback policy ``fail``:
nothing ever connects directly to a real exchange host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
import websockets
from conftest import REPO, NatsServer, Process, spawn, wait_for_services

from cryptofeed_proxybus import proxy_id

HERE = Path(__file__).parent
BINANCE_STREAM = "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade"
LAB_FILE = """
dir = "{dir}"
inventory_strategy = "round_robin"

[simulator]
listen = "127.0.0.1:0"
trades_per_second = 20.0

[simulator.binance]
request_weight_limit = 1200
request_window_seconds = 60
ban_base_seconds = 10
ban_max_seconds = 600
ws_connect_limit = 3
ws_connect_window_seconds = 600
ws_inbound_messages_per_second = 5

[simulator.coinbase]
request_weight_limit = 50
request_window_seconds = 1
ban_base_seconds = 0
ban_max_seconds = 0
ws_connect_limit = 20
ws_connect_window_seconds = 1
ws_inbound_messages_per_second = 20

[[proxies]]
kind = "http"
region = "us-east"
source_ip = "127.0.0.41"

[[proxies]]
kind = "http"
region = "us-east"
source_ip = "127.0.0.42"

[[proxies]]
kind = "http"
region = "us-east"
source_ip = "127.0.0.43"
"""


def lab_command() -> list[str] | None:
    """How to start the lab in this build, or None."""
    if os.environ.get("PROXYBUS_LAB_BIN"):
        return [os.environ["PROXYBUS_LAB_BIN"]]
    bin_dir = Path(os.environ.get("PROXYBUS_BIN_DIR", REPO / "target/debug"))
    if (bin_dir / "proxybus-lab").exists():
        return [str(bin_dir / "proxybus-lab")]
    cli = bin_dir / "proxybus"
    if cli.exists():
        probe = subprocess.run([str(cli), "lab", "--help"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [str(cli), "lab"]
    return None


def inventory_urls(inventory: Path) -> list[str]:
    tree = tomllib.loads(inventory.read_text())
    return [p["url"] for region in tree["regions"].values() for p in region.get("proxies", [])]


async def collect_feedback(url: str, events: list[dict[str, Any]], stop: asyncio.Event) -> None:
    nc = await nats.connect(url)
    sub = await nc.subscribe("proxy.v1.feedback.>")
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.2)
            except nats.errors.TimeoutError:
                continue
            event = msgpack.unpackb(msg.data, raw=False)
            event["_seen"] = time.monotonic()
            events.append(event)
    finally:
        await nc.close()


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"within {timeout} s: {what}")


async def binance_state(url: str, pid: str) -> str | None:
    nc = await nats.connect(url)
    try:
        entry = await (await nc.jetstream().key_value("PROXY_HEALTH")).get(pid)
        record = msgpack.unpackb(entry.value, raw=False)
        return str(record.get("exchanges", {}).get("binance", {}).get("state"))
    except Exception:
        return None
    finally:
        await nc.close()


async def start_lab(command: list[str], tmp_path: Path, nats_server: NatsServer) -> tuple[Process, Path, Path]:
    """The lab of LAB_FILE; returns it, its inventory and its CA bundle."""
    lab_dir = tmp_path / "lab"
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(LAB_FILE.format(dir=lab_dir))
    lab = spawn("lab", [*command, "--config", str(lab_file), "--duration", "170"], nats_server.log_dir)
    try:
        await until(
            lambda: (lab_dir / "lab.json").exists() and (lab_dir / "inventory.toml").exists(),
            30,
            "the lab wrote its files",
        )
    except AssertionError:
        lab.stop()
        raise AssertionError(f"the lab did not start:\n{lab.text()[-2000:]}") from None
    return lab, lab_dir / "inventory.toml", lab_dir / "ca.pem"


async def use_up_ws_connects(url: str, proxy: str, ca: Path) -> int | None:
    """Handshakes through ``proxy`` until the simulator refuses its IP; the refusal's status."""
    context = ssl.create_default_context(cafile=str(ca))
    for _ in range(5):
        try:
            async with websockets.connect(url, proxy=proxy, ssl=context, open_timeout=10):
                pass
        except websockets.exceptions.InvalidStatus as err:
            return int(err.response.status_code)
    return None


async def test_cryptofeed_connection_handler_moves_off_a_rate_limited_lab_proxy(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """cryptofeed 2.5.0's own WSAsyncConn and ConnectionHandler (its reconnect loop), hooked by
    install(), on the lab's Binance trade stream: messages flow through a leased lab proxy; once the
    simulator rate-limits that proxy's IP, the 429 is reported, the aggregator bars the proxy for
    binance, and the handler's reconnect goes through another proxy."""
    from cryptofeed.connection import WSAsyncConn
    from cryptofeed.connection_handler import ConnectionHandler

    import cryptofeed_proxybus
    from cryptofeed_proxybus import NatsSettings, ProxybusClient, ProxyInjector, ProxySettings

    command = lab_command()
    if command is None:
        pytest.skip(
            "the exchange lab (issue #13, branch lab: `proxybus lab`) is not in this build yet; "
            "this test runs once it has landed"
        )
    processes: list[Process] = []
    events: list[dict[str, Any]] = []
    stop = asyncio.Event()
    collector: asyncio.Task[None] | None = None
    handler: Any = None
    injector: ProxyInjector | None = None
    try:
        lab, inventory, ca = await start_lab(command, tmp_path, nats_server)
        processes.append(lab)
        urls = inventory_urls(inventory)
        bus = spawn(
            "proxybus-up",
            [str(REPO / "target/debug/proxybus"), "up", "--inventory", str(inventory)],
            nats_server.log_dir,
            env={"NATS_URL": nats_server.url, "RUST_LOG": "info"},
        )
        processes.append(bus)
        await wait_for_services(nats_server.url, ("proxybus-resolver", "proxybus-aggregator"))
        collector = asyncio.create_task(collect_feedback(nats_server.url, events, stop))
        settings = ProxySettings(enabled=True, external_service={"enabled": True})  # type: ignore[arg-type]
        client = ProxybusClient(
            settings, NatsSettings(servers=[nats_server.url]), client_id="cryptofeed-lab-1", fallback_policy="fail"
        )
        injector = ProxyInjector(settings, client)
        cryptofeed_proxybus.install(injector=injector)
        received: list[float] = []

        async def on_message(message: Any, connection: Any, timestamp: float) -> None:
            received.append(timestamp)

        async def nothing(connection: Any) -> None:
            return None

        stream = "wss://stream.binance.com:9443/stream?streams=btcusdt@trade"
        conn = WSAsyncConn(stream, "BINANCE", ssl=ssl.create_default_context(cafile=str(ca)))
        handler = ConnectionHandler(conn, nothing, on_message, nothing, retries=-1, timeout=-1)
        handler.start(asyncio.get_running_loop())

        def connected(after: float = 0.0, not_id: str | None = None) -> dict[str, Any] | None:
            for event in reversed(events):
                if (
                    (event["exchange_id"], event["connection_type"], event["phase"])
                    == ("binance", "websocket", "connected")
                    and event["_seen"] >= after
                    and event["proxy_id"] != not_id
                ):
                    return event
            return None

        await until(lambda: len(received) > 3, 30, "trades through the leased lab proxy")
        first = await until(connected, 10, "the connected feedback")
        rate_limited = {proxy_id(u): u for u in urls}[first["proxy_id"]]
        assert await use_up_ws_connects(stream, rate_limited, ca) == 429, "the simulator rate-limits the proxy's IP"

        marked = time.monotonic()
        before = len(received)
        await conn.close()  # the connection drops; cryptofeed's handler reconnects

        def verdict() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in events
                    if e["_seen"] >= marked
                    and e["exchange_id"] == "binance"
                    and e.get("error_kind") == "http_429"
                    and e["proxy_id"] == first["proxy_id"]
                ),
                None,
            )

        event = await until(verdict, 30, "the 429 reported as feedback")
        assert event["status_code"] == 429 and event["retry_after_seconds"] is not None
        state: str | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = await binance_state(nats_server.url, first["proxy_id"])
            if state not in (None, "healthy"):
                break
            await asyncio.sleep(0.3)
        assert state not in (None, "healthy"), f"the aggregator bars the proxy for binance (state {state})"
        other = await until(
            lambda: connected(marked, not_id=first["proxy_id"]), 60, "a reconnect through another proxy"
        )
        assert other["proxy_id"] != first["proxy_id"]
        await until(lambda: len(received) > before + 3, 30, "trades continue")
    finally:
        if handler is not None:
            handler.running = False
            with contextlib.suppress(Exception):
                await handler.conn.close()
        cryptofeed_proxybus.uninstall()
        if injector is not None:
            injector.close()
        stop.set()
        if collector is not None:
            await collector
        for process in reversed(processes):
            process.stop()


async def test_cryptofeed_feeds_through_lab_proxies_and_move_off_a_rate_limited_one(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    command = lab_command()
    if command is None:
        pytest.skip(
            "the exchange lab (issue #13, branch lab: `proxybus lab`) is not in this build yet; "
            "this test runs once it has landed"
        )
    processes: list[Process] = []
    stop = asyncio.Event()
    events: list[dict[str, Any]] = []
    collector: asyncio.Task[None] | None = None
    try:
        lab, inventory, ca = await start_lab(command, tmp_path, nats_server)
        processes.append(lab)
        urls = inventory_urls(inventory)
        assert len(urls) == 3
        bus = spawn(
            "proxybus-up",
            [str(REPO / "target/debug/proxybus"), "up", "--inventory", str(inventory)],
            nats_server.log_dir,
            env={"NATS_URL": nats_server.url, "RUST_LOG": "info"},
        )
        processes.append(bus)
        await wait_for_services(nats_server.url, ("proxybus-resolver", "proxybus-aggregator"))
        collector = asyncio.create_task(collect_feedback(nats_server.url, events, stop))
        status = tmp_path / "feed-status.json"
        feed = spawn(
            "cryptofeed",
            [sys.executable, str(HERE / "lab_feed.py"), str(status)],
            nats_server.log_dir,
            env={
                "CRYPTOFEED_PROXY_ENABLED": "true",
                "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED": "true",
                "PROXYBUS_FALLBACK_POLICY": "fail",  # never a direct connection to a real exchange host
                "NATS_URL": nats_server.url,
                "SSL_CERT_FILE": str(ca),
                "REQUESTS_CA_BUNDLE": str(ca),
            },
        )
        processes.append(feed)

        def trades() -> dict[str, int]:
            try:
                return dict(json.loads(status.read_text())["trades"])
            except (OSError, ValueError, KeyError):
                return {}

        await until(
            lambda: trades().get("BINANCE", 0) > 0 and trades().get("COINBASE", 0) > 0,
            60,
            f"trades from both feeds:\n{feed.text()[-3000:]}",
        )

        def connected(exchange: str, after: float = 0.0, not_id: str | None = None) -> dict[str, Any] | None:
            for event in reversed(events):
                if (
                    (event["exchange_id"], event["connection_type"], event["phase"])
                    == (exchange, "websocket", "connected")
                    and event["_seen"] >= after
                    and event["proxy_id"] != not_id
                ):
                    return event
            return None

        first = await until(lambda: connected("binance"), 10, "binance's connected feedback")
        assert await until(lambda: connected("coinbase"), 10, "coinbase's connected feedback")
        rate_limited = {proxy_id(u): u for u in urls}[first["proxy_id"]]

        # Use up that IP's websocket connects at binance (429 once over the limit).
        refused = await use_up_ws_connects(BINANCE_STREAM, rate_limited, ca)
        assert refused == 429, "the simulator rate-limits the proxy's IP"

        before = trades()["BINANCE"]
        marked = time.monotonic()
        status.with_name(status.name + ".reconnect-binance").touch()

        def verdict() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in events
                    if e["_seen"] >= marked
                    and e["exchange_id"] == "binance"
                    and e.get("error_kind") == "http_429"
                    and e["proxy_id"] == first["proxy_id"]
                ),
                None,
            )

        event = await until(verdict, 30, f"the 429 reported as feedback:\n{feed.text()[-3000:]}")
        assert event["status_code"] == 429 and event["retry_after_seconds"] is not None
        state: str | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = await binance_state(nats_server.url, first["proxy_id"])
            if state not in (None, "healthy"):
                break
            await asyncio.sleep(0.3)
        assert state not in (None, "healthy"), f"the aggregator bars the proxy for binance (state {state})"
        other = await until(
            lambda: connected("binance", marked, not_id=first["proxy_id"]),
            90,
            f"binance reconnected through another proxy:\n{feed.text()[-3000:]}",
        )
        assert other["proxy_id"] != first["proxy_id"]
        await until(lambda: trades()["BINANCE"] > before + 5, 30, "binance trades continue")
        passwords = [u.split("@")[0].rsplit(":", 1)[1] for u in urls if "@" in u]
        for process in processes:
            for password in passwords:
                assert password not in process.text(), f"a proxy password in {process.name}'s log"
    finally:
        stop.set()
        if collector is not None:
            await collector
        for process in reversed(processes):
            process.stop()
