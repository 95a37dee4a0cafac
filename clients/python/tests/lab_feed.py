"""A real cryptofeed 2.5.0 FeedHandler (Binance trades, Coinbase trades) plugged into proxybus with
``cryptofeed_proxybus.install()``; run by test_e2e_lab.py in its own process, so that the lab's CA
(``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``) is in force before aiohttp builds its TLS context.

Usage: python lab_feed.py STATUS_FILE. Every 0.2 s it writes ``{"trades": {exchange: n}}`` to
STATUS_FILE; when ``STATUS_FILE.reconnect-binance`` appears it closes Binance's websocket (as a
dropped connection would) and removes the file, so cryptofeed reconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import cryptofeed_proxybus

cryptofeed_proxybus.install()  # CRYPTOFEED_PROXY_* and NATS_URL from the environment

from cryptofeed import FeedHandler  # noqa: E402
from cryptofeed.connection import WSAsyncConn  # noqa: E402
from cryptofeed.defines import TRADES  # noqa: E402
from cryptofeed.exchanges import Binance, Coinbase  # noqa: E402

STATUS = Path(sys.argv[1])
TRIGGER = STATUS.with_name(STATUS.name + ".reconnect-binance")
counts: dict[str, int] = {"BINANCE": 0, "COINBASE": 0}


async def on_trade(trade: Any, receipt_timestamp: float) -> None:
    counts[trade.exchange] = counts.get(trade.exchange, 0) + 1


async def report(handler: FeedHandler) -> None:
    while True:
        STATUS.write_text(json.dumps({"trades": counts}))  # noqa: ASYNC240 - a tiny local file
        if TRIGGER.exists():
            TRIGGER.unlink()
            for feed in handler.feeds:
                if feed.id == "BINANCE":
                    for connection_handler in feed.connection_handlers:
                        if isinstance(connection_handler.conn, WSAsyncConn):
                            await connection_handler.conn.close()
        await asyncio.sleep(0.2)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": False})
    common: dict[str, Any] = {"channels": [TRADES], "callbacks": {TRADES: on_trade}, "retries": -1}
    handler.add_feed(Binance(symbols=["BTC-USDT"], **common))
    # cryptofeed 2.5.0 signs every Coinbase Advanced Trade subscribe with config["coinbase"]'s key (a
    # missing one fails in Coinbase.subscribe); the lab checks no signature, so any key does.
    lab_key = {"coinbase": {"key_id": "lab-key", "key_secret": "lab-secret"}}
    handler.add_feed(Coinbase(symbols=["BTC-USD"], config=lab_key, **common))
    handler.run(start_loop=False)
    loop = asyncio.get_event_loop()
    reporter = loop.create_task(report(handler))
    try:
        loop.run_forever()
    finally:
        reporter.cancel()
        cryptofeed_proxybus.shutdown_proxy_system()


if __name__ == "__main__":
    main()
