"""Redis URLs: Sentinel parsing, password redaction, schemes, TLS options (no connection is made,
except to a port where nothing listens)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from urllib.parse import unquote

import pytest
from redis.connection import Connection, SSLConnection
from redis.sentinel import SentinelManagedSSLConnection

from triage.broker import connection
from triage.broker.connection import URLError, client_from_url, parse_url, tls_options
from triage.broker.startup import until_redis_answers, where
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


# -- passwords of any character, schemes of any case, TLS options ----------------------------------

# Passwords as users paste them: a raw `@` (`t-P@ss`), `:`, `/`, `#`, `?`, an encoded `@`, unicode.
SECRETS = ["t-P@ss", "a:b@c", "p/ss@x", "pa#ss", "p?db=1@x", "ünï©ødé@π", "ss%40wd"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("redis://:{}@127.0.0.1:6380/0", "redis://:***@127.0.0.1:6380/0"),
        ("rediss://default:{}@h.example.com:6380", "rediss://default:***@h.example.com:6380"),
        ("redis+sentinel://:{}@h1,h2:26380/svc?sentinel_password=pw", "redis+sentinel://:***@h1,h2:26380/svc?sentinel_password=***"),
        ("rediss+cluster://:{}@n1:7000,n2:7001/?ssl_ca_certs=/etc/ca.pem", "rediss+cluster://:***@n1:7000,n2:7001/?ssl_ca_certs=/etc/ca.pem"),
        ("REDIS://:{}@h:6379", "REDIS://:***@h:6379"),
    ],
)  # fmt: skip
def test_a_password_of_any_character_is_redacted_whole(secret: str, template: str, shown: str) -> None:
    # Given a URL whose password holds characters a URL parser trips on
    url = template.format(secret)
    # When it is redacted, Then the whole password, and only it, is starred out
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # a '@' in a query value: the userinfo could end there (a password holding '?ssl_ca_certs='),
        # so all before it is starred
        ("rediss+cluster://:pw@n1:7000/?ssl_ca_certs=/etc/a@b/ca.pem", "rediss+cluster://:***@b/ca.pem"),
        ("redis+sentinel://:pw@h1/svc?sentinel_password=t-P@ss", "redis+sentinel://:***"),
        ("rediss://h:6380/0?ssl_password=a@b", "rediss://h:***"),
        # no ':' before the '@': no password can hide there
        ("rediss://h/0?ssl_ca_certs=/etc/a@b/ca.pem", "rediss://h/0?ssl_ca_certs=/etc/a@b/ca.pem"),
    ],
)  # fmt: skip
def test_when_the_password_could_end_at_a_later_at_sign_more_is_starred(url: str, shown: str) -> None:
    # Given a URL that could be read with the userinfo ending at a '@' inside a query value
    # When it is redacted, Then everything a password could hold is starred, the rest shown
    assert redact_url(url) == shown


# Passwords built to trip a redactor: an option name and '=' inside (read as a query), a '@', '#', '%', unicode,
# a password equal to a host name, one of only URL punctuation.
NASTY = [
    "pa&ssl_password=xyz",
    "pass?ssl_ca_certs=",
    "pass?ssl_ca_certs=/etc@x",
    "k3y&sentinel_password=q",
    "zz?password=ww",
    "t-P@ss",
    "we@ird@one",
    "ha#sh#ed",
    "pe%rc%ent",
    "pe%40rc",
    "ünï©ødé@π",
    "redis.example.com",
    ":@/?#&=",
    "h:6380/0",
    "u:p@h:1/0?db=1",
]
TEMPLATES = [
    "redis://:{}@redis.example.com:6379/0",
    "redis://user:{}@127.0.0.1:1/0",
    "rediss://default:{}@redis.example.com:6380/1?ssl_cert_reqs=none",
    "unix://:{}@/run/redis.sock?db=1",
    "redis+sentinel://:{}@s1:26379,s2/mymaster/2",
    "rediss+sentinel://u:{}@s1/svc?sentinel_ssl=false",
    "redis+cluster://:{}@n1:7000,n2:7001/",
    "rediss+cluster://:{}@n1:7000/",
    "REDISS://:{}@redis.example.com:6380",
    "redis://:{}@redis.example.com:99999/0",
    "redis://:{}@redis.example.com:6379/abc",
    "rediss+sentinel://:pw@s1/svc?sentinel_password={}",
    "rediss://h:6380/0?ssl_password={}",
]


def _pieces_only_in_the_password(template: str, secret: str) -> set[str]:
    """The 3+ character substrings of `secret` that the URL holds nowhere but in the password."""
    rest = template.format(" ")
    pieces = {secret[i:j] for i in range(len(secret)) for j in range(i + 3, len(secret) + 1)}
    return {piece for piece in pieces if piece not in rest}


@pytest.mark.parametrize("secret", NASTY)
@pytest.mark.parametrize("template", TEMPLATES)
def test_no_part_of_a_password_is_ever_shown(secret: str, template: str) -> None:
    # Given a URL of any scheme whose password is built to trip a redactor or a parser
    url = template.format(secret)
    pieces = _pieces_only_in_the_password(template, secret)
    # When it is redacted, and when it is checked (accepted or refused)
    shown = [redact_url(url)]
    try:
        parse_url(url)
    except URLError as exc:
        shown.append(str(exc).replace(connection.NOT_SHOWN, ""))  # a fixed text, quoting nothing of the URL
    # Then neither shows any piece of the password
    leaked = {piece for piece in pieces if any(piece in text for text in shown)}
    assert not leaked, shown


@pytest.mark.parametrize("secret", SECRETS)
def test_the_password_is_read_whole_as_the_client_sends_it(secret: str) -> None:
    # Given a URL with a raw password (percent-encoded characters decoded, as redis-py does)
    client = client_from_url(f"redis://:{secret}@127.0.0.1:6380/2")
    # Then the client would authenticate with the password meant, on the host and db meant
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == (unquote(secret), "127.0.0.1", 6380, 2)


def test_a_password_of_any_character_never_reaches_the_startup_log(caplog: pytest.LogCaptureFixture) -> None:
    # Given a client whose URL's password holds every awkward character, and nothing listening there
    secret = "t-P@ss/x?y#z:ü"
    client = client_from_url(f"redis://:{secret}@127.0.0.1:1/0")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    # When the start-up wait tries it and logs the failure
    with caplog.at_level(logging.WARNING, logger="triage.broker.startup"):
        assert not until_redis_answers(client.ping, client, waiting="test", stop=stop)
    # Then the line names the server, and no part of the password
    assert "Redis at 127.0.0.1:1 does not answer" in caplog.text
    assert not any(piece in caplog.text for piece in ("P@ss", "x?y", "#z", "ü"))


@pytest.mark.parametrize("url", ["REDIS://127.0.0.1:6380/1", "Rediss://127.0.0.1:6380/1", "REDIS+SENTINEL://h/svc"])
def test_the_scheme_is_case_insensitive(url: str) -> None:
    assert parse_url(url).scheme == url.partition("://")[0].lower()
    client = client_from_url(url)
    assert where(client) in ("127.0.0.1:6380", "sentinel service svc via h:26379")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+foo://h:1", "must start with one of redis://, rediss://, unix://"),
        ("redis://h?ssl_cert_reqs=none", "query option 'ssl_cert_reqs' needs a rediss:// URL"),
        ("redis+cluster://h:7000?ssl_cert_reqs=none", "needs a rediss+cluster:// URL"),
        ("unix:///run/r.sock?ssl_cert_reqs=none", "needs TLS, which a unix socket does not offer"),
        ("rediss://h?ssl_cert_reqs=sometimes", "query option 'ssl_cert_reqs': must be none, optional or required"),
        ("rediss://h?ssl_check_hostname=maybe", "query option 'ssl_check_hostname': must be true or false"),
        ("rediss://h?ssl_ca_certs=/no/such/ca.pem", "query option 'ssl_ca_certs': no such file: /no/such/ca.pem"),
        ("rediss://h?sslcertreqs=none", "unknown query option 'sslcertreqs' for a rediss:// URL"),
        ("rediss+cluster://h:7000?socket_timeout=1", "unknown query option 'socket_timeout' for a rediss+cluster://"),
        ("redis://h?db=two", "query option 'db': not a valid value"),
        ("redis+sentinel://h/svc?sentinel_ssl=false", "'sentinel_ssl' needs a rediss+sentinel:// URL"),
        ("rediss://h?ssl_keyfile=/etc/hostname", "'ssl_keyfile' needs 'ssl_certfile' in the query too"),
        ("redis://h1,h2", "names several hosts"),
        ("redis://h/0#frag", "percent-encode it as %23"),
        ("redis+cluster://h:70o0", "host 'h': the port must be a number from 1 to 65535"),
    ],
)
def test_a_url_triage_cannot_use_is_refused_saying_why(url: str, error: str) -> None:
    with pytest.raises(URLError, match=re.escape(error)):
        parse_url(url)


def test_tls_options_from_the_query_win_over_the_variables(tmp_path: Path) -> None:
    # Given TLS options from the variables, and a URL whose query says some of them too
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "c.pem", "k.pem"))
    for path in (ca, cert, key):
        path.write_text("")
    defaults = {
        "ssl_cert_reqs": "none",
        "ssl_check_hostname": False,
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    url = f"rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    # When a client is built, Then the query's options win, and the variables fill the rest
    kwargs = client_from_url(url, tls=defaults).connection_pool.connection_kwargs
    assert {k: v for k, v in kwargs.items() if k.startswith("ssl")} == {
        **defaults,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(ca),
    }
    # And a client certificate in the query comes whole from there: the variables' key is not paired with it
    assert tls_options(parse_url(f"rediss://h?ssl_certfile={ca}"), defaults)["ssl_certfile"] == str(ca)
    assert "ssl_keyfile" not in tls_options(parse_url(f"rediss://h?ssl_certfile={ca}"), defaults)
    # And a URL without TLS ignores the variables
    assert not any(
        k.startswith("ssl") for k in client_from_url("redis://h", tls=defaults).connection_pool.connection_kwargs
    )


def test_rediss_sentinel_reaches_the_sentinels_and_the_primary_over_tls() -> None:
    # Given a rediss+sentinel URL, with a TLS option from the variables
    client = client_from_url(
        "rediss+sentinel://:pw@h1:26380/svc/1?ssl_check_hostname=false", tls={"ssl_cert_reqs": "none"}
    )
    pool = client.connection_pool
    tls = {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    # Then the sentinels are asked over TLS with those options
    (sentinel,) = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert sentinel.connection_pool.connection_class is SSLConnection
    assert tls.items() <= sentinel.connection_pool.connection_kwargs.items()
    # And the primary is reached over TLS with them too
    assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
    assert tls.items() <= pool.connection_kwargs.items()
    # And `sentinel_ssl=false` keeps TLS for the primary only
    plain = client_from_url("rediss+sentinel://h1/svc?sentinel_ssl=false").connection_pool
    assert plain.sentinel_manager.sentinels[0].connection_pool.connection_class is Connection  # type: ignore[attr-defined]
    assert issubclass(plain.connection_class, SentinelManagedSSLConnection)


def test_the_sentinels_are_asked_with_a_socket_timeout() -> None:
    # Given a Sentinel URL (with a sentinel password, so the sentinels get keywords of their own)
    for url in ("redis+sentinel://s1,s2/svc", "rediss+sentinel://s1/svc?sentinel_password=pw"):
        pool = client_from_url(url).connection_pool
        # Then every sentinel connection times out rather than hanging on a sentinel that stops answering
        for sentinel in pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            kwargs = sentinel.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.0
