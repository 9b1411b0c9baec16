"""The `triage` command line.

Guarantees:
- Operator commands (`stats`, `pause`, `resume`) work from Redis and the environment
  alone: they import no application code, so they work while an actor module is broken.
  Commands that need the service's taxonomy (`queues`, `config`) load the app named by
  `--app` (env `TRIAGE_APP`, default `actors`), importable from the current directory.
- Every listing has `--json`, whose field names are a public contract (add, never rename).
- A bad configuration or usage exits with status 2 and a message naming the problem; an
  unreachable Redis exits with status 1 and names the (redacted) URL. No traceback for
  either, and no password, ever.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, cast

import click
import redis

from triage import runtime
from triage.settings import ConfigError, Settings, TierName, load_settings

from .demo import produce
from .ops import Admin, UnknownQueue
from .run import run_stack

APP_OPTION = click.option(
    "--app",
    envvar="TRIAGE_APP",
    default="actors",
    show_default=True,
    help="The module that installs Triage and declares the actors (env TRIAGE_APP).",
)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"triage: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc), 2)


def _admin() -> Admin:
    return Admin(_settings())


def _load_app(app: str, *, optional: bool = False) -> runtime.Runtime:
    """Import the app (which installs Triage with its config) and return the runtime.

    With `optional`, an app that does not exist here (no module of that name) gives the
    runtime of the environment alone; an app that exists and fails to import is an error.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `dramatiq` and `celery -A` do
    try:
        importlib.import_module(app)
        return runtime.current()
    except ConfigError as exc:
        _fail(str(exc), 2)
    except ModuleNotFoundError as exc:
        if optional and exc.name == app.partition(".")[0]:
            click.echo(f"triage: no app {app!r} here (--app, TRIAGE_APP): the environment's settings only", err=True)
            return runtime.install(settings=_settings())
        _fail(f"cannot load the app {app!r} (--app, TRIAGE_APP): {type(exc).__name__}: {exc}", 2)
    except Exception as exc:
        _fail(f"cannot load the app {app!r} (--app, TRIAGE_APP): {type(exc).__name__}: {exc}", 2)


@contextmanager
def _reporting_redis_errors(settings: Settings) -> Iterator[None]:
    """Turn a Redis failure into one line naming the (redacted) URL, and exit status 1."""
    try:
        yield
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis at {settings.redis_url_redacted}: {exc}", 1)


@click.group()
def main() -> None:
    """Triage: operate tiered Dramatiq workers on Redis."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(as_json: bool) -> None:
    """Per-queue counters: queued, delayed, running, dead letters, paused."""
    admin = _admin()
    with _reporting_redis_errors(admin.settings):
        data = admin.stats()
    if as_json:
        click.echo(json.dumps({"queues": data}, indent=2))
        return
    columns = ("queued", "delayed", "running", "dead_letters_total", "paused", "enqueued_total", "acked_total")
    click.echo(f"{'queue':<18}{'tier':<12}" + "".join(f"{c:>19}" for c in columns))
    for name, row in data.items():
        click.echo(f"{name:<18}{row['tier']:<12}" + "".join(f"{row[c]!s:>19}" for c in columns))  # type: ignore[literal-required]


@main.command()
@click.argument("queue")
def pause(queue: str) -> None:
    """Stop delivering QUEUE's messages (persisted in Redis); producers can still enqueue."""
    _set_paused(queue, True)


@main.command()
@click.argument("queue")
def resume(queue: str) -> None:
    """Deliver QUEUE's messages again; idle workers wake at once."""
    _set_paused(queue, False)


def _set_paused(queue: str, paused: bool) -> None:
    admin = _admin()
    with _reporting_redis_errors(admin.settings):
        try:
            (admin.pause if paused else admin.resume)(queue)
        except UnknownQueue as exc:
            _fail(str(exc), 2)
    click.echo(f"{'paused' if paused else 'resumed'} {queue}")


@main.command()
@APP_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of KEY=value lines.")
def config(app: str, as_json: bool) -> None:
    """The effective settings of the app (its config, then the environment), secrets redacted."""
    data = _load_app(app, optional=True).settings.public_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")


@main.command()
@click.argument("tier", required=False, type=click.Choice(["critical", "default", "background"]))
@APP_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the queue → tier map as JSON.")
def queues(tier: str | None, app: str, as_json: bool) -> None:
    """The queues of TIER, space-separated (for `dramatiq --queues`), or every queue and its tier."""
    taxonomy = _load_app(app).taxonomy
    if as_json:
        click.echo(json.dumps({"queues": taxonomy.queues}, indent=2))
    elif tier:
        click.echo(" ".join(taxonomy.queues_of(cast(TierName, tier))))
    else:
        for name, tier_name in taxonomy.queues.items():
            click.echo(f"{name} {tier_name}")


@main.command()
@click.option("--procfile", default="Procfile", show_default=True, type=click.Path(dir_okay=False))
@click.option("--data-dir", default=".triage", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-demo", is_flag=True, help="Do not start the demo producer.")
def run(procfile: str, data_dir: str, no_demo: bool) -> None:
    """Run the whole stack locally: Redis (embedded if none), the Procfile's processes, a demo producer."""
    _settings()
    sys.exit(run_stack(procfile=procfile, data_dir=data_dir, demo=not no_demo))


@main.command()
@click.option("--rate", default=20.0, show_default=True, help="Messages per second, all tiers together.")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: until interrupted).")
def demo(rate: float, duration: float) -> None:
    """Send a realistic mix of critical, default and background work to the demo's actors
    (workers run them with TRIAGE_DEMO=1, which `triage run` sets)."""
    _settings()
    produce(rate=rate, duration=duration)
