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
  if it is within the lateness (a tick another scheduler already sent is a duplicate), and
  then only the ticks that come.
- `skip_if_running=True`: a tick is not sent while the previous tick's message is queued,
  delayed or running (its message is still in the queue's message hash); the check is the
  scheduler's, before the send. A previous tick waiting for a retry (stored anew, under a new
  id) does not hold the next one back.
- Each send and each run is recorded in `{ns}:periodic` (fields `fired|<actor>`, `run|<actor>`,
  `ok|<actor>`: the last tick sent, the last run's tick, outcome and end, the last success),
  for `triage schedule` and `triage_periodic_last_success_timestamp_seconds`. A record that
  cannot be written is logged and does not stop the message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pendulum
import redis
from dramatiq import Actor, Broker
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage
from periodiq import PeriodiqMiddleware  # type: ignore[import-untyped]

from triage.broker.keys import QueueKeys
from triage.cron import UTC, Cron, CronError

from .declaration import InvalidActorOption

logger = logging.getLogger(__name__)

SCHEDULED_AT = "scheduled_at"  # periodiq's message option: the tick the message is for
KEY_MARGIN_S = 120  # a tick's dedup key outlives its lateness by this much


def periodic_key(namespace: str) -> str:
    return f"{namespace}:periodic"


class Schedule:
    """What a periodic actor's `periodic` option holds: its cron, lateness and overlap policy,
    in the interface periodiq's scheduler calls (`validate`, `next_valid_date`)."""

    def __init__(
        self,
        cron: Cron,
        *,
        actor_name: str,
        max_lateness: float | None,
        skip_if_running: bool,
        pending: Callable[[str], bool],
    ) -> None:
        self.cron, self.actor_name = cron, actor_name
        self.max_lateness, self.skip_if_running, self.pending = max_lateness, skip_if_running, pending
        self._started = False

    def __str__(self) -> str:
        return str(self.cron)

    def lateness(self, tick: dt.datetime) -> dt.timedelta:
        if self.max_lateness is not None:
            return dt.timedelta(seconds=self.max_lateness)
        return self.cron.period_at(tick)

    def tick_for(self, at: dt.datetime) -> dt.datetime:
        """The tick a send at `at` is for: the latest at or before it (the scheduled minute)."""
        return self.cron.latest_at_or_before(at) or at.astimezone(UTC).replace(second=0, microsecond=0)

    def validate(self, now: dt.datetime) -> bool:
        """Whether to send at `now`: its minute is a tick, or (the scheduler's first look) the
        latest tick was missed within the lateness; and not while the previous one is pending."""
        due = self.cron.is_tick(now)
        if not due and not self._started:
            missed = self.cron.latest_at_or_before(now)
            due = missed is not None and now - missed <= self.lateness(missed)
        self._started = True
        if due and self.skip_if_running and self.pending(self.actor_name):
            logger.info("Tick of %s not sent: the previous one is still queued or running.", self.actor_name)
            return False
        return due

    def next_valid_date(self, now: dt.datetime) -> pendulum.DateTime:
        following = self.cron.next_after(now)
        assert following is not None  # Cron.parse refuses specs that never fire
        return pendulum.instance(following)


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
        self.key = periodic_key(namespace)

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
        if lateness is not None and (not isinstance(lateness, int | float) or lateness <= 0):
            raise InvalidActorOption(f"{where}: periodic_max_lateness must be seconds > 0, got {lateness!r}")
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
        actor = broker.actors.get(message.actor_name)
        schedule = actor.options.get("periodic") if actor is not None else None
        return schedule if isinstance(schedule, Schedule) else None

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        schedule = self._schedule(broker, message)
        if schedule is None or SCHEDULED_AT not in message.options:
            return  # sent by hand: an ordinary message
        tick = schedule.tick_for(_instant(message.options[SCHEDULED_AT]))
        message.options[SCHEDULED_AT] = tick.isoformat()
        message.options["dedup_key"] = f"periodic:{message.actor_name}:{tick:%Y-%m-%dT%H:%MZ}"
        message.options["dedup_mode"] = "window"
        message.options["dedup_ttl"] = schedule.lateness(tick).total_seconds() + KEY_MARGIN_S

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if self._schedule(broker, message) is not None and SCHEDULED_AT in message.options:
            record = {
                "tick": message.options[SCHEDULED_AT],
                "message_id": message.message_id,
                "redis_message_id": message.options.get("redis_message_id", ""),
                "queue": message.queue_name,
            }
            self._record({f"fired|{message.actor_name}": json.dumps(record)})

    def before_process_message(self, broker: Broker, message: Any) -> None:
        schedule = self._schedule(broker, message)
        if schedule is None or SCHEDULED_AT not in message.options:
            return
        tick = _instant(message.options[SCHEDULED_AT])
        late = dt.datetime.now(UTC) - tick
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
        if self._schedule(broker, message) is None or SCHEDULED_AT not in message.options:
            return
        now = time.time()
        run = {"tick": message.options[SCHEDULED_AT], "outcome": outcome, "finished_at": now}
        fields = {f"run|{message.actor_name}": json.dumps(run)}
        if outcome == "done":
            fields[f"ok|{message.actor_name}"] = str(now)
        self._record(fields)

    def pending(self, actor_name: str) -> bool:
        """Whether the last tick sent for `actor_name` is still queued, delayed or running."""
        raw = self.client.hget(self.key, f"fired|{actor_name}")
        if raw is None:
            return False
        fired = json.loads(raw)
        return bool(self.client.hexists(QueueKeys(self.namespace, fired["queue"]).msgs, fired["redis_message_id"]))

    def _record(self, fields: dict[str, str]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, value in fields.items():
                pipe.hset(self.key, name, value)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("Periodic record %s not written (%s).", ", ".join(fields), exc)


def _instant(value: str) -> dt.datetime:
    parsed = pendulum.parse(value)
    assert isinstance(parsed, dt.datetime)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
