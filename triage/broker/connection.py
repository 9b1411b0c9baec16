"""Redis clients from URLs: `redis://`, `rediss://`, `unix://`, `redis+sentinel://` and
`redis+cluster://`; with TLS, `rediss://`, `rediss+sentinel://` and `rediss+cluster://`.

Guarantees:
- `parse_url(url)` reads a URL without connecting, or raises `URLError` (a ValueError) saying
  what is wrong: an unknown scheme, a host that is not `name[:port]` (a host name, an IPv4
  address or a bracketed IPv6 one; a port from 1 to 65535, digits only), a `redis://` or
  `rediss://` URL with no host (Triage does not fall back to localhost), a database that is not
  a number from 0 to 2**31 - 1 (path `/db` or query `db=`), a query option the URL's kind does
  not take (named), a value it does not accept, a TLS option on a URL without TLS.
  Schemes are case-insensitive: `REDIS://` is `redis://`.
- No message and no redacted URL shows any character of a password. A message quotes a host or a
  query option's name or value only when the URL has no `@` after the one that ends its userinfo
  and no `&` after a query `…password=`; otherwise a password could have been read as the host or
  the query, and the message says what to check without quoting it.
- For the connection, the password is everything between the first `:` and the last `@` before
  the host list, so a raw `@`, `:`, `/`, `?` or `#` in it reads as meant (a `@` inside the value of
  a query option that names a file or a password is not taken for that `@`); `%40` and the like
  are decoded. A password holding `?` or `&` followed by such an option's name and `=` must be
  percent-encoded (`%3F`, `%26`), and so must a `&` in a query value.
- `redact_url` is more cautious than that reading: it stars everything from the first `:` after
  `scheme://` to the URL's last `@` (when a `@` sits inside a query value this hides the host
  too: the URL cannot be told from one whose password holds `?ssl_ca_certs=`), and everything
  after a query's first `…password=` (a raw `&` in that password would otherwise show its tail).
- TLS options, for every TLS scheme: `ssl_cert_reqs` (none, optional, required), `ssl_ca_certs`,
  `ssl_ca_data`, `ssl_check_hostname`, `ssl_certfile`, `ssl_keyfile`, `ssl_password`. They come
  from the URL's query, else from `client_from_url(..., tls=...)` (Triage's settings pass the
  `TRIAGE_REDIS_SSL_*` variables there): the URL's query wins, option by option, except that a
  client certificate (`ssl_certfile`, with its `ssl_keyfile`) comes whole from one place. A URL
  without TLS ignores `tls=` and refuses TLS options in its query.
- A Sentinel URL gives a client that asks the sentinels for the current primary and follows
  a failover by itself (redis-py's Sentinel connection pool): producers and workers need no
  restart. Form: `redis+sentinel://[[user]:password@]host1:26379,host2:26379/service_name[/db]`
  `[?sentinel_password=…]`. With `rediss+sentinel://` both the sentinels and the primary are
  reached over TLS, with the same options; `sentinel_ssl=false` reaches the sentinels without.
  The sentinels are asked with a 1 s connect and socket timeout, so a silent sentinel is skipped.
- A Cluster URL gives redis-py's cluster client, which learns the slot map from any of the
  nodes named and follows MOVED/ASK redirections and failovers by itself. Form:
  `redis+cluster://[[user]:password@]host1:7000,host2:7001[/]` (Redis Cluster has database 0
  only: a path naming another is refused). `is_cluster(client)` tells the two kinds apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.sentinel import Sentinel

SENTINEL_PORT = 26379
CLUSTER_PORT = 6379
SERVER_PORT = 6379
SENTINEL_TIMEOUT = 1.0  # seconds: a sentinel's (and, unless told otherwise, the primary's) socket timeout
# scheme -> (kind, TLS); kinds: "server" (one server or a socket), "sentinel", "cluster"
SCHEMES = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
CLUSTER_SCHEMES = {s: tls for s, (kind, tls) in SCHEMES.items() if kind == "cluster"}  # scheme -> TLS


class URLError(ValueError):
    """A Redis URL Triage cannot use; the message never quotes the URL's credentials."""


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _cert_reqs(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise ValueError("must be none, optional or required")
    return text


def _file(value: object) -> str:
    path = os.fspath(cast(str, value))
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


# TLS options: query key (= redis-py's keyword) -> its check and normal form.
TLS_OPTIONS: dict[str, Callable[[object], object]] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
    "ssl_ca_certs": _file,
    "ssl_ca_data": str,
    "ssl_certfile": _file,
    "ssl_keyfile": _file,
    "ssl_password": str,
}
_SENTINEL_OPTIONS = {"sentinel_password", "sentinel_ssl"}  # sentinel_ssl: with rediss+sentinel:// only
# What a one-server URL passes on to redis-py (its own URL options, and connection keywords).
_SERVER_OPTIONS = (set(URL_QUERY_ARGUMENT_PARSERS) | {"password", "username", "client_name"}) - set(TLS_OPTIONS)
_OPTIONS = {"server": _SERVER_OPTIONS, "sentinel": _SENTINEL_OPTIONS, "cluster": set()}
# The options whose values may hold a `@` (file paths, passwords, PEM text): one there does not end
# the userinfo. (A password holding `?` or `&` followed by one of these and `=` must be percent-encoded.)
_AT_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "sentinel_password",
    "password",
)
_OPTION_VALUE = re.compile(r"[?&](?:" + "|".join(_AT_OPTIONS) + r")=[^&]*")
_PASSWORD_VALUE = re.compile(r"[?&][a-z_]*password=(.*)", re.IGNORECASE | re.DOTALL)
_SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]")
_NUMBER = re.compile(r"[0-9]+")
MAX_PORT = 65535
MAX_DB = 2**31 - 1
NOT_SHOWN = (
    "is not valid; the details are not shown because they could quote a password (the URL has a '@' inside a "
    "query value, or a '&' after a query password): check the host, port, path and query options, and "
    "percent-encode a '@', '?' or '&' inside a password (%40, %3F, %26)"
)


