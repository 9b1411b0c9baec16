"""`triage schedule`: every periodic actor, its cron spec, its next tick, its last tick sent, its
last run and outcome, its last success.

Guarantees: reads the app's actors (their `periodic` option, a `Schedule`) and Redis's record
of sends and runs (`{ns}:periodic`, kept by the `Periodic` middleware) in one read; a record
that is missing (never sent, never run) shows as none.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
import redis

from triage.broker.clock import now_ms
from triage.broker.periodic_state import records
from triage.cron import UTC
from triage.middleware.periodic import Schedule
from triage.runtime import Runtime

from .cli_common import reporting_redis_errors


def schedule_rows(actors: dict[str, Any], client: redis.Redis, namespace: str) -> dict[str, dict[str, Any]]:
    """Per periodic actor of `actors` (name -> dramatiq Actor): its schedule and records."""
    periodic = {
        name: actor for name, actor in sorted(actors.items()) if isinstance(actor.options.get("periodic"), Schedule)
    }
    found = records(client, namespace) if periodic else {}
    now = dt.datetime.fromtimestamp(now_ms() / 1000, UTC)
    rows: dict[str, dict[str, Any]] = {}
    for name, actor in periodic.items():
        schedule: Schedule = actor.options["periodic"]
        following = schedule.cron.next_after(now)
        fired, run = (found.get(f"{kind}|{name}") or {} for kind in ("fired", "run"))
        ok = found.get(f"ok|{name}")
        rows[name] = {
            "queue": actor.queue_name,
            "spec": schedule.cron.spec,
            "timezone": schedule.cron.tz.key,
            "next_run": following.isoformat() if following else None,
            "max_lateness_seconds": schedule.lateness(following or now).total_seconds(),
            "skip_if_running": schedule.skip_if_running,
            "last_sent_tick": fired.get("tick"),
            "last_run_tick": run.get("tick"),
            "last_outcome": run.get("outcome"),
            "last_success": dt.datetime.fromtimestamp(ok, UTC).isoformat() if ok else None,
        }
    return rows


def schedule_command(rt: Runtime, as_json: bool) -> None:
    with reporting_redis_errors(rt.settings):
        rows = schedule_rows(rt.broker.actors, rt.broker.client, rt.settings.namespace)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'actor':<28}{'spec':<18}{'next run (UTC)':<22}{'last tick':<22}{'outcome':<9}last success")
    for name, row in rows.items():
        click.echo(
            f"{name:<28}{row['spec']:<18}{_short(row['next_run']):<22}{_short(row['last_run_tick']):<22}"
            f"{row['last_outcome'] or '-':<9}{_short(row['last_success'])}"
        )


def _short(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"
