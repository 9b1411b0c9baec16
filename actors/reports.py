"""Example domain, background tier: report exports, slow and bulky."""

from __future__ import annotations

import logging

from . import background
from ._work import simulate

logger = logging.getLogger(__name__)


@background(queue="reports", max_retries=2)
def generate_report(org_id: str, report_id: str) -> None:
    simulate(200, 800)
    logger.debug("Report %s for %s is ready.", report_id, org_id)
