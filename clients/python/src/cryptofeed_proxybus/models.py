"""The contract's messages as pydantic models (``schemas/*.schema.json`` is their machine-readable form).

Decoding ignores unknown fields and accepts a missing ``schema_version`` as 1 (the
contract's forward-compatibility rules). :meth:`WireModel.to_wire` gives the dict that
goes on the bus; the contract's extensions (``exclude_proxy_ids``, ``proxy_schemes``,
``session_key``, ``ws_close_code``, ``usage_headers``, ``connect_count``, ``probe``) are written
only when they carry something (not null, empty or false), so a resolver or aggregator older
than them sees exactly a v1 message.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .wire import SCHEMA_VERSION, TOKEN_PATTERN, ConnectionType, redact_text, redact_url

FallbackPolicy = Literal["direct_connection", "embedded_fallback", "fail"]
ResponseSource = Literal["service", "cache", "stale_cache", "embedded", "direct"]
FeedbackPhase = Literal["connect_start", "connected", "failed", "disconnected", "request"]
#: The contract's ``error_kind`` values (``ErrorKind`` in ``schemas/proxy_feedback.schema.json``).
ErrorKind = Literal[
    "timeout",
    "refused",
    "dns",
    "tls",
    "proxy_auth",
    "http_403",
    "http_418",
    "http_429",
    "http_451",
    "http_5xx",
    "ws_closed",
    "other",
]
HealthState = Literal["healthy", "degraded", "ejected"]
#: An operator's control (``proxybus ban|unban|drain|undrain|disable|enable``; docs/health.md).
OperatorAction = Literal["ban", "unban", "drain", "undrain", "disable", "enable"]


class WireModel(BaseModel):
    """A contract message: unknown fields ignored on decode, extensions omitted when empty on encode."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    #: Fields that extend contract v1 and are left out of :meth:`to_wire` while empty.
    extensions: ClassVar[frozenset[str]] = frozenset()

    schema_version: int = SCHEMA_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The dict that goes on the bus (JSON types: timestamps as RFC 3339 strings)."""
        data = self.model_dump(mode="json")
        for name in self.extensions:
            if data.get(name) in (None, [], {}, False):
                data.pop(name, None)
        return data


def _check_token(value: str | None, what: str) -> str | None:
    if value is not None and not TOKEN_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} is not [a-z0-9_-]{{1,64}}")
    return value


class ProxyRequest(WireModel):
    """A feed asks for a proxy on ``proxy.v1.request.{exchange_id}.{connection_type}``."""

    extensions: ClassVar[frozenset[str]] = frozenset({"exclude_proxy_ids", "proxy_schemes", "session_key"})

    exchange_id: str
    connection_type: ConnectionType
    region: str | None = None
    client_id: str
    request_id: str | None = Field(default_factory=lambda: str(uuid.uuid4()))
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: Proxies the caller must not get (a retry after an exchange's verdict); extension of v1.
    exclude_proxy_ids: list[str] = Field(default_factory=list)
    #: Proxy URL schemes the caller can use; empty means any; extension of v1.
    proxy_schemes: list[str] = Field(default_factory=list)
    #: One logical session (1-128 printable characters): the pool keeps its proxy while healthy
    #: and rotates it as planned (docs/health.md, "Sessions that rotate"); extension of v1.
    session_key: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("exchange_id")
    @classmethod
    def _exchange(cls, value: str) -> str:
        return _check_token(value, "exchange_id") or value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return _check_token(value, "region")


class ProxyResponse(WireModel):
    """The resolver's answer. ``proxy_url`` None means "connect directly"; it carries credentials.

    ``resolver_region`` (an extension of contract v1) names the region of the resolver that
    answered; next to ``region`` (the proxy's) it says whether the request was failed over.
    """

    extensions: ClassVar[frozenset[str]] = frozenset({"resolver_region"})

    proxy_url: str | None = None
    proxy_id: str | None = None
    strategy: str
    ttl_seconds: int = Field(ge=0)
    fallback_policy: FallbackPolicy = "direct_connection"
    source: ResponseSource = "service"
    region: str | None = None
    request_id: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    resolver_region: str | None = None

    @field_validator("resolver_region")
    @classmethod
    def _resolver_region(cls, value: str | None) -> str | None:
        return _check_token(value, "region")

    def __repr__(self) -> str:  # never the password
        url = redact_url(self.proxy_url) if self.proxy_url else None
        return f"ProxyResponse(proxy_url={url!r}, proxy_id={self.proxy_id!r}, source={self.source!r})"

    __str__ = __repr__


class ErrorReply(WireModel):
    """The resolver's error reply (``code``: 400, 404, 413, 503, 500; ``error``: its name)."""

    code: int
    error: str
    message: str
    request_id: str | None = None


class ProxyFeedback(WireModel):
    """What happened with one proxy, published into stream ``PROXY_FEEDBACK``.

    ``proxy_url`` is stored redacted whatever it is built from; ``error_details`` is redacted
    free text. ``event_id`` is also the ``Nats-Msg-Id`` header, so a repeat folds once.
    """

    extensions: ClassVar[frozenset[str]] = frozenset({"ws_close_code", "usage_headers", "connect_count", "probe"})

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    proxy_id: str
    proxy_url: str
    exchange_id: str
    connection_type: ConnectionType
    region: str | None = None
    phase: FeedbackPhase
    success: bool
    latency_ms: int | None = Field(default=None, ge=0)
    error_kind: ErrorKind | None = None
    status_code: int | None = Field(default=None, ge=0, le=65535)
    retry_after_seconds: int | None = Field(default=None, ge=0)
    error_details: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    client_id: str
    #: Close code of a websocket the peer closed (RFC 6455 §7.4.1); extension of v1.
    ws_close_code: int | None = None
    #: The exchange's usage headers on a REST answer (``X-MBX-USED-WEIGHT-1M`` …); extension of v1.
    usage_headers: dict[str, str] = Field(default_factory=dict)
    #: Websocket connects this report stands for (rate budgets; absent: a ``connect_start`` is one).
    connect_count: int | None = Field(default=None, ge=0)
    #: True when a pool service's active probe reported it, not a feed; extension of v1.
    probe: bool = False

    @field_validator("proxy_url")
    @classmethod
    def _redacted(cls, value: str) -> str:
        return redact_url(value)

    @field_validator("error_details")
    @classmethod
    def _details(cls, value: str | None) -> str | None:
        return None if value is None else redact_text(value)[:1024]

    @field_validator("exchange_id")
    @classmethod
    def _exchange(cls, value: str) -> str:
        return _check_token(value, "exchange_id") or value


class ExchangeHealth(BaseModel):
    """Health of a proxy for one exchange (``HealthStats.exchanges``)."""

    model_config = ConfigDict(extra="ignore")
    successes: int = 0
    failures: int = 0
    state: str = "healthy"
    banned_until: datetime | None = None
    last_error_kind: str | None = None


class OperatorControl(BaseModel):
    """An operator's ban, drain or disable in force on a proxy, or the last one issued."""

    model_config = ConfigDict(extra="ignore")

    action: OperatorAction
    #: The one exchange it is about; None means every exchange.
    exchange_id: str | None = None
    #: When it ends by itself; None means until lifted.
    until: datetime | None = None
    reason: str
    operator: str
    at: datetime
    #: Stream sequence of the event in ``PROXY_FEEDBACK`` (the audit trail).
    seq: int = Field(ge=0)


class HealthStats(WireModel):
    """A proxy's health as the aggregator folds it (KV ``PROXY_HEALTH``, ``proxy.v1.health.{region}``)."""

    proxy_id: str
    proxy_url: str
    region: str | None = None
    state: HealthState
    total: int
    successes: int
    failures: int
    success_rate: float
    latency_ewma_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    consecutive_failures: int
    ejections: int
    ejected_until: datetime | None = None
    last_error_kind: str | None = None
    exchanges: dict[str, ExchangeHealth] = Field(default_factory=dict)
    #: Failures counted by error kind (extension of the contract).
    error_counts: dict[str, int] = Field(default_factory=dict)
    #: Operators' bans, drains and disables in force (extension of the contract).
    operator_controls: list[OperatorControl] = Field(default_factory=list)
    #: The last operator event about this proxy (extension of the contract).
    last_operator_action: OperatorControl | None = None
    updated_at: datetime
    last_seq: int
