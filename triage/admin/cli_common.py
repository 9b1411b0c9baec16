"""What every `triage` command shares: the settings from the environment, the exit statuses,
and Redis failures as one line.

Guarantees: a bad configuration exits with status 2 naming the variable; an unreachable Redis
exits with status 1 naming the redacted URL; no traceback, no password.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
import redis
from redis.exceptions import RedisClusterException

from triage.settings import ConfigError, Settings, load_settings

from .ops import Admin

NOT_FOUND = 3  # exit status: no such dead letter or breaker (2 is bad usage or configuration, 1 an unreachable Redis)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"triage: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


def admin_or_exit() -> Admin:
    settings = settings_or_exit()
    with reporting_redis_errors(settings):  # a cluster client connects as it is made
        return Admin(settings)


@contextmanager
def reporting_redis_errors(settings: Settings) -> Iterator[None]:
    """Turn a Redis failure into one line naming the (redacted) URL, and exit status 1."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as exc:
        fail(f"cannot reach Redis at {settings.redis_url_redacted}: {exc}", 1)
