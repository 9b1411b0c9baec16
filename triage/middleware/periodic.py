"""Periodic actors with periodiq: `@background(periodic="*/5 * * * *")`, run by `periodiq actors`.

    @background(periodic="0 3 * * *", skip_if_running=True)
    def nightly_rollup() -> None: ...

Guarantees:
- `periodic` is a cron spec (`triage.cron`: `*/5 * * * *`, `@hourly`, `@daily`, `@weekly`,
  `@monthly`; Sunday as 0, 7 or sun) in `TRIAGE_PERIODIC_TIMEZONE` (UTC by default), checked
  when the actor is declared. The option holds a `Schedule`, which periodiq's scheduler asks
  whether a minute is due and when the next one is.
- Exactly one message per tick, however many schedulers run: each send carries its tick (the
  scheduled minute, as an instant) and a deduplication key for (actor, tick) in `window` mode,
  taken by the broker's enqueue script atomically with the store; a second scheduler's send of
  the same tick is a duplicate and stores nothing. No leader, no lock to expire.
- A worker skips a tick older than the actor's `periodic_max_lateness` (seconds; default: the
  period, from that tick to the next) instead of running it late.
- Missed ticks are not replayed: a scheduler that starts fires the latest tick it missed, once,
  if it is within the lateness and the next tick is more than a minute away (a tick another
  scheduler already sent is a duplicate); a scheduler that wakes late sends the tick it woke
  for if within the lateness; older ticks are dropped.
- `skip_if_running=True`: a tick is not sent while the previous tick's message is queued,
  delayed or running (its message is still in the queue's message hash); the check is the
  scheduler's, before the send. A previous tick waiting for a retry (stored anew, under a new
  id) does not hold the next one back.
- Each send and each run is recorded (`triage.broker.periodic_state`: the last tick sent, the
  last run's tick, outcome and end, the last success), for `triage schedule` and
  `triage_periodic_last_success_timestamp_seconds`. A record that cannot be written is logged
  and does not stop the message.
- Schedulers' clocks must agree within the lateness plus `KEY_MARGIN_S` (a tick's key lives
  that long); a scheduler whose clock is further off can send a tick again after its key expired.
- `validate` never raises (periodiq's scheduler would exit); `triage scheduler` also keeps one
  actor's failed send (Redis down, backpressure) from stopping the others or the process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, ClassVar

import pendulum
import redis
from dramatiq import Actor, Broker
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage
from periodiq import PeriodiqMiddleware  # type: ignore[import-untyped]

from triage.broker.clock import now_ms
from triage.broker.keys import QueueKeys
from triage.broker.periodic_state import record, write
from triage.cron import UTC, Cron, CronError

from .declaration import InvalidActorOption
from .periodic_schedule import KEY_MARGIN_S, MAX_LATENESS_S, RETRY_S, Schedule

__all__ = ["RETRY_S", "SCHEDULED_AT", "Periodic", "Schedule"]

logger = logging.getLogger(__name__)

SCHEDULED_AT = "scheduled_at"  # periodiq's message option: the tick the message is for


class Periodic(PeriodiqMiddleware):  # type: ignore[misc]
    """The `periodic`, `periodic_max_lateness` and `skip_if_running` actor options.

    Parameters:
      client: the Redis client (the records, and `skip_if_running`'s look at the queue).
      namespace: the keys' namespace.
      timezone: the zone of every cron spec (an IANA name).
    """

    actor_options: ClassVar[set[str]] = {"periodic", "periodic_max_lateness", "skip_if_running"}

    def __init__(self, *, client: redis.Redis, namespace: str, timezone: str = "UTC") -> None:
        super().__init__()
        self.client, self.namespace, self.timezone = client, namespace, timezone

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        options = actor.options
        spec = options.get("periodic")
        if spec is None:
            if "periodic_max_lateness" in options or "skip_if_running" in options:
                raise InvalidActorOption(
                    f"actor {actor.actor_name!r}: periodic_max_lateness and skip_if_running need periodic"
                )
            return
        where = f"actor {actor.actor_name!r}"
        lateness = options.get("periodic_max_lateness")
        if lateness is not None and (
            isinstance(lateness, bool) or not isinstance(lateness, int | float) or not 0 < lateness <= MAX_LATENESS_S
        ):
            raise InvalidActorOption(
                f"{where}: periodic_max_lateness must be seconds > 0 and at most {MAX_LATENESS_S}, got {lateness!r}"
            )
        if isinstance(spec, Schedule):
            return
        if not isinstance(spec, str):
            raise InvalidActorOption(f"{where}: periodic must be a cron spec such as '*/5 * * * *', got {spec!r}")
        try:
            cron = Cron.parse(spec, self.timezone)
        except CronError as exc:
            raise InvalidActorOption(f"{where}: {exc}") from None
        options["periodic"] = Schedule(
            cron,
            actor_name=actor.actor_name,
            max_lateness=lateness,
            skip_if_running=bool(options.get("skip_if_running", False)),
            pending=self.pending,
        )

    def _schedule(self, broker: Broker, message: Message[Any]) -> Schedule | None:
        """The schedule of a tick's message; None for any other (a periodic actor sent by hand too)."""
        if SCHEDULED_AT not in message.options:
            return None
        actor = broker.actors.get(message.actor_name)
        schedule = actor.options.get("periodic") if actor is not None else None
        return schedule if isinstance(schedule, Schedule) else None

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        schedule = self._schedule(broker, message)
        if schedule is None:
            return
        tick = schedule.tick_for(_instant(message.options[SCHEDULED_AT]))
        message.options[SCHEDULED_AT] = tick.isoformat()
        message.options["dedup_key"] = f"periodic:{message.actor_name}:{tick:%Y-%m-%dT%H:%MZ}"
        message.options["dedup_mode"] = "window"
        message.options["dedup_ttl"] = schedule.lateness(tick).total_seconds() + KEY_MARGIN_S  # <= MAX_TTL_S

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if self._schedule(broker, message) is not None:
            record = {
                "tick": message.options[SCHEDULED_AT],
                "message_id": message.message_id,
                "redis_message_id": message.options.get("redis_message_id", ""),
                "queue": message.queue_name,
            }
            self._record({f"fired|{message.actor_name}": json.dumps(record)})

    def before_process_message(self, broker: Broker, message: Any) -> None:
        schedule = self._schedule(broker, message)
        if schedule is None:
            return
        tick = _instant(message.options[SCHEDULED_AT])
        late = dt.datetime.fromtimestamp(now_ms() / 1000, UTC) - tick
        if late > schedule.lateness(tick):
            logger.info("Skipping %s: its tick %s is %ds late.", message, tick.isoformat(), late.total_seconds())
            raise SkipMessage()

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._ran(broker, message, "done" if exception is None else "failed")

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        self._ran(broker, message, "skipped")

    def _ran(self, broker: Broker, message: Any, outcome: str) -> None:
        if self._schedule(broker, message) is None:
            return
        now = now_ms() / 1000
        run = {"tick": message.options[SCHEDULED_AT], "outcome": outcome, "finished_at": now}
        fields = {f"run|{message.actor_name}": json.dumps(run)}
        if outcome == "done":
            fields[f"ok|{message.actor_name}"] = str(now)
        self._record(fields)

    def pending(self, actor_name: str) -> bool:
        """Whether the last tick sent for `actor_name` is still queued, delayed or running."""
        fired = record(self.client, self.namespace, f"fired|{actor_name}")
        if not isinstance(fired, dict):
            return False
        return bool(self.client.hexists(QueueKeys(self.namespace, fired["queue"]).msgs, fired["redis_message_id"]))

    def _record(self, fields: dict[str, str]) -> None:
        try:
            write(self.client, self.namespace, fields)
        except redis.RedisError as exc:
            logger.warning("Periodic record %s not written (%s).", ", ".join(fields), exc)


def _instant(value: str) -> dt.datetime:
    parsed = pendulum.parse(value)
    if not isinstance(parsed, dt.datetime):
        raise ValueError(f"scheduled_at {value!r} is not a date and time")
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
