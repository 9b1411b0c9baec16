"""`triage breakers`: the circuit breakers' state, and the operator's reset and forced open.

Guarantees: works from Redis and the environment alone, like the other operator commands:
the breakers listed are those any worker declared or used (`{ns}:breakers`) and those of
`TRIAGE_BREAKERS`. `reset` closes a breaker and resumes the queues it paused; `open` opens it
for a maintenance window (`--for 10m`; without it, until `reset`). Both act at once on every
process (each transition is published). An unknown name exits with status 3.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import click

from triage.broker.breaker_state import BreakerSpec, CircuitStore, Verdict

from .cli_common import NOT_FOUND, admin_or_exit, fail, reporting_redis_errors
from .ops import Admin

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


MAX_OPEN_SECONDS = 30 * 86_400  # the longest maintenance window an operator may open a breaker for


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '2h', '1d' as seconds, at most MAX_OPEN_SECONDS (else ValueError)."""
    match = _DURATION.match(text.strip())
    if not match or len(match.group(1)) > 12:
        raise ValueError(f"{text[:40]!r} is not a duration: use 90s, 10m, 2h or 1d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_OPEN_SECONDS:
        raise ValueError(f"{text!r} is longer than {MAX_OPEN_SECONDS // 86_400} days")
    return seconds


class BreakerOps:
    """The breakers of a namespace, for operators."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.store = CircuitStore(
            client=admin.broker.client, namespace=admin.settings.namespace, on_transition=self._logged
        )

    @staticmethod
    def _logged(name: str, verdict: Verdict) -> None:
        logger.warning("Circuit breaker %r %s by an operator.", name, verdict.transition.replace("_", "-"))

    def names(self) -> list[str]:
        return sorted(set(self.store.names()) | set(self.admin.settings.breakers))

    def status(self) -> dict[str, dict[str, Any]]:
        return self.store.status(self.names())

    def reset(self, name: str) -> list[str]:
        """Close `name` now; the queues it had paused are resumed (returned)."""
        self.store.reset(self._known(name))
        owner = f"breaker:{name}"
        return [q for q in self.admin.queues() if self.admin.broker.resume_if_paused_by(q, owner)]

    def force_open(self, name: str, seconds: float) -> Verdict:
        return self.store.force_open(self._known(name), for_ms=int(seconds * 1000))

    def _known(self, name: str) -> BreakerSpec:
        names = self.names()
        if name not in names:
            raise LookupError(f"no circuit breaker named {name!r}; known: {', '.join(names) or 'none'}")
        return BreakerSpec(name)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s"


@click.group("breakers", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def breakers_group(ctx: click.Context, as_json: bool) -> None:
    """Circuit breakers: state, failures, time to the next probe, refusals; reset or open one."""
    if ctx.invoked_subcommand is not None:
        return
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        data = BreakerOps(admin).status()
    if as_json:
        click.echo(json.dumps({"breakers": data}, indent=2))
        return
    click.echo(f"{'breaker':<20}{'state':<11}{'failures':>9}{'window':>12}{'next probe':>12}{'rejected':>10}"
               f"{'opened':>8}  last error")  # fmt: skip
    for name, row in data.items():
        window = f"{row['window_failures']}/{row['window_calls']}" if row["mode"] == "rate" else "-"
        state = row["state"] + ("*" if row["forced"] else "")
        click.echo(
            f"{name:<20}{state:<11}{row['failures']:>9}{window:>12}{_seconds(row['next_probe_in_seconds']):>12}"
            f"{row['rejected_total']:>10}{row['opened_total']:>8}  {row['last_error']}"
        )


def _act(action: str, name: str, seconds: float = 0) -> None:
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        ops = BreakerOps(admin)
        try:
            if action == "reset":
                resumed = ops.reset(name)
                click.echo(f"closed {name}" + (f"; resumed {', '.join(resumed)}" if resumed else ""))
            else:
                ops.force_open(name, seconds)
                click.echo(f"opened {name} " + (f"for {seconds:g}s" if seconds else "until reset"))
        except LookupError as exc:
            fail(str(exc), NOT_FOUND)


@breakers_group.command("reset")
@click.argument("name")
def breakers_reset(name: str) -> None:
    """Close breaker NAME now (counts cleared) and resume the queues it paused."""
    _act("reset", name)


@breakers_group.command("open")
@click.argument("name")
@click.option("--for", "duration", default=None, help="How long: 90s, 10m, 2h, 1d (default: until reset).")
def breakers_open(name: str, duration: str | None) -> None:
    """Open breaker NAME now, e.g. for a maintenance window of the dependency."""
    try:
        seconds = parse_duration(duration) if duration else 0.0
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    _act("open", name, seconds)
