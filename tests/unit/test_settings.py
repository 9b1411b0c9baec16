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
        ("TRIAGE_REDIS_SSL_CERT_REQS", "sometimes", "TRIAGE_REDIS_SSL_CERT_REQS: must be one of 'none', 'optional' or"),
        ("TRIAGE_REDIS_SSL_CA_CERTS", "/no/such/ca.pem", "TRIAGE_REDIS_SSL_CA_CERTS: Path does not point to a file"),
        (
            "TRIAGE_REDIS_SSL_CHECK_HOSTNAME",
            "perhaps",
            "TRIAGE_REDIS_SSL_CHECK_HOSTNAME: Input should be a valid boolean",
        ),
        ("TRIAGE_REDIS_SSL_KEYFILE", "/etc/hostname", "TRIAGE_REDIS_SSL_KEYFILE: a key file needs its certificate"),
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


@pytest.mark.parametrize("secret", ["t-P@ss", "a:b@c", "p/ss@x", "pa#ss", "p?db=1@x", "ünï©ødé@π", "ss%40wd"])
def test_a_password_of_any_character_is_never_shown(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    # Given a Redis URL whose password holds characters a URL parser trips on, and another invalid setting
    monkeypatch.setenv("REDIS_URL", f"rediss://default:{secret}@redis.example.com:6380/0")
    settings = load_settings()
    monkeypatch.setenv("TRIAGE_ENCODER", "pickle")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    # Then neither the redacted URL, the repr, the public view nor the error shows any of it
    assert settings.redis_url_redacted == "rediss://default:***@redis.example.com:6380/0"
    for shown in (repr(settings), str(settings.public_dict()), str(caught.value)):
        assert secret not in shown
        assert f"{secret.split('@')[-1]}@redis" not in shown  # the old leak: `***@ss@redis…` for `t-P@ss`


def test_an_invalid_redis_url_never_echoes_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a URL with a raw '@' in its password and an unknown query option
    monkeypatch.setenv("REDIS_URL", "rediss://:t-P@ss@redis.example.com:6380/0?ssl_verify=no")
    # When loaded, Then the error names REDIS_URL and the option, never the password
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "REDIS_URL: unknown query option 'ssl_verify' for a rediss:// URL" in str(caught.value)
    assert "P@ss" not in str(caught.value)


def test_the_redis_scheme_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a URL written in capitals, as some consoles show it
    monkeypatch.setenv("REDIS_URL", "REDISS://:pw@redis.example.com:6380/0")
    # Then it is valid, and its client speaks TLS to that server
    pool = load_settings().redis_client().connection_pool
    assert pool.connection_kwargs["host"] == "redis.example.com"
    assert pool.connection_class.__name__ == "SSLConnection"
    # And an unknown scheme is an error naming the variable, whatever its case
    monkeypatch.setenv("REDIS_URL", "redis+foo://h:1")
    with pytest.raises(ConfigError, match=r"REDIS_URL: must start with one of redis://, rediss://"):
        load_settings()


def test_tls_variables_give_the_client_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Heroku's case: REDIS_URL set by the platform, the TLS choice in a variable (any case)
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@ec2-1-2-3-4.compute-1.amazonaws.com:12345")
    monkeypatch.setenv("TRIAGE_REDIS_SSL_CERT_REQS", "NONE")
    monkeypatch.setenv("TRIAGE_REDIS_SSL_CHECK_HOSTNAME", "false")
    settings = load_settings()
    # Then the client carries them
    assert settings.redis_tls() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    kwargs = settings.redis_client().connection_pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("none", False)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:notaport/0", "REDIS_URL: host 'host': the port must be a number from 1 to 65535"),
        ("redis://:pw@host:99999/0", "REDIS_URL: host 'host': the port must be a number from 1 to 65535"),
        ("rediss://:pw@host:0", "REDIS_URL: host 'host': the port must be a number from 1 to 65535"),
        ("redis://:pw@127.0.0.1:6379/abc", "REDIS_URL: the path must be /db, a database number from 0 to 2147483647"),
        ("redis://:pw@127.0.0.1:6379/2147483648", "REDIS_URL: the path's database must be a number from 0 to"),
        ("redis://:pw@127.0.0.1:6379?db=-1", "REDIS_URL: query option 'db' must be a number from 0 to 2147483647"),
        ("redis://:pw@/0", "REDIS_URL: names no host: redis://[[user]:password@]host[:port][/db]"),
        ("redis://:pw@bad host:6379/0", "REDIS_URL: the host must be name[:port]"),
        ("redis+sentinel://:pw@s1:99999/mymaster", "REDIS_URL: host 's1': the port must be a number from 1 to 65535"),
        ("redis+sentinel://s1,s2:x/mymaster/1", "REDIS_URL: host 's2': the port must be a number from 1 to 65535"),
        ("redis+sentinel://s1,:1/mymaster", "REDIS_URL: host 2 of 2 must be name[:port]"),
        ("redis+sentinel://s1/mymaster/٣", "REDIS_URL: a redis+sentinel URL's path is /service_name or"),
        ("redis+cluster://:pw@n1:7000,n2:65536", "REDIS_URL: host 'n2': the port must be a number from 1 to 65535"),
    ],
)  # fmt: skip
def test_a_host_port_or_database_redis_cannot_take_is_refused_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    # Given a REDIS_URL whose host, port or database no Redis client can use
    monkeypatch.setenv("REDIS_URL", url)
    # When settings are loaded, Then a ConfigError names REDIS_URL and the problem, never the password
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)
    assert ":pw@" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["redis://[::1]:6380/15", "redis://my_redis:6379/2147483647", "rediss://h.example.com", "redis://h:1/"]
)
def test_hosts_ports_and_databases_redis_takes_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # Given a REDIS_URL with an IPv6 host, an underscore name, the largest database, no port, the lowest port
    monkeypatch.setenv("REDIS_URL", url)
    # Then it loads
    assert load_settings().redis_url == url
