"""Triage's settings: one validated object from the service's config and the environment.

Guarantees:
- Every setting can come from an environment variable: `REDIS_URL` (the Heroku/Render
  convention) and `TRIAGE_*` for the rest. Nested values use `__`, for example
  `TRIAGE_TIERS__CRITICAL__MAX_RETRIES=3`.
- A service may declare its structure in Python (`ROUTES`, `QUEUES`, `TIERS`,
  `PRIORITY_HOOK` in its `config` module, see `CONFIG_NAMES`); the environment still
  overrides it, field by field (a tier override changes only the fields it names).
  Deploy-specific values (Redis URL, namespace, limits) come from the environment only.
- An invalid value raises `ConfigError` when settings are loaded, that is when a
  process starts, with one line per problem naming the environment variable (or the
  config name, for a value that came from the service's config) and what it accepts.
  Nothing runs on a half-valid configuration.
- The Redis password never appears in a repr, a log line or an error message, whatever
  characters it holds: use `Settings.redis_url_redacted` wherever the URL is shown.
- `REDIS_URL` is read as `triage.broker.connection.parse_url` reads it (schemes are
  case-insensitive; an unknown query option is an error naming it). TLS options come from its
  query, and, for what the query does not say, from `TRIAGE_REDIS_SSL_*` (the variables apply
  to TLS URLs only; a plain `redis://` URL ignores them). `Settings.redis_client()` is the
  client every process builds from them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Set
from typing import Any, Literal

import redis
from pydantic import AliasChoices, Field, FilePath, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from triage.broker.connection import client_from_url, parse_url
from triage.broker.connection import redact_url as redact_url
from triage.cron import zone
from triage.setting_types import BREAKER_NAME as BREAKER_NAME
from triage.setting_types import MIB as MIB
from triage.setting_types import TIER_NAMES as TIER_NAMES
from triage.setting_types import BackoffKind as BackoffKind
from triage.setting_types import BreakerSettings as BreakerSettings
from triage.setting_types import QueueSetting as QueueSetting
from triage.setting_types import TenantLimit as TenantLimit
from triage.setting_types import TierName as TierName
from triage.setting_types import TierOverride as TierOverride

_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")


class ConfigError(Exception):
    """The environment holds an invalid setting; the message names each variable."""


class Settings(BaseSettings):
    """The effective configuration of one Triage process."""

    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "TRIAGE_REDIS_URL"),
        repr=False,
    )
    # Redis over TLS (rediss://, rediss+cluster://, rediss+sentinel://): what the URL's query does not
    # say (the query wins). Heroku Redis sets REDIS_URL and signs with its own CA: TRIAGE_REDIS_SSL_CERT_REQS=none.
    redis_ssl_cert_reqs: Literal["none", "optional", "required"] | None = None
    redis_ssl_ca_certs: FilePath | None = None
    redis_ssl_check_hostname: bool | None = None
    redis_ssl_certfile: FilePath | None = None  # a client certificate (with its key, or with the next)
    redis_ssl_keyfile: FilePath | None = None
    namespace: str = Field(default="triage", pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    max_payload_bytes: int = Field(default=10 * MIB, gt=0, le=512 * MIB)
    encoder: Literal["msgpack", "json"] = "msgpack"
    tiers: dict[TierName, TierOverride] = Field(default_factory=dict)
    # Extra named queues, each inheriting the policies of a tier: {"email": "default"}; or with
    # shards spreading one queue over cluster nodes: {"default": {"tier": "default", "shards": 3}}.
    queues: dict[str, QueueSetting] = Field(default_factory=dict)
    # Ordered routing rules for plain Dramatiq actors: [["erp.orders.*", "critical"], ...].
    # The target is a tier or a queue; there are no built-in rules (unmatched actors go to default).
    routes: list[tuple[str, str]] = Field(default_factory=list)
    # Seconds without a heartbeat after which a worker is presumed dead and its messages reclaimed.
    heartbeat_timeout: float = Field(default=30.0, gt=0, le=3600)
    # Durable enqueue: wait for this many replicas to confirm every enqueue (0: do not wait).
    min_replicas: int = Field(default=0, ge=0, le=16)
    replica_timeout_ms: int = Field(default=1000, gt=0, le=60_000)
    # Workers declare the demo's actors (`triage run` sets it; see `triage demo`).
    demo: bool = False
    # A function that adjusts message priorities: "package.module:function".
    priority_hook: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    # Named circuit breakers: {"telegram": {"failure_threshold": 5, "recovery_timeout": 60}}.
    breakers: dict[str, BreakerSettings] = Field(default_factory=dict)
    # Per-tenant dispatch limits by tier or queue: {"background": {"*": {"rpm": 600}, "acme": {...}}};
    # "*" is every tenant's default there, another key one tenant's own limits.
    tenant_limits: dict[str, dict[str, TenantLimit]] = Field(default_factory=dict)
    # The tiers' defaults, as the operators' variables name them (they win over tenant_limits' "*").
    tenant_rpm_critical: float | None = Field(default=None, ge=0)
    tenant_rpm_default: float | None = Field(default=None, ge=0)
    tenant_rpm_background: float | None = Field(default=None, ge=0)
    tenant_burst_critical: float | None = Field(default=None, ge=0)
    tenant_burst_default: float | None = Field(default=None, ge=0)
    tenant_burst_background: float | None = Field(default=None, ge=0)
    tenant_max_in_flight_critical: int | None = Field(default=None, ge=0)
    tenant_max_in_flight_default: int | None = Field(default=None, ge=0)
    tenant_max_in_flight_background: int | None = Field(default=None, ge=0)
    tenant_max_pending_critical: int | None = Field(default=None, ge=0)
    tenant_max_pending_default: int | None = Field(default=None, ge=0)
    tenant_max_pending_background: int | None = Field(default=None, ge=0)
    tenant_admission_critical: Literal["deny", "defer"] | None = None
    tenant_admission_default: Literal["deny", "defer"] | None = None
    tenant_admission_background: Literal["deny", "defer"] | None = None
    # A tenant idle this long (nothing pending or in flight) has its bookkeeping forgotten.
    tenant_idle_seconds: float = Field(default=3600.0, ge=1, le=30 * 86_400)
    # Load shedding: while a critical queue's oldest waiting message has waited longer than
    # load_shedding_after_seconds (default: the critical tier's SLA), new messages for the
    # load_shedding_tiers are delayed load_shedding_defer_seconds (never refused or dropped).
    load_shedding: bool = True
    load_shedding_tiers: tuple[TierName, ...] = ("background",)
    load_shedding_after_seconds: float | None = Field(default=None, gt=0, le=86_400)
    load_shedding_defer_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # The web process (`triage serve`): the admin API's bearer token (none: the process mints
    # one at start and prints a login link, and binds loopback addresses only), and where it listens.
    admin_token: str | None = Field(default=None, min_length=16, repr=False)
    # More admin tokens, by name ({"alice": "..."}): the audit log names who acted (the one above is "admin").
    admin_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    # The dashboard (`/` of the web process) shows everything and offers no action.
    dashboard_readonly: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65_535)
    # The largest request body the web process reads (413 beyond, before any other work).
    web_max_body_bytes: int = Field(default=MIB, ge=1024, le=512 * MIB)
    # Whose X-Forwarded-For / X-Forwarded-Proto to believe (uvicorn's own variable): addresses or
    # networks, comma-separated, or "*" where the process is reachable only through a router
    # (Heroku, Render). The login throttle counts failures by the client address this gives.
    forwarded_allow_ips: str = Field(
        default="127.0.0.1,::1", validation_alias=AliasChoices("FORWARDED_ALLOW_IPS", "TRIAGE_FORWARDED_ALLOW_IPS")
    )
    # Worker metrics: each `dramatiq` master serves its processes' metrics on this port (0: none).
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"
    # The last hour's figures (succeeded_last_hour, ...): per-minute buckets in Redis, written by workers.
    hourly_stats: bool = True
    # Worker recycling: a worker process that has run this many messages, or holds this much
    # resident memory, is replaced by a fresh one (none: never).
    max_messages_per_process: int | None = Field(default=None, gt=0)
    max_rss_mb_per_process: int | None = Field(default=None, gt=0, le=1_048_576)
    # Worker processes' thread switch interval in ms (sys.setswitchinterval; none: Python's 5 ms).
    switch_interval_ms: float | None = Field(default=None, gt=0, le=1000)
    # The time zone of every periodic actor's cron spec (an IANA name).
    periodic_timezone: str = "UTC"

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_tier_alone(cls, value: Any) -> Any:
        """`{"email": "default"}` is `{"email": {"tier": "default"}}`."""
        if isinstance(value, Mapping):
            return {q: {"tier": v} if isinstance(v, str) else v for q, v in value.items()}
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parse_url(value)  # URLError (a ValueError) says what is wrong, never quoting a credential
        return value

    @field_validator("redis_ssl_cert_reqs", mode="before")
    @classmethod
    def _cert_reqs_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_ssl_keyfile")
    @classmethod
    def _key_with_its_certificate(cls, value: FilePath | None, info: ValidationInfo) -> FilePath | None:
        if value is not None and info.data.get("redis_ssl_certfile") is None:
            raise ValueError("a key file needs its certificate: set TRIAGE_REDIS_SSL_CERTFILE too")
        return value

    @field_validator("admin_tokens")
    @classmethod
    def _check_admin_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for name, token in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) or name in ("local", "admin"):
                raise ValueError(
                    f"token name {name!r} must match [A-Za-z0-9_-]{{1,64}} and not be 'local' or 'admin'"
                    " ('admin' is TRIAGE_ADMIN_TOKEN's)"
                )
            if len(token) < 16:
                raise ValueError(f"the token of {name!r} must have at least 16 characters")
        return value

    @field_validator("periodic_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        zone(value)  # CronError (a ValueError) names it
        return value

    @field_validator("queues")
    @classmethod
    def _check_queue_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _QUEUE_NAME.fullmatch(name) or name.endswith((".DQ", ".XQ")):
                raise ValueError(f"queue name {name!r} must match [a-zA-Z_][a-zA-Z0-9._-]* and not end in .DQ/.XQ")
        return value

    @field_validator("load_shedding_tiers")
    @classmethod
    def _check_shed_tiers(cls, value: tuple[TierName, ...]) -> tuple[TierName, ...]:
        if "critical" in value:
            raise ValueError("the critical tier is the one load shedding protects; it cannot be shed")
        return value

    @field_validator("breakers")
    @classmethod
    def _check_breaker_names(cls, value: dict[str, BreakerSettings]) -> dict[str, BreakerSettings]:
        for name in value:
            if not re.fullmatch(BREAKER_NAME, name):
                raise ValueError(f"breaker name {name!r} must match {BREAKER_NAME} (lower case: env names are)")
        return value

    def queue_tiers(self) -> dict[str, TierName]:
        """`queues` as queue -> tier."""
        return {q: v.tier for q, v in self.queues.items()}

    def queue_shards(self) -> dict[str, int]:
        """The queues given more than one shard, and how many."""
        return {q: v.shards for q, v in self.queues.items() if v.shards > 1}

    def tenant_defaults(self, queue: str, tier: TierName) -> TenantLimit:
        """Every tenant's limits on `queue` (of `tier`): the queue's "*", else the tier's, with the
        tier's TRIAGE_TENANT_*_<TIER> variables over the tier's."""
        own = self.tenant_limits.get(queue, {}).get("*")
        if own is not None and queue != tier:
            return own
        base = self.tenant_limits.get(tier, {}).get("*") or TenantLimit()
        fields = {
            "rpm": getattr(self, f"tenant_rpm_{tier}"),
            "burst": getattr(self, f"tenant_burst_{tier}"),
            "max_in_flight": getattr(self, f"tenant_max_in_flight_{tier}"),
            "max_pending": getattr(self, f"tenant_max_pending_{tier}"),
            "admission": getattr(self, f"tenant_admission_{tier}"),
        }
        return base.model_copy(update={k: v for k, v in fields.items() if v is not None})

    def tenant_overrides(self, queue: str, tier: TierName) -> dict[str, TenantLimit]:
        """Tenants with limits of their own on `queue`: the tier's, then the queue's."""
        merged = {**self.tenant_limits.get(tier, {}), **self.tenant_limits.get(queue, {})}
        defaults = self.tenant_defaults(queue, tier)
        # A tenant's own fields over the queue's defaults: an own max_pending keeps the default rate.
        return {
            tenant: defaults.model_copy(update=limit.model_dump(exclude_unset=True))
            for tenant, limit in merged.items()
            if tenant != "*"
        }

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)

    def redis_tls(self) -> dict[str, object]:
        """The TRIAGE_REDIS_SSL_* variables that are set, as TLS options (see `redis_client`)."""
        names = ("cert_reqs", "ca_certs", "check_hostname", "certfile", "keyfile")
        values = {f"ssl_{name}": getattr(self, f"redis_ssl_{name}") for name in names}
        return {key: str(v) if isinstance(v, os.PathLike) else v for key, v in values.items() if v is not None}

    def redis_client(self, **options: object) -> redis.Redis:
        """A client of `REDIS_URL` with its TLS options: the URL's query over TRIAGE_REDIS_SSL_*."""
        return client_from_url(self.redis_url, tls=self.redis_tls(), **options)

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data, safe to print: secrets are redacted."""
        data = self.model_dump(mode="json")
        data["redis_url"] = self.redis_url_redacted
        if data.get("admin_token"):
            data["admin_token"] = "***"  # noqa: S105 (the redaction, not a password)
        data["admin_tokens"] = dict.fromkeys(data.get("admin_tokens") or {}, "***")
        return data


# The structure a service may declare in its `config` module, as upper-case names.
CONFIG_NAMES = ("ROUTES", "QUEUES", "TIERS", "PRIORITY_HOOK", "BREAKERS", "TENANT_LIMITS")


def config_values(config: object | Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a service's `config` (a module, or a mapping) declares: its upper-case names.

    An upper-case name that is not one of `CONFIG_NAMES` is an error, so a typo is not
    silently ignored and a deploy-specific value is not hard-coded by mistake.
    """
    if config is None:
        return {}
    if isinstance(config, Mapping):
        items = list(config.items())
    else:
        items = [(name, getattr(config, name)) for name in dir(config)]
    values: dict[str, Any] = {}
    for name, value in items:
        if not name.isupper() or name.startswith("_"):
            continue
        if name not in CONFIG_NAMES:
            raise ConfigError(
                f"invalid configuration:\n  config.{name}: not a structural setting (the service's config "
                f"takes {', '.join(CONFIG_NAMES)}); deploy-specific values come from the environment, "
                f"e.g. TRIAGE_{name}"
            )
        values[name.lower()] = value
    return values