@dataclass(frozen=True)
class RedisURL:
    """A Redis URL, read: `scheme` in lower case, credentials and query values decoded."""

    scheme: str
    username: str | None
    password: str | None
    hostlist: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return SCHEMES[self.scheme][0]

    @property
    def tls(self) -> bool:
        return SCHEMES[self.scheme][1]


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of `rest` (a URL after `scheme://`) ends: its last `@` outside the value
    of a query option naming a file or a password, or -1."""
    masked = _OPTION_VALUE.sub(lambda m: m.group(0).replace("@", "\0"), rest)
    return masked.rfind("@")


def redact_url(url: str) -> str:
    """`redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`, query passwords too
    (see the module's guarantees: what any reading of the URL could take for a password is starred)."""
    scheme, sep, rest = url.partition("://")
    prefix = scheme + sep if sep else ""
    rest = rest if sep else url
    secret = [False] * len(rest)
    last_at = rest.rfind("@")
    colon = rest.find(":", 0, max(last_at, 0))
    spans = [match.span(1) for match in _PASSWORD_VALUE.finditer(rest)]
    for start, end in [(colon + 1, last_at)] * (colon >= 0) + spans:
        secret[start:end] = [True] * (end - start)
    after_secret = [False, *secret]
    shown = (
        ("***" if hide else ch)
        for ch, hide, after in zip(rest, secret, after_secret, strict=False)
        if not hide or not after
    )
    return prefix + "".join(shown)


def parse_url(url: str) -> RedisURL:
    """`url` read and checked (see the module's guarantees), or `URLError`."""
    written, sep, rest = url.partition("://")
    scheme = written.lower()
    if not sep or scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        got = f"{written}://" if sep and _SCHEME_NAME.fullmatch(written) else "no scheme"
        raise URLError(f"must start with one of {allowed} (got {got})")
    at = _userinfo_end(rest)
    try:
        return _read(scheme, rest, at)
    except URLError:
        # The userinfo could end at a later '@', or a query password could hold a raw '&': the message
        # could quote a password.
        query_password = _PASSWORD_VALUE.search(rest)
        if rest.rfind("@") > at or (query_password and "&" in query_password.group(1)):
            raise URLError(NOT_SHOWN) from None
        raise


def _read(scheme: str, rest: str, at: int) -> RedisURL:
    userinfo, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else (None, rest)
    username, _, password = (userinfo or "").partition(":")
    hostlist, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    path, _, query = tail.partition("?")
    if "#" in tail:
        raise URLError("has a '#' after the host: percent-encode it as %23 (in a password or a query value)")
    parsed = RedisURL(scheme, unquote(username) or None, unquote(password) or None, hostlist, path)
    _check_structure(parsed)
    options = parsed.options
    for key, value in parse_qsl(query, keep_blank_values=True):
        _check_option(parsed, key, value)
        options[key] = value
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise URLError("query option 'ssl_keyfile' needs 'ssl_certfile' in the query too")
    if "db" in options:
        _db(options["db"], "query option 'db'")
    return parsed


def _check_option(parsed: RedisURL, key: str, value: str) -> None:
    accepted = _OPTIONS[parsed.kind] | set(TLS_OPTIONS)
    if key not in accepted:
        known = ", ".join(sorted(accepted))
        raise URLError(f"unknown query option {key!r} for a {parsed.scheme}:// URL (it takes {known})")
    needs_tls = key in TLS_OPTIONS or key == "sentinel_ssl"
    if needs_tls and not parsed.tls:
        with_tls = next(s for s, (kind, tls) in SCHEMES.items() if kind == parsed.kind and tls)
        where = "TLS, which a unix socket does not offer" if parsed.scheme == "unix" else f"a {with_tls}:// URL"
        raise URLError(f"query option {key!r} needs {where}")
    parsers = cast(dict[str, Callable[[str], object]], URL_QUERY_ARGUMENT_PARSERS)
    check = TLS_OPTIONS.get(key) or parsers.get(key) or (_flag if needs_tls else str)
    try:
        check(value)
    except (TypeError, ValueError) as exc:
        raise URLError(f"query option {key!r}: {exc if needs_tls else 'not a valid value'}") from None


def _check_structure(parsed: RedisURL) -> None:
    path = [p for p in parsed.path.split("/") if p]
    if parsed.scheme == "unix":
        return
    if parsed.kind == "server":
        if "," in parsed.hostlist:
            raise URLError("names several hosts: use redis+sentinel:// or redis+cluster:// for that")
        if not parsed.hostlist:
            raise URLError(
                f"names no host: {parsed.scheme}://[[user]:password@]host[:port][/db] "
                "(Triage does not fall back to localhost; for a socket, unix:///path/to/redis.sock)"
            )
        if not re.fullmatch(r"/?|/[0-9]+", parsed.path):
            raise URLError(f"the path must be /db, a database number from 0 to {MAX_DB} (or nothing, for 0)")
        _db(parsed.path.strip("/") or "0", "the path's database")
        _hosts(parsed.hostlist, SERVER_PORT)
        return
    if parsed.kind == "cluster":
        if not parsed.hostlist:
            raise URLError("a redis+cluster URL needs at least one node: redis+cluster://host1:7000,host2:7001/")
        if path and path != ["0"]:
            raise URLError(f"Redis Cluster has database 0 only; the URL names database {path[0]!r}")
    else:
        if not path:
            raise URLError("a redis+sentinel URL needs the service name as its path: redis+sentinel://h:26379/mymaster")
        if len(path) > 2 or (len(path) == 2 and not _NUMBER.fullmatch(path[1])):
            raise URLError("a redis+sentinel URL's path is /service_name or /service_name/db (a number)")
        if len(path) == 2:
            _db(path[1], "the path's database")
    _hosts(parsed.hostlist, 0)


def _db(text: str, what: str) -> int:
    if not _NUMBER.fullmatch(text.strip()) or int(text) > MAX_DB:
        raise URLError(f"{what} must be a number from 0 to {MAX_DB}")
    return int(text)


def tls_options(parsed: RedisURL, defaults: Mapping[str, object] | None = None) -> dict[str, object]:
    """redis-py's TLS keywords for `parsed`: its query's options over `defaults` (see the module's
    guarantees); empty for a URL without TLS."""
    if not parsed.tls:
        return {}
    chosen = dict(defaults or {})
    if "ssl_certfile" in parsed.options:  # a client certificate comes whole from one place
        chosen.pop("ssl_keyfile", None)
    chosen.update({k: v for k, v in parsed.options.items() if k in TLS_OPTIONS})
    unknown = set(chosen) - set(TLS_OPTIONS)
    if unknown:
        raise URLError(f"unknown TLS option(s): {', '.join(sorted(unknown))}")
    return {key: TLS_OPTIONS[key](value) for key, value in chosen.items() if value is not None}


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (and its pipelines)."""
    return isinstance(client, RedisCluster)


def _hosts(hostlist: str, default_port: int) -> list[tuple[str, int]]:
    """`[(name, port)]` of a comma-separated host list, or `URLError`. A message quotes a host's name
    only when it is a valid one, and never a port (a mistyped URL can put a password there)."""
    written = hostlist.split(",")
    hosts = []
    for number, host in enumerate(written, 1):
        name, _, port = host.rpartition(":") if ":" in host.rpartition("]")[2] else (host, "", "")
        if not _HOST_NAME.fullmatch(name):
            which = "the host" if len(written) == 1 else f"host {number} of {len(written)}"
            raise URLError(f"{which} must be name[:port]: a host name, an IPv4 address or a [bracketed] IPv6 one")
        if port and not (_NUMBER.fullmatch(port) and 1 <= int(port) <= MAX_PORT):
            raise URLError(f"host {name!r}: the port must be a number from 1 to {MAX_PORT}")
        hosts.append((name.strip("[]"), int(port or default_port)))
    return hosts


def client_from_url(url: str, *, tls: Mapping[str, object] | None = None, **options: object) -> redis.Redis:
    """The client of `url`; `tls`: TLS options for what the URL's query does not say."""
    parsed = parse_url(url)
    ssl = tls_options(parsed, tls)
    if parsed.kind == "cluster":
        return _cluster(parsed, ssl, options)
    if parsed.kind == "server":
        passed_on = {k: v for k, v in parsed.options.items() if k not in TLS_OPTIONS}
        query = f"?{urlencode(passed_on)}" if passed_on else ""
        plain = f"{parsed.scheme}://{parsed.hostlist}{parsed.path}{query}"
        credentials = {"username": parsed.username, "password": parsed.password}
        return redis.Redis.from_url(plain, **credentials, **ssl, **options)
    path = [p for p in parsed.path.split("/") if p]
    service, db = unquote(path[0]), int(path[1]) if len(path) > 1 else 0
    # The sentinels get their own keywords: without a timeout here, a sentinel that stops answering hangs the client.
    sentinel_kwargs: dict[str, object] = dict.fromkeys(("socket_timeout", "socket_connect_timeout"), SENTINEL_TIMEOUT)
    if "sentinel_password" in parsed.options:
        sentinel_kwargs["password"] = parsed.options["sentinel_password"]
    if parsed.tls and _flag(parsed.options.get("sentinel_ssl", True)):
        sentinel_kwargs.update(ssl=True, **ssl)
    primary_tls = {"ssl": True, **ssl} if parsed.tls else {}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        _hosts(parsed.hostlist, SENTINEL_PORT), sentinel_kwargs=sentinel_kwargs, socket_timeout=SENTINEL_TIMEOUT
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service, db=db, username=parsed.username, password=parsed.password, **primary_tls, **options
    )
    return client


def cluster_from_url(url: str, *, tls: Mapping[str, object] | None = None, **options: object) -> redis.Redis:
    """The cluster client of a `redis+cluster://` or `rediss+cluster://` URL.

    Typed as `redis.Redis`: the cluster client answers the same commands for keys of one slot,
    which is all Triage sends it (`triage.broker.slots` checks the keys)."""
    parsed = parse_url(url)
    return _cluster(parsed, tls_options(parsed, tls), options)


def _cluster(parsed: RedisURL, ssl: dict[str, object], options: Mapping[str, object]) -> redis.Redis:
    nodes = [ClusterNode(host, port) for host, port in _hosts(parsed.hostlist, CLUSTER_PORT)]  # type: ignore[no-untyped-call]
    cluster = RedisCluster(
        startup_nodes=nodes,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **ssl,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    return cast(redis.Redis, cluster)
