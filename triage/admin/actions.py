"""The operator's actions, as the admin API and the dashboard take them: pause and resume a
queue, requeue and purge dead letters, reset and open a circuit breaker.

Guarantees:
- One code path per action for the web process: the HTTP API (`web.py`) and the dashboard
  (`dashboard/`) call these, and these call what the CLI calls (`Admin`, `DeadLetters`,
  `BreakerOps`), so an action behaves the same from every surface. (The CLI calls those
  directly: its actions are in the shell's history, not in this audit log.)
- Every action is written to the audit log (`auth.audit`: `triage.audit`, INFO) with who took
  it (the admin token's name), what it was, what it named and what it did; a failed action is
  logged with its error, and for dead letters with what was done before it, before the error
  goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .auth import audit
from .breakers import BreakerOps
from .dlq_model import ActionResult, DeadLetter, Filter
from .ops import Admin


def describe_selection(ids: Sequence[str], everything: bool, where: Filter) -> str:
    """What a dead-letter action names, for the audit log and the confirmation: ids, all, filters."""
    if ids:
        shown = ",".join(ids[:5]) + (f",+{len(ids) - 5} more" if len(ids) > 5 else "")
        return f"ids={shown}"
    parts = [f"{name}={value}" for name, value in vars(where).items() if value is not None]
    return " ".join(parts) if parts else ("all" if everything else "nothing")


class Actions:
    """What an operator does, audited. Parameters: admin: the operator's view of Redis."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def _audited(
        self, who: str, action: str, target: str, run: Callable[[], Any], partial: Callable[[], str] | None = None
    ) -> Any:
        try:
            result = run()
        except Exception as exc:
            done = f" after {partial()}" if partial is not None else ""
            audit(who, action, target, f"error {type(exc).__name__}: {exc}{done}")
            raise
        return result

    def pause(self, who: str, queue: str) -> None:
        self._audited(who, "pause", f"queue={queue}", lambda: self.admin.pause(queue))
        audit(who, "pause", f"queue={queue}", "paused")

    def resume(self, who: str, queue: str) -> None:
        self._audited(who, "resume", f"queue={queue}", lambda: self.admin.resume(queue))
        audit(who, "resume", f"queue={queue}", "resumed")

    def breaker_reset(self, who: str, name: str) -> list[str]:
        resumed: list[str] = self._audited(
            who, "breaker-reset", f"breaker={name}", lambda: BreakerOps(self.admin).reset(name)
        )
        audit(who, "breaker-reset", f"breaker={name}", f"closed, resumed={','.join(resumed) or '-'}")
        return resumed

    def breaker_open(self, who: str, name: str, seconds: float) -> str:
        verdict = self._audited(
            who, "breaker-open", f"breaker={name}", lambda: BreakerOps(self.admin).force_open(name, seconds)
        )
        audit(who, "breaker-open", f"breaker={name} for={seconds:g}s", verdict.state)
        return str(verdict.state)

    def requeue(
        self,
        who: str,
        entries: Sequence[DeadLetter],
        *,
        selection: str,
        rate: float | None = None,
        progress: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult:
        target = f"dead-letters {selection}" + (f" rate={rate:g}/s" if rate else "")
        last, tracked = _tracking(len(entries), progress)
        result: ActionResult = self._audited(
            who,
            "requeue",
            target,
            lambda: self.admin.dead_letters.requeue(entries, rate=rate, progress=tracked),
            lambda: _outcome(last[0]),
        )
        audit(who, "requeue", target, _outcome(result))
        return result

    def purge(
        self,
        who: str,
        entries: Sequence[DeadLetter],
        *,
        selection: str,
        progress: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult:
        target = f"dead-letters {selection}"
        last, tracked = _tracking(len(entries), progress)
        result: ActionResult = self._audited(
            who,
            "purge",
            target,
            lambda: self.admin.dead_letters.purge(entries, progress=tracked),
            lambda: _outcome(last[0]),
        )
        audit(who, "purge", target, _outcome(result))
        return result


def _tracking(
    matched: int, progress: Callable[[ActionResult], None] | None
) -> tuple[list[ActionResult], Callable[[ActionResult], None]]:
    """A holder of the latest progress (for the audit line of a failed action) and a callback
    that keeps it and passes it on to `progress`."""
    last = [ActionResult(matched=matched)]

    def tracked(result: ActionResult) -> None:
        last[0] = result
        if progress is not None:
            progress(result)

    return last, tracked


def _outcome(result: ActionResult) -> str:
    return f"matched={result.matched} done={result.done} gone={result.gone} skipped={len(result.skipped)}"