def _variable_name(loc: tuple[int | str, ...], from_config: Set[str] = frozenset()) -> str:
    """The environment variable (or config name) behind a validation error's location."""
    head = str(loc[0]) if loc else ""
    if head.upper() in ("REDIS_URL", "TRIAGE_REDIS_URL"):
        return "REDIS_URL" if head != "TRIAGE_REDIS_URL" else head
    parts = [str(part).upper() for part in loc if not isinstance(part, int)]
    if head in from_config:
        return "config." + parts[0] + "".join(f"[{part.lower()!r}]" for part in parts[1:])
    return "TRIAGE_" + "__".join(parts)


_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([a-z_]+)"')


def load_settings(config: object | Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings, or raise `ConfigError` naming each bad variable.

    Precedence, lowest first: the built-in defaults, the service's `config` (see
    `config_values`), the environment, then `overrides` (for tests and tools).
    """
    declared = config_values(config)
    from_config: set[str] = set()
    try:
        values = declared
        if declared:
            from_env = Settings().model_dump(exclude_unset=True)
            from_config = set(declared) - set(from_env)
            values = _merge(declared, from_env)
        return Settings(**{**values, **overrides})
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "literal_error" and "ctx" in error:
                message = f"must be one of {error['ctx'].get('expected')}"
            lines.append(f"{_variable_name(tuple(error['loc']), from_config)}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:  # a nested value (TRIAGE_QUEUES, TRIAGE_ROUTES, ...) that is not JSON
        match = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        name = _variable_name((match.group(1),)) if match else "a TRIAGE_* variable"
        raise ConfigError(f"invalid configuration:\n  {name}: must be valid JSON") from None


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `top`, mappings merged key by key (a tier override keeps its other fields)."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def shard_counter(settings: Settings) -> Callable[[str], int]:
    """A queue's number of shards under `settings` (1 for a queue not sharded)."""
    shards = settings.queue_shards()
    return lambda queue: shards.get(queue, 1)
