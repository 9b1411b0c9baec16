"""`triage scheduler`: periodiq's scheduler for the app's periodic actors, kept alive through a
failed send.

Guarantees:
- The same scheduling as `periodiq actors` (periodiq's `Scheduler`, asking each actor's
  `Schedule`), with one difference: a send that raises (Redis unreachable, a tenant's
  backpressure) is logged, the other actors due at that minute are still sent, the process
  keeps running, and that tick is tried again `RETRY_S` seconds later while within its
  lateness. Under `periodiq actors` such an error ends the process.
- Any number of schedulers may run: each tick is stored once (the `Periodic` middleware).
- Started while Redis is unreachable, it waits before its first tick and tries again with a
  capped back-off (0.5 s doubling to 5 s, `triage.broker.startup`), one log line per attempt
  naming where Redis is (no password, no traceback); it starts scheduling as soon as Redis
  answers, the latest tick it missed included (within its lateness, as at any start).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pendulum
from periodiq import Scheduler, print_periodic_actors  # type: ignore[import-untyped]

from triage.broker.startup import until_redis_answers
from triage.middleware.periodic import Schedule

logger = logging.getLogger(__name__)


class ResilientScheduler(Scheduler):  # type: ignore[misc]
    """periodiq's scheduler, one actor's send at a time."""

    def send_actors(self, actors: list[Any], now: Any) -> None:
        for actor in actors:
            try:
                super().send_actors([actor], now)
            except Exception as exc:
                logger.error("Tick of %s at %s not sent (%s); trying again shortly.", actor.actor_name, now, exc)
                schedule = actor.options.get("periodic")
                if isinstance(schedule, Schedule):
                    schedule.send_failed(now)


def run_scheduler(actors: dict[str, Any], client: Any = None) -> int:
    """Schedule the periodic actors among `actors` (name -> Actor) until the process is stopped;
    with `client` (the broker's Redis client), once Redis answers it."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [PID %(process)d] [%(name)s] %(message)s")
    periodic = [actor for actor in actors.values() if isinstance(actor.options.get("periodic"), Schedule)]
    if not periodic:
        logger.error('No periodic actor to schedule (declare one with periodic="...").')
        return 1
    print_periodic_actors(periodic)
    if client is not None:
        until_redis_answers(client.ping, client, waiting="scheduler waiting, no tick sent yet")
    scheduler = ResilientScheduler(actors=periodic)
    if pendulum.now().second > 55:  # as periodiq: start with the next minute
        time.sleep(60 - pendulum.now().second)
    scheduler.schedule()
    scheduler.loop()
    return 0
