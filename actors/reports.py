"""Example domain, background tier: report exports, slow and bulky."""

from __future__ import annotations

import logging

from . import background
from ._work import simulate

logger = logging.getLogger(__name__)


# A report asked for twice (a double click, a retried HTTP call) is generated once: the second
# send is refused while the first is queued, running or retrying.
@background(queue="reports", max_retries=2, dedup="report:{org_id}:{report_id}", dedup_ttl=3600)
def generate_report(org_id: str, report_id: str) -> None:
    simulate(200, 800)
    logger.debug("Report %s for %s is ready.", report_id, org_id)
