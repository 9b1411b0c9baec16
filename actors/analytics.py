"""Example domain, background tier: analytics roll-ups nobody waits on."""

from __future__ import annotations

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
