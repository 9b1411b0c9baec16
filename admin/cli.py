"""The `triage` command line.

Guarantees:
- Every listing has `--json`, whose field names are a public contract (add, never rename).
- A bad configuration exits with status 2 and a message naming the variable; an
  unreachable Redis exits with status 1 and names the (redacted) URL. No traceback
  for either, and no password, ever.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import click
import redis

from config.broker import Runtime
from config.settings import ConfigError, TierName, load_settings


def _runtime() -> Runtime:
    """Import the actors package (which installs the broker) and return the runtime."""
    try:
        import actors
    except ConfigError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)
    return actors.runtime


@click.group()
def main() -> None:
    """Triage: operate tiered Dramatiq workers on Redis."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(as_json: bool) -> None:
    """Per-queue counters: queued, delayed, running, dead letters, paused."""
    runtime = _runtime()
    with _reporting_redis_errors(runtime):
        data = runtime.queue_stats()
    if as_json:
        click.echo(json.dumps({"queues": data}, indent=2))
        return
    columns = ("queued", "delayed", "running", "dead_letters_total", "paused", "enqueued_total", "acked_total")
    header = f"{'queue':<18}{'tier':<12}" + "".join(f"{c:>19}" for c in columns)
    click.echo(header)
    for name, row in data.items():
        click.echo(f"{name:<18}{row['tier']:<12}" + "".join(f"{row[c]!s:>19}" for c in columns))  # type: ignore[literal-required]


@contextmanager
def _reporting_redis_errors(runtime: Runtime) -> Iterator[None]:
    """Turn a Redis failure into one line naming the (redacted) URL, and exit status 1."""
    try:
        yield
    except redis.RedisError as exc:
        click.echo(f"triage: cannot reach Redis at {runtime.settings.redis_url_redacted}: {exc}", err=True)
        sys.exit(1)


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
    runtime = _runtime()
    if queue not in runtime.taxonomy.queues:
        known = ", ".join(runtime.taxonomy.queues)
        click.echo(f"triage: unknown queue {queue!r}; known queues: {known}", err=True)
        sys.exit(2)
    with _reporting_redis_errors(runtime):
        (runtime.broker.pause if paused else runtime.broker.resume)(queue)
    click.echo(f"{'paused' if paused else 'resumed'} {queue}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of KEY=value lines.")
def config(as_json: bool) -> None:
    """The effective settings, secrets redacted."""
    try:
        data = load_settings().public_dict()
    except ConfigError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")


@main.command()
@click.argument("tier", required=False, type=click.Choice(["critical", "default", "background"]))
@click.option("--json", "as_json", is_flag=True, help="Print the queue → tier map as JSON.")
def queues(tier: str | None, as_json: bool) -> None:
    """The queues of TIER, space-separated (for `dramatiq --queues`), or every queue and its tier."""
    taxonomy = _runtime().taxonomy
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
    from .run import run_stack

    try:
        load_settings()
    except ConfigError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_stack(procfile=procfile, data_dir=data_dir, demo=not no_demo))


@main.command()
@click.option("--rate", default=20.0, show_default=True, help="Messages per second, all tiers together.")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: until interrupted).")
def demo(rate: float, duration: float) -> None:
    """Send a realistic mix of critical, default and background work."""
    from .demo import produce

    produce(_runtime(), rate=rate, duration=duration)
