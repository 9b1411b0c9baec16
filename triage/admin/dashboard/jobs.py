"""Bulk dead-letter actions started from the dashboard: requeue or purge "all matching the
filter" at a chosen rate, in the background, with their progress in Redis.

Guarantees:
- A job acts on what the operator confirmed: the entries matching the filter up to the newest
  one counted on the confirmation page (by dead-letter time and id), at most that count; named
  ids, those still there (the others count as taken by someone else). So a requeued message
  that fails again and returns to the dead letters is not taken a second time by the same job
  (no requeue loop), and letters arriving meanwhile wait for the operator's next decision.
  (Dead-letter times come from the workers' clocks: a worker whose clock is behind can date a
  letter that arrives during the confirmation before the newest counted; the count still caps.)
- The work is `Actions.requeue` / `Actions.purge` (audited), entry by entry atomic in Redis:
  a job cut short (the web process stopped, Redis lost) leaves every entry either acted on or
  still a dead letter, never both, never neither. Its record then stops advancing
  (`beat_ms`), and the job page says it stalled.
- Progress (`matched`, `done`, `gone`, `skipped`, `state`) is in `{ns:admin}:job:<id>`, kept
  7 days; `{ns:admin}:jobs` lists the last 50 jobs. Any web process can show any job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from triage.broker.clock import now_ms

from ..actions import Actions
from ..dlq_model import ActionResult, DeadLetter, Filter

logger = logging.getLogger(__name__)

KEEP_SECONDS = 7 * 86_400
RECENT = 50
STALLED_MS = 30_000


@dataclass(frozen=True)
class JobSpec:
    """What a job does: `action` (requeue or purge) to the `ids`, or to the entries matching
    `where` up to the `newest` counted (a cursor), at most `expected`; `who` took it."""

    who: str
    action: str
    ids: list[str]
    where: Filter
    selection: str
    newest: str
    expected: int
    rate: float | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected", max(0, self.expected))


class Jobs:
    """The dashboard's background dead-letter actions, through `actions`."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.client: redis.Redis = actions.admin.broker.client
        namespace = actions.admin.settings.namespace
        self._prefix, self._index = f"{{{namespace}:admin}}:job:", f"{{{namespace}:admin}}:jobs"

    def start(self, job: JobSpec) -> str:
        """Record a job and start it; its id."""
        job_id = uuid.uuid4().hex[:16]
        now = now_ms()
        record = {
            "id": job_id,
            "action": job.action,
            "who": job.who,
            "selection": job.selection,
            "rate": f"{job.rate:g}" if job.rate else "",
            "state": "running",
            "expected": job.expected,
            "matched": 0,
            "done": 0,
            "gone": 0,
            "skipped": 0,
            "error": "",
            "started_ms": now,
            "beat_ms": now,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._prefix + job_id, mapping=record)  # type: ignore[arg-type]
        pipe.expire(self._prefix + job_id, KEEP_SECONDS)
        pipe.zadd(self._index, {job_id: now})
        pipe.zremrangebyrank(self._index, 0, -RECENT - 1)
        pipe.execute()
        work = threading.Thread(
            target=self._run, args=(job_id, job), name=f"triage-dashboard-job-{job_id}", daemon=True
        )
        work.start()
        return job_id

    def _run(self, job_id: str, job: JobSpec) -> None:
        key = self._prefix + job_id
        missing = 0

        def progress(result: ActionResult) -> None:
            self.client.hset(
                key,
                mapping={
                    "done": result.done,
                    "gone": result.gone + missing,
                    "skipped": len(result.skipped),
                    "beat_ms": now_ms(),
                },
            )

        try:
            entries, missing = self._entries(job)
            self.client.hset(key, mapping={"matched": len(entries) + missing, "beat_ms": now_ms()})
            if job.action == "requeue":
                result = self.actions.requeue(
                    job.who, entries, selection=job.selection, rate=job.rate, progress=progress
                )
            else:
                result = self.actions.purge(job.who, entries, selection=job.selection, progress=progress)
            progress(result)
            self.client.hset(key, mapping={"state": "done", "finished_ms": now_ms()})
        except Exception as exc:  # the job's page shows it; the entries not reached stay dead letters
            logger.warning("Dashboard job %s (%s %s) stopped: %s", job_id, job.action, job.selection, exc)
            with contextlib.suppress(redis.RedisError):  # else the record stops advancing: "stalled"
                self.client.hset(key, mapping={"state": "failed", "error": f"{type(exc).__name__}: {exc}"})

    def _entries(self, job: JobSpec) -> tuple[list[DeadLetter], int]:
        """The entries to act on, and how many named ids are gone already."""
        dead_letters = self.actions.admin.dead_letters
        if job.ids:
            found = [dead_letters.show(entry_id) for entry_id in job.ids[: job.expected]]
            return [entry for entry in found if entry is not None], sum(entry is None for entry in found)
        taken: list[DeadLetter] = []
        for entry in dead_letters.matching(job.where):  # newest first
            if len(taken) == job.expected:
                break
            if entry.cursor <= job.newest:
                taken.append(entry)
        return taken, 0

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw: dict[bytes, bytes] = self.client.hgetall(self._prefix + job_id)  # type: ignore[assignment]
        return _decoded(raw) if raw else None

    def recent(self, count: int = 10) -> list[dict[str, Any]]:
        ids: list[bytes] = self.client.zrevrange(self._index, 0, count - 1)  # type: ignore[assignment]
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._prefix + job_id.decode())
        return [_decoded(raw) for raw in (pipe.execute() if ids else []) if raw]


def _decoded(raw: dict[bytes, bytes]) -> dict[str, Any]:
    job: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for field in ("expected", "matched", "done", "gone", "skipped", "started_ms", "beat_ms", "finished_ms"):
        job[field] = int(job.get(field) or 0)
    job["stalled"] = job["state"] == "running" and now_ms() - job["beat_ms"] > STALLED_MS
    return job
