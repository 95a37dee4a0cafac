"""The pydantic models against the repository's JSON Schemas and golden examples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgpack
import pytest
from conftest import REPO

from cryptofeed_proxybus import ErrorReply, HealthStats, ProxyFeedback, ProxyRequest, ProxyResponse, redact_url
from cryptofeed_proxybus.lease import ProxyLease

SCHEMAS = REPO / "schemas"
MODELS = {
    "proxy_request": ProxyRequest,
    "proxy_response": ProxyResponse,
    "proxy_feedback": ProxyFeedback,
    "error_reply": ErrorReply,
    "health_stats": HealthStats,
}
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def schema(name: str) -> dict[str, object]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_schema_field_is_a_model_field_and_back(name: str) -> None:
    model = MODELS[name]
    properties = set(schema(name)["properties"])  # type: ignore[arg-type]
    fields = set(model.model_fields)
    extensions = set(model.extensions)
    assert properties - fields == set(), f"{name}: schema fields the model lacks"
    assert fields - properties - extensions == set(), f"{name}: model fields the schema lacks"
    required = set(schema(name)["required"])  # type: ignore[arg-type]
    assert {f for f, info in model.model_fields.items() if info.is_required()} <= required


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_examples_decode_and_reencode_valid(name: str) -> None:
    golden_json = json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())
    golden_msgpack = msgpack.unpackb((SCHEMAS / "examples" / f"{name}.msgpack").read_bytes(), raw=False)
    assert golden_msgpack == golden_json
    decoded = MODELS[name].model_validate(golden_msgpack)
    wire = decoded.to_wire()
    jsonschema.validate(wire, schema(name), format_checker=FORMATS)


def test_what_the_client_sends_is_valid() -> None:
    request = ProxyRequest(exchange_id="binance", connection_type="websocket", client_id="cryptofeed-h-1")
    wire = request.to_wire()
    jsonschema.validate(wire, schema("proxy_request"), format_checker=FORMATS)
    assert "exclude_proxy_ids" not in wire and "proxy_schemes" not in wire, "extensions only when non-empty"
    excluded = ProxyRequest(
        exchange_id="binance", connection_type="http", client_id="c", exclude_proxy_ids=["cc3dd0c247d6ff41"]
    ).to_wire()
    assert excluded["exclude_proxy_ids"] == ["cc3dd0c247d6ff41"]
    jsonschema.validate(excluded, schema("proxy_request"), format_checker=FORMATS)

    lease = ProxyLease(
        proxy_url="http://alice:s3cret@10.0.0.7:3128",
        proxy_id="cc3dd0c247d6ff41",
        ttl_seconds=60,
        strategy="round_robin",
        source="service",
        exchange_id="binance",
        connection_type="websocket",
    )
    event = lease.feedback(
        "c",
        "failed",
        False,
        error_kind="http_429",
        status_code=429,
        retry_after_seconds=7,
        error_details="GET http://alice:s3cret@10.0.0.7:3128 refused",
        ws_close_code=None,
    )
    assert event is not None
    wire = event.to_wire()
    jsonschema.validate(wire, schema("proxy_feedback"), format_checker=FORMATS)
    assert "s3cret" not in json.dumps(wire)
    assert wire["proxy_url"] == "http://alice:***@10.0.0.7:3128"
    assert "s3cret" not in repr(lease) and "s3cret" not in str(lease)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="exchange_id"):
        ProxyRequest(exchange_id="Binance.ws", connection_type="http", client_id="c")
    with pytest.raises(ValueError):
        ProxyRequest(exchange_id="binance", connection_type="ftp", client_id="c")  # type: ignore[arg-type]


def test_unknown_fields_are_ignored_and_missing_version_is_one() -> None:
    response = ProxyResponse.model_validate({"strategy": "direct", "ttl_seconds": 5, "new_field": [1]})
    assert response.schema_version == 1 and response.proxy_url is None and response.source == "service"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("socks5://alice:s3cret@10.0.0.7:1080", "socks5://alice:***@10.0.0.7:1080"),
        ("http://bob:pw@proxy.example:3128", "http://bob:***@proxy.example:3128"),
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
        ("http://u:p@[::1]:3128", "http://u:***@[::1]:3128"),
        ("user:secret@host", "***"),
        ("http://u:p@host:3128/?token=abc", "http://u:***@host:3128/?***"),
    ],
)
def test_redaction_follows_the_shared_rule(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_examples_dir_exists() -> None:
    assert Path(SCHEMAS / "examples").is_dir()
