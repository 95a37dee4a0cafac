"""The proxybus wire contract (v1), as a Python client speaks it.

Every name here is fixed by the contract (``shared/CONTRACT.md`` and ``schemas/``,
defined once in Rust in ``proxybus-shared``): subjects, the stream, headers, the
encodings. Nothing else in this package spells one of them.

- Payloads are MessagePack maps keyed by field name; a request with header
  ``Content-Type: application/json`` carries JSON and gets JSON back.
- A proxy is identified by :func:`proxy_id` (first 8 bytes of SHA-256 of its URL,
  lowercase hex) and shown only as :func:`redact_url` outside the process using it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import msgpack

#: Contract version this client speaks (``schema_version``).
SCHEMA_VERSION: Final = 1
#: ``proxy.v1.request.{exchange_id}.{connection_type}``: request/reply to the resolver.
REQUEST_SUBJECT: Final = "proxy.v1.request.{exchange_id}.{connection_type}"
#: ``proxy.v1.feedback.{exchange_id}.{connection_type}``: JetStream publish into :data:`FEEDBACK_STREAM`.
FEEDBACK_SUBJECT: Final = "proxy.v1.feedback.{exchange_id}.{connection_type}"
#: The stream feedback goes to (duplicate window >= 2 minutes).
FEEDBACK_STREAM: Final = "PROXY_FEEDBACK"
#: The key-value bucket the aggregator keeps health in (key: ``proxy_id``).
HEALTH_BUCKET: Final = "PROXY_HEALTH"
#: Name of the resolver's NATS micro-service (``$SRV.PING.proxybus-resolver``).
RESOLVER_SERVICE: Final = "proxybus-resolver"
#: JetStream's de-duplication header; its value is the feedback's ``event_id``.
MSG_ID_HEADER: Final = "Nats-Msg-Id"
#: Micro-service error headers of an error reply.
SERVICE_ERROR_HEADER: Final = "Nats-Service-Error"
SERVICE_ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"
CONTENT_TYPE_HEADER: Final = "Content-Type"
JSON_CONTENT_TYPE: Final = "application/json"
MSGPACK_CONTENT_TYPE: Final = "application/msgpack"
#: Exchange ids and region names: ``[a-z0-9_-]{1,64}`` (anything else could not be a subject token).
TOKEN_PATTERN: Final = re.compile(r"^[a-z0-9_-]{1,64}$")
#: Proxy URL schemes proxybus hands out (``proxybus_shared::PROXY_SCHEMES`` and the URL issue's additions).
PROXY_SCHEMES: Final = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
#: What replaces a password (and a query string) in redacted URLs.
REDACTED: Final = "***"

ConnectionType = Literal["http", "websocket"]
Encoding = Literal["msgpack", "json"]


def request_subject(exchange_id: str, connection_type: ConnectionType) -> str:
    """The request subject of ``exchange_id``/``connection_type``; ``ValueError`` when a token is invalid."""
    check_token("exchange_id", exchange_id)
    return REQUEST_SUBJECT.format(exchange_id=exchange_id, connection_type=connection_type)


def feedback_subject(exchange_id: str, connection_type: ConnectionType) -> str:
    """The feedback subject of ``exchange_id``/``connection_type``; ``ValueError`` when a token is invalid."""
    check_token("exchange_id", exchange_id)
    return FEEDBACK_SUBJECT.format(exchange_id=exchange_id, connection_type=connection_type)


def check_token(what: str, value: str) -> str:
    """``value`` when it matches :data:`TOKEN_PATTERN`, else ``ValueError`` naming ``what``."""
    if not TOKEN_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} is not [a-z0-9_-]{{1,64}}")
    return value


def encode(payload: dict[str, Any], encoding: Encoding = "msgpack") -> bytes:
    """``payload`` as MessagePack with named fields (the default) or JSON."""
    if encoding == "json":
        return json.dumps(payload, separators=(",", ":")).encode()
    packed: bytes = msgpack.packb(payload, use_bin_type=True)
    return packed


def decode(data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
    """A reply's payload as a dict: JSON when its ``Content-Type`` says so, else MessagePack.

    Raises ``ValueError`` when it is neither a map nor decodable.
    """
    content_type = (headers or {}).get(CONTENT_TYPE_HEADER, "")
    try:
        value = json.loads(data) if content_type.startswith(JSON_CONTENT_TYPE) else msgpack.unpackb(data, raw=False)
    except Exception as err:
        raise ValueError(f"undecodable payload ({content_type or 'msgpack'}): {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"payload is a {type(value).__name__}, not a map")
    return value


def proxy_id(url: str) -> str:
    """Identity of the proxy at ``url``: lowercase hex of the first 8 bytes of SHA-256 of the URL as given.

    The contract's rule (``ProxyResponse.proxy_id``); residential gateways that differ only
    by username get different ids.
    """
    return hashlib.sha256(url.encode()).digest()[:8].hex()


def redact_url(url: str) -> str:
    """``url`` with its password (and query string) replaced by ``***``, the username kept.

    The rule of ``proxybus_shared::redact_url``: ``socks5://alice:s3cret@10.0.0.7:1080`` ->
    ``socks5://alice:***@10.0.0.7:1080``. A string that does not parse as a URL with a host
    keeps only its scheme, so nothing after ``://`` can leak.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        host, parts, port = None, None, None
    if parts is None or not parts.scheme or not host:
        scheme, sep, _ = url.partition("://")
        if sep and scheme and all(c.isalnum() or c == "+" for c in scheme):
            return f"{scheme}://{REDACTED}"
        return REDACTED
    userinfo = ""
    if parts.username is not None:
        userinfo = parts.username + (f":{REDACTED}" if parts.password is not None else "") + "@"
    shown_host = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}{shown_host}" + (f":{port}" if port is not None else "")
    path = "" if parts.path == "/" and not parts.query else parts.path
    return urlunsplit((parts.scheme, netloc, path, REDACTED if parts.query else "", ""))


_URL_WORD = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"`<>]+""")


def redact_text(text: str) -> str:
    """Free text (an error message, a log line) with every URL in it redacted as by :func:`redact_url`."""
    return _URL_WORD.sub(lambda m: redact_url(m.group(0).rstrip(".,;)]}")) + _trailing(m.group(0)), text)


def _trailing(word: str) -> str:
    stripped = word.rstrip(".,;)]}")
    return word[len(stripped) :]


def scheme_of(url: str) -> str:
    """The lowercase scheme of a proxy URL (``""`` when it has none)."""
    return url.partition("://")[0].lower() if "://" in url else ""


def is_socks(url: str) -> bool:
    """Whether ``url`` names a SOCKS proxy (``socks4``, ``socks4a``, ``socks5``, ``socks5h``)."""
    return scheme_of(url).startswith("socks")
