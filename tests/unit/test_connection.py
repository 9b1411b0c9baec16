"""Redis URLs: Sentinel parsing and password redaction (no connection is made)."""

from __future__ import annotations

import pytest

from triage.broker.connection import client_from_url
from triage.broker.startup import where
from triage.settings import Settings, redact_url


def test_sentinel_url_gives_a_client_that_follows_the_primary() -> None:
    # Given a Sentinel URL with three sentinels, a service, a db and a password
    client = client_from_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/cache/2")
    pool = client.connection_pool
    # Then the client asks the sentinels for the service's primary, with the db and password
    assert pool.service_name == "cache"  # type: ignore[attr-defined]
    sentinels = [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
                 for c in pool.sentinel_manager.sentinels]  # type: ignore[attr-defined]  # fmt: skip
    assert sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret"


def test_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(ValueError, match="needs the service name"):
        client_from_url("redis+sentinel://10.0.0.1:26379")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+sentinel://:pw@h1:26379,h2:26379/cache", "redis+sentinel://:***@h1:26379,h2:26379/cache"),
        ("rediss://user:pw@host:6380/1", "rediss://user:***@host:6380/1"),
        ("redis+sentinel://h1/cache?sentinel_password=pw", "redis+sentinel://h1/cache?sentinel_password=***"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "pw" not in repr(Settings(redis_url=url))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.5:6380/1", "10.0.0.5:6380"),
        ("rediss://user:s3cret@redis.example.com/0", "redis.example.com:6379"),
        ("unix:///run/redis.sock?password=s3cret", "unix:/run/redis.sock"),
        (
            "redis+sentinel://:s3cret@h1:26379,h2/cache?sentinel_password=s3cret",
            "sentinel service cache via h1:26379,h2:26379",
        ),
    ],
)
def test_where_names_the_server_and_never_the_password(url: str, shown: str) -> None:
    # Given a client from a URL with a password, Then the start-up wait names its server without it
    assert where(client_from_url(url)) == shown
