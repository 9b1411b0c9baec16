"""The `triage` command line.

Guarantees:
- Operator commands (`stats`, `pause`, `resume`, `dlq ...`) work from Redis and the environment
  alone: they import no application code, so they work while an actor module is broken.
  Commands that need the service's taxonomy (`queues`, `config`) load the app named by
  `--app` (env `TRIAGE_APP`, default `actors`), importable from the current directory.
- Every listing has `--json`, whose field names are a public contract (add, never rename).
- A bad configuration or usage exits with status 2 and a message naming the problem; an
  unreachable Redis exits with status 1 and names the (redacted) URL; a dead letter that
  does not exist, 3. No traceback for
  either, and no password, ever.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click

from triage import __version__, runtime
from triage.settings import ConfigError, TierName

from . import dlq_model
from .breakers import breakers_group
from .cli_common import NOT_FOUND, admin_or_exit, fail, reporting_redis_errors, settings_or_exit
from .dedup import dedup_group
from .demo import produce
from .deploy_files import PLACEHOLDER, DeployFilesError, write_deploy_files
from .dlq_model import DeadLetter, Filter
from .ops import Admin, UnknownQueue
from .run import run_stack
from .schedule import schedule_command
from .scheduler import run_scheduler
from .serve import serve_command
from .tenants import tenants_command
from .watch import watch_stats

APP_OPTION = click.option(
    "--app",
    envvar="TRIAGE_APP",
    default="actors",
    show_default=True,
    help="The module that installs Triage and declares the actors (env TRIAGE_APP).",
)


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
        fail(str(exc), 2)
    except ModuleNotFoundError as exc:
        if optional and exc.name == app.partition(".")[0]:
            click.echo(f"triage: no app {app!r} here (--app, TRIAGE_APP): the environment's settings only", err=True)
            return runtime.install(settings=settings_or_exit())
        fail(f"cannot load the app {app!r} (--app, TRIAGE_APP): {type(exc).__name__}: {exc}", 2)
    except Exception as exc:
        fail(f"cannot load the app {app!r} (--app, TRIAGE_APP): {type(exc).__name__}: {exc}", 2)


@click.group()
# The version is a constant of the package: no distribution metadata is read to print it.
@click.version_option(__version__, prog_name="triage", message="%(prog)s %(version)s (dramatiq-triage)")
def main() -> None:
    """Triage: operate tiered Dramatiq workers on Redis."""


main.add_command(breakers_group)
main.add_command(tenants_command)
main.add_command(dedup_group)


@main.command()
@click.option("--host", help="Address to listen on (default: TRIAGE_WEB_HOST, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65_535), help="Port (default: TRIAGE_WEB_PORT, 8000; the Procfile passes $PORT)."
)
@APP_OPTION
def serve(host: str | None, port: int | None, app: str) -> None:
    """The web process: the dashboard at /, /metrics (the whole fleet, from Redis), /healthz, /readyz, the admin API."""
    serve_command(host, port, app)


@main.command("deploy-files")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--app",
    envvar="TRIAGE_APP",
    help=f"The app's module, written into the Procfile in place of {PLACEHOLDER} (env TRIAGE_APP).",
)
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def deploy_files(directory: Path, app: str | None, force: bool) -> None:
    """Copy the alert rules, Grafana dashboard, runbook and a Procfile template into DIRECTORY."""
    try:
        written = write_deploy_files(directory, app=app, force=force)
    except DeployFilesError as exc:
        fail(str(exc), 2)
    width = max(len(str(item.path)) for item in written)
    for item in written:
        click.echo(f"wrote {item.path!s:<{width}}  {item.description}".rstrip())
    if app is None:
        click.echo(f"Procfile: {PLACEHOLDER} is a placeholder: edit it, or run again with --app MODULE --force")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="A live view, refreshed every second: depth, rates, oldest wait vs SLA.")
@click.option("--iterations", type=click.IntRange(0), default=0, hidden=True, help="--watch: stop after N views.")
def stats(as_json: bool, watch: bool, iterations: int) -> None:
    """Per-queue counters: queued (and the oldest one's wait), delayed, running, dead letters, paused."""
    admin = admin_or_exit()
    if watch:
        with reporting_redis_errors(admin.settings):
            watch_stats(admin, iterations=iterations)
        return
    with reporting_redis_errors(admin.settings):
        data = admin.stats()
    if as_json:
        click.echo(json.dumps({"queues": data}, indent=2))
        return
    columns = {  # header -> field (--json has every field, by its own name)
        "queued": "queued",
        "oldest_wait_s": "oldest_waiting_seconds",
        "delayed": "delayed",
        "retrying": "retrying",
        "running": "running",
        "dead_letters_total": "dead_letters_total",
        "paused": "paused",
        "enqueued_total": "enqueued_total",
        "acked_total": "acked_total",
        "shed_total": "shed_total",
        "succeeded_last_hour": "succeeded_last_hour",
        "failed_last_hour": "failed_last_hour",
    }
    click.echo(f"{'queue':<18}{'tier':<12}" + "".join(f"{c:>19}" for c in columns))
    for name, row in data.items():
        click.echo(f"{name:<18}{row['tier']:<12}" + "".join(f"{row[f]!s:>19}" for f in columns.values()))  # type: ignore[literal-required]


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
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        try:
            (admin.pause if paused else admin.resume)(queue)
        except UnknownQueue as exc:
            fail(str(exc), 2)
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
@APP_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedule(app: str, as_json: bool) -> None:
    """Every periodic actor: its cron spec, next run, last tick sent, last run and outcome."""
    schedule_command(_load_app(app), as_json)


@main.command()
@APP_OPTION
def scheduler(app: str) -> None:
    """Run the scheduler of the app's periodic actors (periodiq's, kept alive through a failed send)."""
    loaded = _load_app(app)
    sys.exit(run_scheduler(loaded.broker.actors, loaded.broker.client))


@main.command()
@click.option("--procfile", default="Procfile", show_default=True, type=click.Path(dir_okay=False))
@click.option("--data-dir", default=".triage", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-demo", is_flag=True, help="Do not start the demo producer.")
def run(procfile: str, data_dir: str, no_demo: bool) -> None:
    """Run the whole stack locally: Redis (embedded if none), the Procfile's processes, a demo producer."""
    settings_or_exit()
    sys.exit(run_stack(procfile=procfile, data_dir=data_dir, demo=not no_demo))


class FiniteFloat(click.ParamType[float]):
    """A finite number, above `minimum` (or at it, with `or_equal`): NaN and infinities are refused."""

    name = "number"

    def __init__(self, minimum: float, *, or_equal: bool) -> None:
        self.minimum, self.or_equal = minimum, or_equal

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        below = number < self.minimum if self.or_equal else number <= self.minimum
        if not math.isfinite(number) or below:
            bound = f"{'at least' if self.or_equal else 'above'} {self.minimum:g}"
            self.fail(f"{value!r} is not a finite number {bound}", param, ctx)
        return number


@main.command()
@click.option(
    "--rate",
    type=FiniteFloat(0, or_equal=False),
    default=20.0,
    show_default=True,
    help="Messages per second, all tiers together.",
)
@click.option(
    "--duration",
    type=FiniteFloat(0, or_equal=True),
    default=0.0,
    help="Stop after this many seconds (0: until interrupted).",
)
def demo(rate: float, duration: float) -> None:
    """Send a realistic mix of critical, default and background work to the demo's actors
    (workers run them with TRIAGE_DEMO=1, which `triage run` sets)."""
    settings_or_exit()
    produce(rate=rate, duration=duration)


# -- dead letters ----------------------------------------------------------------------------


def _filters(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--queue", help="Only this queue."),
            click.option("--actor", help="Only this actor."),
            click.option("--tenant", help="Only this tenant."),
            click.option("--error", help="Only this error type (e.g. ConnectionError)."),
            click.option("--reason", help="Only this reason (exhausted, dead_on, crash-loop, ...)."),
            click.option("--since", help="Only those dead-lettered this recently: 30s, 15m, 1h, 7d."),
        ]
    ):
        function = option(function)
    return function


def _where(queue: str | None, actor: str | None, tenant: str | None, error: str | None, reason: str | None,
           since: str | None) -> Filter:  # fmt: skip
    given = {"queue": queue, "actor": actor, "tenant": tenant, "error": error, "reason": reason, "since": since}
    if empty := [name for name, value in given.items() if value is not None and not value.strip()]:
        fail(f"--{empty[0]}: empty; leave it out to not filter by {empty[0]} (as the API and dashboard read it)", 2)
    try:
        since_ms = dlq_model.since(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    return Filter(queue=queue, actor=actor, tenant=tenant, error=error, reason=reason, since_ms=since_ms)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@main.group("dlq")
def dlq_group() -> None:
    """Dead letters: list, summary, show, requeue, purge."""


@dlq_group.command("list")
@_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--cursor", help="Start after this entry (the `next` of the previous page).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_list(limit: int, cursor: str | None, as_json: bool, **filters: Any) -> None:
    """Dead letters, newest first, a page at a time."""
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        page, following = admin.dead_letters.page(_where(**filters), limit=limit, cursor=cursor)
    if as_json:
        click.echo(json.dumps({"dead_letters": [e.as_dict() for e in page], "next": following}, indent=2))
        return
    click.echo(f"{'id':<34}{'when (UTC)':<21}{'queue':<14}{'actor':<24}{'reason':<14}{'error':<20}attempts")
    for e in page:
        click.echo(
            f"{e.id:<34}{_when(e.dead_lettered_at_ms):<21}{e.queue:<14}{e.actor:<24}{e.reason:<14}"
            f"{e.error_type:<20}{e.attempts}"
        )
    if following:
        click.echo(f"next page: --cursor {following}")


@dlq_group.command("summary")
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_summary(as_json: bool, **filters: Any) -> None:
    """Dead letters grouped by queue, actor, error type and reason, most numerous first."""
    admin = admin_or_exit()
    if filters.get("tenant") is not None:
        fail("--tenant: the summary groups by actor, error type and reason; use `dlq list --tenant`", 2)
    with reporting_redis_errors(admin.settings):
        groups = admin.dead_letters.summary(_where(**filters))
    if as_json:
        click.echo(json.dumps({"groups": [asdict(g) for g in groups]}, indent=2))
        return
    click.echo(f"{'count':>7}  {'queue':<14}{'actor':<24}{'error':<22}{'reason':<14}{'first (UTC)':<21}last (UTC)")
    for g in groups:
        click.echo(
            f"{g.count:>7}  {g.queue:<14}{g.actor:<24}{g.error_type:<22}{g.reason:<14}"
            f"{_when(g.first_ms):<21}{_when(g.last_ms)}"
        )


@dlq_group.command("show")
@click.argument("entry_id")
@click.option("--queue", help="The entry's queue (default: look in every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(entry_id: str, queue: str | None, as_json: bool) -> None:
    """One dead letter: its record, last error with traceback, and message."""
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        entry = admin.dead_letters.show(entry_id, queue)
    if entry is None:
        fail(f"no dead letter {entry_id!r}", NOT_FOUND)
    data = entry.as_dict(traceback=True)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=repr))
        return
    for key, value in data.items():
        if key not in ("traceback", "message"):
            click.echo(f"{key}: {value}")
    click.echo(f"message: {json.dumps(data['message'], default=repr)}")
    click.echo(f"traceback:\n{entry.traceback}")


def _selection(admin: Admin, ids: tuple[str, ...], everything: bool, where: Filter) -> list[DeadLetter]:
    with reporting_redis_errors(admin.settings):
        try:
            return admin.dead_letters.select(ids, everything, where)
        except ValueError as exc:
            fail(str(exc), 2)
        except LookupError as exc:
            fail(str(exc), NOT_FOUND)


def _confirm(count: int, verb: str, yes: bool, dry_run: bool) -> bool:
    click.echo(f"{count} dead letter(s) to {verb}")
    if dry_run or count == 0:
        return False
    if not yes and not click.confirm(f"{verb.capitalize()} them?", default=False):
        click.echo("nothing done")
        return False
    return True


@dlq_group.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter (of --queue, if given).")
@_filters
@click.option("--rate", "rate_text", help="At most this many per second: 50/s, 600/m.")
@click.option("--dry-run", is_flag=True, help="Say how many would be requeued, and requeue none.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_requeue(
    ids: tuple[str, ...], everything: bool, rate_text: str | None, dry_run: bool, yes: bool, **filters: Any
) -> None:
    """Put dead letters back on their queues, attempts reset, priority and tenant kept."""
    try:
        per_second = dlq_model.rate(rate_text) if rate_text else None
    except ValueError as exc:
        fail(f"--rate: {exc}", 2)
    admin = admin_or_exit()
    entries = _selection(admin, ids, everything, _where(**filters))
    if not _confirm(len(entries), "requeue", yes, dry_run):
        return
    done = dlq_model.ActionResult()

    def progress(result: dlq_model.ActionResult) -> None:
        done.done, done.gone, done.skipped = result.done, result.gone, result.skipped

    try:
        with reporting_redis_errors(admin.settings):
            result = admin.dead_letters.requeue(entries, rate=per_second, progress=progress)
    except KeyboardInterrupt:
        fail(f"interrupted after {done.done} requeued; run the same command again to requeue the rest", 130)
    click.echo(f"requeued {result.done}; {result.gone} already taken by someone else")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} that cannot be decoded: {', '.join(result.skipped[:10])}", err=True)


@dlq_group.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter (of --queue, if given).")
@_filters
@click.option("--dry-run", is_flag=True, help="Say how many would be purged, and purge none.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(ids: tuple[str, ...], everything: bool, dry_run: bool, yes: bool, **filters: Any) -> None:
    """Delete dead letters for good."""
    admin = admin_or_exit()
    entries = _selection(admin, ids, everything, _where(**filters))
    if not _confirm(len(entries), "purge", yes, dry_run):
        return
    with reporting_redis_errors(admin.settings):
        result = admin.dead_letters.purge(entries)
    click.echo(f"purged {result.done}; {result.gone} already gone")
