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

import redis

from triage.cron import UTC
from triage.middleware.periodic import Schedule, periodic_key


def schedule_rows(actors: dict[str, Any], client: redis.Redis, namespace: str) -> dict[str, dict[str, Any]]:
    """Per periodic actor of `actors` (name -> dramatiq Actor): its schedule and records."""
    periodic = {
        name: actor for name, actor in sorted(actors.items()) if isinstance(actor.options.get("periodic"), Schedule)
    }
    records: dict[bytes, bytes] = client.hgetall(periodic_key(namespace)) if periodic else {}  # type: ignore[assignment]
    now = dt.datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {}
    for name, actor in periodic.items():
        schedule: Schedule = actor.options["periodic"]
        following = schedule.cron.next_after(now)
        fired, run = (_json(records.get(f"{kind}|{name}".encode())) for kind in ("fired", "run"))
        ok = records.get(f"ok|{name}".encode())
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
            "last_success": dt.datetime.fromtimestamp(float(ok), UTC).isoformat() if ok else None,
        }
    return rows


def last_successes(client: redis.Redis, namespace: str) -> dict[str, float]:
    """Per periodic actor that ever succeeded: when its last success ended (unix seconds)."""
    records: dict[bytes, bytes] = client.hgetall(periodic_key(namespace))  # type: ignore[assignment]
    return {k.decode()[3:]: float(v) for k, v in records.items() if k.startswith(b"ok|")}


def _json(raw: bytes | None) -> dict[str, Any]:
    return json.loads(raw) if raw else {}
