"""What a connection's outcome says, in the contract's terms: ``error_kind`` from an exception or an
HTTP status, ``Retry-After`` in seconds, the exchanges' usage headers, and which outcomes are an
exchange's verdict on the proxy's IP.

The verdicts are those of proxybus' health model (``proxybus_shared::health``, ``docs/health.md``):
HTTP 403, 418, 429, 451 and websocket close 1008 (policy violation) / 1013 (try again later) bar a
proxy for that exchange only; a feed then reconnects through another proxy.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from .models import ErrorKind

#: HTTP statuses that are an exchange's verdict on an IP (Binance: 429 rate limit, 418 IP ban;
#: 451 restricted location; 403 WAF), with their ``error_kind``.
VERDICT_STATUSES: Final[dict[int, ErrorKind]] = {403: "http_403", 418: "http_418", 429: "http_429", 451: "http_451"}
#: Websocket close codes that are an exchange's verdict (RFC 6455 §7.4.1: 1008 policy violation;
#: IANA registry: 1013 try again later).
VERDICT_CLOSE_CODES: Final = frozenset({1008, 1013})
#: Response headers in which exchanges report what an IP has used of its limits (Binance's
#: ``X-MBX-USED-WEIGHT-*`` and ``X-MBX-ORDER-COUNT-*``, the common ``X-RateLimit-*`` and
#: ``RateLimit-*`` of Coinbase, Kraken, Bybit, OKX and the IETF draft). Matched case-insensitively by prefix.
USAGE_HEADER_PREFIXES: Final = ("x-mbx-used-weight", "x-mbx-order-count", "x-ratelimit-", "ratelimit-", "x-bapi-limit")


def error_kind_of_status(status: int) -> ErrorKind | None:
    """The ``error_kind`` of an HTTP status: None below 400, ``http_403/418/429/451``, ``http_5xx``, else ``other``."""
    if status < 400:
        return None
    if status in VERDICT_STATUSES:
        return VERDICT_STATUSES[status]
    if status == 407:
        return "proxy_auth"
    if 500 <= status <= 599:
        return "http_5xx"
    return "other"


def is_verdict(status: int | None = None, close_code: int | None = None) -> bool:
    """Whether an HTTP status or a websocket close code is an exchange's verdict on the proxy's IP."""
    return (status is not None and status in VERDICT_STATUSES) or (
        close_code is not None and close_code in VERDICT_CLOSE_CODES
    )


def retry_after_seconds(headers: Mapping[str, str] | None, now: datetime | None = None) -> int | None:
    """``Retry-After`` (RFC 9110 §10.2.3: delay-seconds or an HTTP date) in whole seconds, or None."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0, int((when - now).total_seconds()))


def usage_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The exchange's usage headers among ``headers`` (names lowercased)."""
    if not headers:
        return {}
    return {k.lower(): str(v) for k, v in headers.items() if k.lower().startswith(USAGE_HEADER_PREFIXES)}


def error_kind_of_exception(err: BaseException) -> tuple[ErrorKind, int | None]:
    """The ``error_kind`` of a failed connection attempt, and the HTTP status if one was seen.

    Handshake refusals (websockets' ``InvalidStatus``) give the status's kind; the proxy's own
    refusal (``InvalidProxyStatus`` 407, a SOCKS authentication error) is ``proxy_auth``. Any
    other refusal of ``CONNECT`` by the proxy (Squid's 403 for a port outside ``SSL_ports``, a
    429 or 451 of the proxy's own, a 502) is ``refused`` without a status: a proxy fault, never
    taken for the exchange's verdict here (no local bar) or by the aggregator (docs/health.md).
    """
    status = _status_of(err)
    proxy_status = _proxy_status_of(err)
    if proxy_status is not None:
        if proxy_status == 407:
            return "proxy_auth", proxy_status
        return "refused", None
    if status is not None:
        return (error_kind_of_status(status) or "other"), status
    name = type(err).__name__
    text = str(err).lower()
    if isinstance(err, TimeoutError | asyncio.TimeoutError) or "timed out" in text or "timeout" in name.lower():
        return "timeout", None
    if isinstance(err, socket.gaierror) or "name or service not known" in text or "name resolution" in text:
        return "dns", None
    if isinstance(err, ssl.SSLError | ssl.CertificateError) or "certificate" in text or "ssl" in name.lower():
        return "tls", None
    if "auth" in text and ("proxy" in text or "socks" in name.lower() or "socks" in text):
        return "proxy_auth", None
    if isinstance(err, ConnectionRefusedError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "refused", None
    if "refused" in text or "connection reset" in text or "proxy" in name.lower():
        return "refused", None
    if "closed" in name.lower():
        return "ws_closed", None
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        return error_kind_of_exception(cause)
    return "other", None


def _status_of(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) or getattr(err, "status", None)
    if type(err).__name__ == "InvalidProxyStatus":
        return None
    return int(status) if isinstance(status, int) else None


def _proxy_status_of(err: BaseException) -> int | None:
    if type(err).__name__ != "InvalidProxyStatus":
        return None
    status = getattr(getattr(err, "response", None), "status_code", None)
    return int(status) if isinstance(status, int) else None


def response_headers_of(err: BaseException) -> dict[str, str]:
    """Headers of the HTTP response an exception carries (a refused websocket handshake), else empty."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        headers = getattr(err, "headers", None)
    if headers is None:
        return {}
    try:
        return {str(k): str(v) for k, v in headers.items()}
    except AttributeError:
        return {}
