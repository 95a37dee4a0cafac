"""``ProxyLease``: what ``ProxybusClient.get_proxy`` hands out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .models import ErrorKind, FeedbackPhase, ProxyFeedback
from .wire import ConnectionType, redact_url


@dataclass(frozen=True, repr=False)
class ProxyLease:
    """A proxy to use for one exchange and connection type, for ``ttl_seconds``.

    ``proxy_url`` carries the proxy's credentials: use it to connect, never log it (``repr``
    and ``str`` show it redacted). ``proxy_url`` None means "connect directly".
    ``source`` is the contract's ``ResponseSource`` of the answer (``service``, ``cache``,
    ``stale_cache``, ``embedded``, ``direct``), ``cached`` whether this client answered it
    from its own cache. ``expires_at`` is on the client's monotonic clock.
    """

    proxy_url: str | None
    proxy_id: str | None
    ttl_seconds: int
    strategy: str
    source: str
    exchange_id: str
    connection_type: ConnectionType
    region: str | None = None
    fallback_policy: str = "direct_connection"
    request_id: str | None = None
    expires_at: float = 0.0
    cached: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        """Alias of ``proxy_url``."""
        return self.proxy_url

    @property
    def is_direct(self) -> bool:
        """True when no proxy is to be used."""
        return self.proxy_url is None

    @property
    def redacted_url(self) -> str | None:
        """``proxy_url`` with its password replaced by ``***``."""
        return redact_url(self.proxy_url) if self.proxy_url else None

    def expired(self, now: float | None = None) -> bool:
        """Whether the TTL has run out at ``now`` (default: ``time.monotonic()``)."""
        return (time.monotonic() if now is None else now) >= self.expires_at

    def feedback(
        self,
        client_id: str,
        phase: FeedbackPhase,
        success: bool,
        *,
        latency_ms: int | None = None,
        error_kind: ErrorKind | None = None,
        status_code: int | None = None,
        retry_after_seconds: int | None = None,
        error_details: str | None = None,
        ws_close_code: int | None = None,
        usage_headers: dict[str, str] | None = None,
    ) -> ProxyFeedback | None:
        """A feedback event about this lease's proxy (None for a direct connection: nothing to judge)."""
        if self.proxy_url is None or self.proxy_id is None:
            return None
        return ProxyFeedback(
            proxy_id=self.proxy_id,
            proxy_url=self.proxy_url,  # redacted by the model
            exchange_id=self.exchange_id,
            connection_type=self.connection_type,
            region=self.region,
            phase=phase,
            success=success,
            latency_ms=latency_ms,
            error_kind=error_kind,
            status_code=status_code,
            retry_after_seconds=retry_after_seconds,
            error_details=error_details,
            client_id=client_id,
            ws_close_code=ws_close_code,
            usage_headers=usage_headers or {},
        )

    def __repr__(self) -> str:
        return (
            f"ProxyLease(proxy_url={self.redacted_url!r}, proxy_id={self.proxy_id!r}, "
            f"exchange_id={self.exchange_id!r}, connection_type={self.connection_type!r}, "
            f"source={self.source!r}, strategy={self.strategy!r}, ttl_seconds={self.ttl_seconds})"
        )

    __str__ = __repr__
