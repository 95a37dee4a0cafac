"""Choosing a proxy from the embedded ``ProxySettings`` (the seed's tertiary fallback), as
``proxybus_shared::embedded`` does: the exchange's own entry, else the default; a single ``url``
(strategy ``embedded_static``) or a pool picked by ``round_robin``, ``random`` (by weight) or
``least_connections``. Excluded proxies and schemes the caller cannot use are skipped.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection
from dataclasses import dataclass

from .settings import ProxyConfig, ProxySettings
from .wire import ConnectionType, proxy_id, scheme_of


@dataclass(frozen=True)
class EmbeddedChoice:
    """A proxy chosen from the settings, its strategy and its connect timeout (seconds)."""

    url: str
    strategy: str
    timeout_seconds: int


class EmbeddedSelector:
    """Picks proxies from ``ProxySettings``; thread-safe."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cursors: dict[str, int] = {}
        self._leases: dict[str, int] = {}
        self._random = random.Random()

    def select(
        self,
        exchange_id: str,
        connection_type: ConnectionType,
        exclude: Collection[str] = (),
        schemes: Collection[str] = (),
    ) -> EmbeddedChoice | None:
        """A proxy for ``exchange_id``, or None when proxying is off or nothing usable is configured."""
        if not self.settings.enabled:
            return None
        own = self.settings.exchanges.get(exchange_id)
        configs = [("own", own.get(connection_type) if own else None)]
        default = self.settings.default.get(connection_type) if self.settings.default else None
        configs.append(("default", default))
        for name, config in configs:
            if config is None:
                continue
            pool_key = f"{exchange_id if name == 'own' else 'default'}:{connection_type}"
            choice = self._select_from(pool_key, config, exclude, schemes)
            if choice is not None:
                return choice
        return None

    def release(self, url: str) -> None:
        """Gives back a ``least_connections`` lease (the connection closed)."""
        with self._lock:
            if self._leases.get(url, 0) > 0:
                self._leases[url] -= 1

    def _select_from(
        self, pool_key: str, config: ProxyConfig, exclude: Collection[str], schemes: Collection[str]
    ) -> EmbeddedChoice | None:
        pool = config.pool if config.pool and any(p.enabled for p in config.pool.proxies) else None
        if pool is not None:
            candidates = [(p.url.get_secret_value(), p.weight) for p in pool.proxies if p.enabled]
        elif config.url is not None:
            candidates = [(config.url.get_secret_value(), 1.0)]
        else:
            return None
        usable = [
            (url, weight)
            for url, weight in candidates
            if proxy_id(url) not in exclude and (not schemes or scheme_of(url) in schemes)
        ]
        if not usable:
            return None
        with self._lock:
            if pool is None:
                url, strategy = usable[0][0], "embedded_static"
            elif pool.strategy == "round_robin":
                cursor = self._cursors.get(pool_key, 0)
                self._cursors[pool_key] = cursor + 1
                url, strategy = usable[cursor % len(usable)][0], "embedded_round_robin"
            elif pool.strategy == "random":
                url = self._random.choices([u for u, _ in usable], weights=[w for _, w in usable])[0]
                strategy = "embedded_random"
            else:
                url = min(usable, key=lambda c: self._leases.get(c[0], 0))[0]
                self._leases[url] = self._leases.get(url, 0) + 1
                strategy = "embedded_least_connections"
        return EmbeddedChoice(url=url, strategy=strategy, timeout_seconds=config.timeout_seconds)
