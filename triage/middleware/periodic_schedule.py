"""A periodic actor's schedule as periodiq's scheduler sees it: whether a minute is due, when the
next one is, how late a tick may run.

Guarantees: `validate` never raises (periodiq's scheduler would exit): a Redis error in the
`skip_if_running` check counts as not pending; a tick is due at most once per scheduler (the
last look is remembered); lateness is capped so that a tick's dedup key stays within the
broker's limit (`MAX_TTL_S`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pendulum
import redis

from triage.broker.dedup import MAX_TTL_S
from triage.cron import MINUTE, UTC, Cron, CronError

logger = logging.getLogger(__name__)

KEY_MARGIN_S = 120  # a tick's dedup key outlives its lateness by this much (and schedulers' clock skew)
MAX_LATENESS_S = MAX_TTL_S - KEY_MARGIN_S
RETRY_S = 10  # a tick whose send failed is tried again this much later (`triage scheduler`)


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
        self._checked: dt.datetime | None = None  # the scheduler's last look (None: it just started)
        self._retry_at: dt.datetime | None = None  # a failed send's tick is looked at again then

    def __str__(self) -> str:
        return str(self.cron)

    def lateness(self, tick: dt.datetime) -> dt.timedelta:
        if self.max_lateness is not None:
            return dt.timedelta(seconds=self.max_lateness)
        return min(self.cron.period_at(tick), dt.timedelta(seconds=MAX_LATENESS_S))

    def tick_for(self, at: dt.datetime) -> dt.datetime:
        """The tick a send at `at` is for: the latest at or before it (the scheduled minute)."""
        return self.cron.latest_at_or_before(at) or at.astimezone(UTC).replace(second=0, microsecond=0)

    def validate(self, now: dt.datetime) -> bool:
        """Whether to send at `now`: the latest tick at or before `now` came after the scheduler's
        last look (a wake-up late by any time within the lateness still sends it) and is within
        its lateness; at the scheduler's first look, the latest tick missed, unless the next
        tick is less than a minute away; never while the previous tick is pending
        (`skip_if_running`). Never raises: a Redis error in that check counts as not pending."""
        latest, checked = self.cron.latest_at_or_before(now), self._checked
        self._checked = now
        if latest is None or now - latest > self.lateness(latest):
            return False
        if checked is None:
            following = self.cron.next_after(now)
            if not self.cron.is_tick(now) and following is not None and following - now < MINUTE:
                return False  # a start just before a tick: that tick, not the missed one
        elif latest <= checked:
            return False  # sent at an earlier look
        if self.skip_if_running:
            try:
                if self.pending(self.actor_name):
                    logger.info("Tick of %s not sent: the previous one is still queued or running.", self.actor_name)
                    return False
            except (redis.RedisError, OSError, ValueError, KeyError) as exc:
                logger.warning("Could not check whether %s still runs (%s): sending its tick.", self.actor_name, exc)
        return True

    def send_failed(self, now: dt.datetime) -> None:
        """The send at `now` failed: look at its tick again in RETRY_S (within its lateness)."""
        tick = self.tick_for(now)
        self._checked = tick - dt.timedelta(microseconds=1)
        self._retry_at = now + dt.timedelta(seconds=RETRY_S)

    def next_valid_date(self, now: dt.datetime) -> pendulum.DateTime:
        """The next tick, or sooner the retry of a failed send."""
        retry, self._retry_at = self._retry_at, None
        following = self.cron.next_after(now)
        if retry is not None and (following is None or retry < following):
            return pendulum.instance(retry.astimezone(UTC))
        if following is None:  # Cron.parse refuses specs that never fire
            raise CronError(f"cron spec {self.cron.spec!r} has no tick after {now.isoformat()}")
        return pendulum.instance(following)
