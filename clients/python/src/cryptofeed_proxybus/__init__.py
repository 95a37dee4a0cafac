"""cryptofeed-proxybus: cryptofeed feeds lease their proxies from proxybus over NATS.

Plugging released cryptofeed in takes three lines (``docs/python.md``)::

    import cryptofeed_proxybus
    cryptofeed_proxybus.install()      # reads CRYPTOFEED_PROXY_* and NATS_URL
    # ... build FeedHandler and feeds as usual

Layout:

- ``wire.py``: the contract's names (subjects, stream, headers), encodings, ``proxy_id``, redaction.
- ``models.py``: the contract's messages (pydantic), checked against ``schemas/*.json`` by tests.
- ``settings.py``: the seed's ``ProxySettings`` (``CRYPTOFEED_PROXY_*``) and ``NatsSettings``.
- ``breaker.py``, ``embedded.py``: the resolver's circuit breaker; embedded fallback selection.
- ``lease.py``, ``client.py``: :class:`ProxyLease` and :class:`ProxybusClient` (leases, cache,
  fallback, the feedback queue to JetStream).
- ``outcomes.py``: ``error_kind`` of exceptions and statuses, ``Retry-After``, usage headers, verdicts.
- ``injector.py``: the seed's :class:`ProxyInjector` and its module functions.
- ``hooks.py``: :func:`install` for released cryptofeed (2.5.0).
"""

from .breaker import BreakerState, CircuitBreaker
from .client import (
    ClientStats,
    FeedbackStats,
    NoProxyError,
    ProxybusClient,
    ProxybusError,
    ResolverError,
    default_client_id,
)
from .hooks import install, installed, uninstall
from .injector import (
    ProxyInjector,
    exchange_id_of,
    get_proxy_injector,
    init_proxy_system,
    shutdown_proxy_system,
)
from .lease import ProxyLease
from .models import ErrorReply, HealthStats, ProxyFeedback, ProxyRequest, ProxyResponse
from .settings import NatsSettings, ProxySettings, load_proxy_settings
from .wire import proxy_id, redact_text, redact_url

#: The seed's name for the client.
ProxyServiceClient = ProxybusClient

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ClientStats",
    "ErrorReply",
    "FeedbackStats",
    "HealthStats",
    "NatsSettings",
    "NoProxyError",
    "ProxyFeedback",
    "ProxyInjector",
    "ProxyLease",
    "ProxyRequest",
    "ProxyResponse",
    "ProxyServiceClient",
    "ProxySettings",
    "ProxybusClient",
    "ProxybusError",
    "ResolverError",
    "default_client_id",
    "exchange_id_of",
    "get_proxy_injector",
    "init_proxy_system",
    "install",
    "installed",
    "load_proxy_settings",
    "proxy_id",
    "redact_text",
    "redact_url",
    "shutdown_proxy_system",
    "uninstall",
]
