"""Settings: defaults, overrides, and errors that name the variable (no Redis needed)."""

from __future__ import annotations

import pytest

from triage.settings import ConfigError, Settings, load_settings, redact_url
from triage.tiers import BUILTIN_TIERS, build_taxonomy


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no REDIS_URL and no TRIAGE_* variables
    monkeypatch.delenv("REDIS_URL", raising=False)
    # When the settings are loaded
    settings = load_settings()
    # Then they are the documented defaults
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.namespace == "triage"
    assert settings.max_payload_bytes == 10 * 1024 * 1024
    assert settings.encoder == "msgpack"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("REDIS_URL", "http://example.com", "REDIS_URL: must start with one of redis://, rediss://, unix://"),
        ("TRIAGE_MAX_PAYLOAD_BYTES", "-1", "TRIAGE_MAX_PAYLOAD_BYTES: Input should be greater than 0"),
        ("TRIAGE_MAX_PAYLOAD_BYTES", "ten", "TRIAGE_MAX_PAYLOAD_BYTES: Input should be a valid integer"),
        ("TRIAGE_ENCODER", "pickle", "TRIAGE_ENCODER: must be one of 'msgpack' or 'json'"),
        ("TRIAGE_NAMESPACE", "has space", "TRIAGE_NAMESPACE: String should match pattern"),
        (
            "TRIAGE_TIERS__CRITICAL__PRIORITY",
            "11",
            "TRIAGE_TIERS__CRITICAL__PRIORITY: Input should be less than",
        ),
        (
            "TRIAGE_TIERS__CRITICAL__COLOUR",
            "red",
            "TRIAGE_TIERS__CRITICAL__COLOUR: Extra inputs are not permitted",
        ),
        ("TRIAGE_QUEUES", '{"email": "urgent"}', "TRIAGE_QUEUES__EMAIL__TIER: must be one of"),
        ("TRIAGE_QUEUES", "{not json", "TRIAGE_QUEUES: must be valid JSON"),
        ("TRIAGE_MAX_MESSAGES_PER_PROCESS", "0", "TRIAGE_MAX_MESSAGES_PER_PROCESS: Input should be greater than 0"),
        ("TRIAGE_MAX_RSS_MB_PER_PROCESS", "lots", "TRIAGE_MAX_RSS_MB_PER_PROCESS: Input should be a valid integer"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    # Given one invalid environment variable
    monkeypatch.setenv(variable, value)
    # When the settings are loaded
    with pytest.raises(ConfigError) as caught:
        load_settings()
    # Then the error names that variable and what it accepts
    assert expected in str(caught.value)


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a Redis URL with a password, and another invalid setting
    monkeypatch.setenv("REDIS_URL", "rediss://user:hunter2@redis.example.com:6380/1")
    settings = load_settings()
    monkeypatch.setenv("TRIAGE_ENCODER", "pickle")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    # Then neither the repr, the public view nor the error shows the password
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.public_dict())
    assert "hunter2" not in str(caught.value)
    assert settings.redis_url_redacted == "rediss://user:***@redis.example.com:6380/1"


def test_invalid_redis_url_with_password_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a malformed URL that contains a password
    monkeypatch.setenv("REDIS_URL", "http://:hunter2@example.com")
    # When loaded, then the error names REDIS_URL without the password
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_redact_url_without_password_is_unchanged() -> None:
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert redact_url("unix:///tmp/redis.sock") == "unix:///tmp/redis.sock"


def test_tier_overrides_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given overrides for the critical tier and an extra queue
    monkeypatch.setenv("TRIAGE_TIERS__CRITICAL__MAX_RETRIES", "1")
    monkeypatch.setenv("TRIAGE_TIERS__CRITICAL__SLA_SECONDS", "0.5")
    monkeypatch.setenv("TRIAGE_QUEUES", '{"gpu.generation": "background"}')
    # When the taxonomy is built
    taxonomy = build_taxonomy(load_settings())
    # Then the overridden fields change and the rest keep the built-in values
    critical = taxonomy.tiers["critical"]
    assert critical.max_retries == 1
    assert critical.sla_seconds == 0.5
    assert critical.priority == BUILTIN_TIERS["critical"].priority
    assert taxonomy.queues_of("background") == ["background", "gpu.generation"]


def test_min_backoff_above_max_is_an_error() -> None:
    settings = Settings.model_validate({"tiers": {"default": {"min_backoff_ms": 10_000, "max_backoff_ms": 10}}})
    with pytest.raises(ConfigError, match="TRIAGE_TIERS__DEFAULT__MIN_BACKOFF_MS"):
        build_taxonomy(settings)


def test_tier_defaults_order_critical_first() -> None:
    critical, default, background = (BUILTIN_TIERS[n] for n in ("critical", "default", "background"))
    assert critical.priority > default.priority > background.priority
    assert critical.actor_priority < default.actor_priority < background.actor_priority
    assert critical.sla_seconds < default.sla_seconds < background.sla_seconds
    assert critical.time_limit_ms < background.time_limit_ms


def test_the_service_config_is_overridden_by_the_environment_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a service config with routes, queues and a tier override
    config = {
        "ROUTES": [("legacy.*", "sms")],
        "QUEUES": {"sms": "default"},
        "TIERS": {"critical": {"max_retries": 2, "sla_seconds": 1.0}},
    }
    # And the environment overrides one field of that tier and adds a queue
    monkeypatch.setenv("TRIAGE_TIERS__CRITICAL__MAX_RETRIES", "7")
    monkeypatch.setenv("TRIAGE_QUEUES", '{"gpu": "background"}')
    # When the settings are loaded with that config
    settings = load_settings(config)
    # Then the environment wins where it speaks, and the config holds everywhere else
    taxonomy = build_taxonomy(settings)
    assert taxonomy.tiers["critical"].max_retries == 7
    assert taxonomy.tiers["critical"].sla_seconds == 1.0
    assert settings.queue_tiers() == {"sms": "default", "gpu": "background"}
    assert settings.routes == [("legacy.*", "sms")]


def test_a_config_module_is_read_by_its_upper_case_names() -> None:
    # Given a module-like config object with an upper-case setting and lower-case helpers
    class ServiceConfig:
        QUEUES = {"email": "default"}  # noqa: RUF012
        helper = "ignored"

    # Then only the upper-case names are read
    assert load_settings(ServiceConfig).queue_tiers() == {"email": "default"}


def test_a_bad_config_value_names_the_config_entry() -> None:
    with pytest.raises(ConfigError, match=r"config\.QUEUES\['email'\]\['tier'\]: must be one of"):
        load_settings({"QUEUES": {"email": "urgent"}})


def test_a_value_the_config_may_not_hold_names_its_variable() -> None:
    # Given a deploy-specific value hard-coded in the service config
    with pytest.raises(ConfigError, match=r"config\.NAMESPACE: not a structural setting .* TRIAGE_NAMESPACE"):
        load_settings({"NAMESPACE": "prod"})
