"""An actor for worker-process tests of tenant limits: each run appends its tenant, start and
end times to a ledger file (outside Redis, so the ledger does not share Redis's fate)."""

from __future__ import annotations

import os
import time

from actors import default

QUEUE = "tenanted"


@default(queue=QUEUE)
def tenant_job(tenant: str, index: int) -> None:
    started = time.time()
    time.sleep(0.05)
    with open(os.environ["TEST_LEDGER"], "a") as ledger:
        ledger.write(f"{tenant} {index} {started:.6f} {time.time():.6f}\n")


@default(queue=QUEUE, rate_limit="10/s")
def paced_job(tenant: str, index: int) -> None:
    """At most 10 runs a second across every worker (a burst of 1: evenly spaced)."""
    tenant_job.fn(tenant, index)


@default(queue=QUEUE, concurrency=2)
def exclusive_job(tenant: str, index: int) -> None:
    """At most 2 running at once across every worker."""
    tenant_job.fn(tenant, index)


@default(queue=QUEUE)
def slow_tenant_job(tenant: str, index: int, seconds: float) -> None:
    """Long enough for a test to kill its worker mid-run."""
    time.sleep(seconds)
    tenant_job.fn(tenant, index)
