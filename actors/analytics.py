"""Example domain, background tier: analytics roll-ups nobody waits on."""

from __future__ import annotations

import datetime as dt
import logging

from . import background
from ._work import simulate

logger = logging.getLogger(__name__)


@background
def track_event(org_id: str, name: str, properties: dict[str, str | int | float]) -> None:
    simulate(1, 5)


@background(priority=1, dedup="rollup:{org_id}:{day}", dedup_ttl=86_400, dedup_mode="window")  # once a day
def rollup_daily_metrics(org_id: str, day: str) -> None:
    simulate(100, 400)
    logger.debug("Rolled up %s for %s.", day, org_id)


ORGS = ("acme", "globex", "initech")  # a real service reads its organisations from its database


@background(periodic="5 0 * * *", skip_if_running=True)  # 00:05 UTC every day, sent by `periodiq actors`
def schedule_daily_rollups() -> None:
    """Yesterday's roll-up for every organisation (each at most once a day: its dedup key)."""
    day = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    for org_id in ORGS:
        rollup_daily_metrics.send(org_id, day)
