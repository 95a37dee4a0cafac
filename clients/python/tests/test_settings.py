"""The seed's CRYPTOFEED_PROXY_* variables and names, read with pydantic-settings, and the embedded
fallback selection they drive."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from cryptofeed_proxybus import load_proxy_settings, proxy_id
from cryptofeed_proxybus.embedded import EmbeddedSelector


def test_the_seeds_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CRYPTOFEED_PROXY_ENABLED": "true",
        "CRYPTOFEED_PROXY_DEFAULT__HTTP__URL": "socks5://fallback:fb-pw@127.0.0.1:1080",
        "CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL": "http://bn:bn-pw@127.0.0.1:3128",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED": "true",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS": '["https://proxy-service-1:8080", "https://proxy-service-2:8080"]',
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD": "bearer_token",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN": "your-service-token",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS": "7",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__CACHE_TTL_SECONDS": "120",
        "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__CIRCUIT_BREAKER_ENABLED": "false",
        "cryptofeed_proxy_external_service__fallback_to_embedded": "false",  # case-insensitive
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_proxy_settings()
    assert settings.enabled
    assert settings.default and settings.default.http and settings.default.http.url
    assert settings.default.http.url.get_secret_value() == "socks5://fallback:fb-pw@127.0.0.1:1080"
    binance = settings.exchanges["binance"].websocket
    assert binance and binance.url and binance.url.get_secret_value() == "http://bn:bn-pw@127.0.0.1:3128"
    service = settings.external_service
    assert service.enabled and service.endpoints == ["https://proxy-service-1:8080", "https://proxy-service-2:8080"]
    assert service.auth_credentials["token"].get_secret_value() == "your-service-token"
    assert (service.timeout_seconds, service.cache_ttl_seconds) == (7, 120)
    assert not service.circuit_breaker_enabled and not service.fallback_to_embedded
    shown = repr(settings) + str(settings)
    for secret in ("fb-pw", "bn-pw", "your-service-token"):
        assert secret not in shown, "secrets never print"


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "proxy.toml"
    file.write_text(
        'enabled = true\n[default.websocket]\nurl = "http://file:pw@127.0.0.1:1"\ntimeout_seconds = 12\n'
        "[external_service]\ntimeout_seconds = 3\n"
    )
    monkeypatch.setenv("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "9")
    settings = load_proxy_settings(file)
    assert settings.default and settings.default.websocket and settings.default.websocket.timeout_seconds == 12
    assert settings.external_service.timeout_seconds == 9
    assert load_proxy_settings().default is None, "the file applies only when named"


def test_invalid_settings_are_all_reported_with_their_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_METHOD", "password")
    with pytest.raises(pydantic.ValidationError) as caught:
        load_proxy_settings()
    text = str(caught.value)
    assert "timeout_seconds" in text and "auth_method" in text


def test_embedded_selection_own_entry_then_default_and_round_robin() -> None:
    settings = load_proxy_settings(
        enabled=True,
        default={"http": {"pool": {"proxies": [{"url": "http://a:1@127.0.0.1:1"}, {"url": "http://b:1@127.0.0.1:2"}]}}},
        exchanges={"BINANCE": {"http": {"url": "http://own:1@127.0.0.1:3"}}},
    )
    selector = EmbeddedSelector(settings)
    own = selector.select("binance", "http")
    assert own and (own.url, own.strategy) == ("http://own:1@127.0.0.1:3", "embedded_static")
    picks = [selector.select("kraken", "http") for _ in range(4)]
    assert [p.url for p in picks if p] == ["http://a:1@127.0.0.1:1", "http://b:1@127.0.0.1:2"] * 2
    assert all(p and p.strategy == "embedded_round_robin" for p in picks)
    skipped = selector.select("binance", "http", exclude={proxy_id("http://own:1@127.0.0.1:3")})
    assert skipped is not None and skipped.url.split(":")[1] in ("//a", "//b"), "the excluded own proxy is skipped"
    assert selector.select("kraken", "http", schemes={"socks5"}) is None
    assert selector.select("kraken", "websocket") is None
    assert EmbeddedSelector(load_proxy_settings(enabled=False)).select("kraken", "http") is None
