"""The seed's ``ProxySettings``, read with pydantic-settings exactly as cryptofeed's proxy branch does.

Environment: prefix ``CRYPTOFEED_PROXY_``, ``__`` between nesting levels, case-insensitive
(``CRYPTOFEED_PROXY_DEFAULT__HTTP__URL``, ``CRYPTOFEED_PROXY_EXCHANGES__BINANCE__WEBSOCKET__URL``,
``CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED``, ``…__ENDPOINTS`` as a JSON list,
``…__AUTH_CREDENTIALS__TOKEN`` …). An optional TOML file holds the same tree; the environment
wins over it. Defaults and ranges are the seed's (``ExternalProxyServiceConfig``) and
proxybus-shared's (``ProxyConfig.timeout_seconds`` 30, 1–300). Proxy URLs and credentials are
``SecretStr``: they never print.

The bus itself is named by ``NATS_URL`` (default ``nats://127.0.0.1:4222``) and the
``NATS_*`` credentials, read by :class:`NatsSettings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .wire import ConnectionType

PoolStrategy = Literal["round_robin", "random", "least_connections"]


class ProxyUrlConfig(BaseModel):
    """One proxy of an embedded pool."""

    url: SecretStr
    weight: float = Field(default=1.0, gt=0)
    enabled: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProxyPoolConfig(BaseModel):
    """An embedded pool: its proxies and how one is picked."""

    proxies: list[ProxyUrlConfig] = Field(default_factory=list)
    strategy: PoolStrategy = "round_robin"


class ProxyConfig(BaseModel):
    """A single proxy ``url`` or a ``pool`` for one connection type."""

    url: SecretStr | None = None
    timeout_seconds: int = Field(default=30, ge=1, le=300)
    pool: ProxyPoolConfig | None = None


class ConnectionProxies(BaseModel):
    """Proxies for REST (``http``) and websocket connections."""

    http: ProxyConfig | None = None
    websocket: ProxyConfig | None = None

    def get(self, connection_type: ConnectionType) -> ProxyConfig | None:
        """The configuration of ``connection_type``."""
        return self.http if connection_type == "http" else self.websocket


class ExternalProxyServiceConfig(BaseModel):
    """The seed's external proxy service block (``external_service``)."""

    enabled: bool = False
    endpoints: list[str] = Field(default_factory=list)
    auth_method: Literal["bearer_token", "api_key", "mutual_tls", "none"] = "bearer_token"
    auth_credentials: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_seconds: int = Field(default=10, ge=1, le=300)
    cache_ttl_seconds: int = Field(default=300, ge=0, le=86_400)
    circuit_breaker_enabled: bool = True
    fallback_to_embedded: bool = True
    #: Delegate only these exchanges (empty: all), the seed's phased rollout.
    exchanges: list[str] = Field(default_factory=list)


class ProxySettings(BaseSettings):
    """The seed's ``ProxySettings`` (``CRYPTOFEED_PROXY_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="CRYPTOFEED_PROXY_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
    )

    enabled: bool = False
    default: ConnectionProxies | None = None
    exchanges: dict[str, ConnectionProxies] = Field(default_factory=dict)
    external_service: ExternalProxyServiceConfig = Field(default_factory=ExternalProxyServiceConfig)

    @field_validator("exchanges")
    @classmethod
    def _lowercase(cls, value: dict[str, ConnectionProxies]) -> dict[str, ConnectionProxies]:
        return {name.lower(): proxies for name, proxies in value.items()}

    def proxy_config(self, exchange_id: str, connection_type: ConnectionType) -> list[ProxyConfig]:
        """The exchange's own configuration, then the default one (the order embedded selection tries)."""
        found = []
        own = self.exchanges.get(exchange_id.lower())
        if own and own.get(connection_type):
            found.append(own.get(connection_type))
        if self.default and self.default.get(connection_type):
            found.append(self.default.get(connection_type))
        return [config for config in found if config is not None]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get("path")
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_CONFIG_FILE: dict[str, Path] = {}


def load_proxy_settings(config_file: str | Path | None = None, **overrides: Any) -> ProxySettings:
    """``ProxySettings`` from the environment over the optional TOML ``config_file``.

    Keyword ``overrides`` win over both. Raises ``pydantic.ValidationError`` listing every
    invalid setting with its key (nothing is changed then).
    """
    if config_file is None:
        _CONFIG_FILE.pop("path", None)
        return ProxySettings(**overrides)
    _CONFIG_FILE["path"] = Path(config_file)
    try:
        return ProxySettings(**overrides)
    finally:
        _CONFIG_FILE.pop("path", None)


class NatsSettings(BaseModel):
    """Where the bus is and how to log in (``NATS_URL``, ``NATS_TOKEN``, ``NATS_USER`` + ``NATS_PASSWORD``,
    ``NATS_CREDS``, ``NATS_CA``, ``NATS_CONNECT_TIMEOUT_SECONDS``), as every proxybus part reads them."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    creds: str | None = None
    ca: str | None = None
    connect_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> NatsSettings:
        """From ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("NATS_URL"):
            values["servers"] = [s.strip() for s in env["NATS_URL"].split(",") if s.strip()]
        for key, name in (
            ("NATS_TOKEN", "token"),
            ("NATS_USER", "user"),
            ("NATS_PASSWORD", "password"),
            ("NATS_CREDS", "creds"),
            ("NATS_CA", "ca"),
            ("NATS_CONNECT_TIMEOUT_SECONDS", "connect_timeout_seconds"),
        ):
            if env.get(key):
                values[name] = env[key]
        return cls(**values)
