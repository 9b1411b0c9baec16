"""`triage tenants`: who is queued, in flight and held back by the per-tenant limits, per queue.

Guarantees: works from Redis and the environment alone (the queues are those `triage stats`
knows); each queue is one consistent read. Tenants are sorted by backlog, largest first; the
shared tenant (messages sent without one) is not listed. `--top N` bounds the listing per queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from triage.broker.clock import now_ms
from triage.broker.limits import TenantRow, tenant_view

from .cli_common import admin_or_exit, reporting_redis_errors
from .ops import Admin


def tenant_listing(admin: Admin, tier: str | None, top: int) -> dict[str, dict[str, Any]]:
    """Per queue (of `tier`, or all): its tier and its tenants, largest backlog first."""
    listing: dict[str, dict[str, Any]] = {}
    now = now_ms()
    for queue, queue_tier in admin.queues().items():
        if tier is not None and queue_tier != tier:
            continue
        rows = merged(tenant_view(admin.broker.client, keys, now) for keys in admin.broker.shards(queue))
        if rows:
            listing[queue] = {"tier": queue_tier, "tenants": dict(list(rows.items())[:top])}
    return listing


SUMMED = ("queued", "in_flight", "pending", "throttled_total", "admission_denied_total", "admission_deferred_total")


def merged(views: Iterable[dict[str, TenantRow]]) -> dict[str, TenantRow]:
    """A sharded queue's tenants over its shards (a tenant's messages are in one shard, but for
    those left where the queue was before it was sharded), largest backlog first."""
    rows: dict[str, TenantRow] = {}
    for view in views:
        for tenant, row in view.items():
            seen = rows.get(tenant)
            if seen is None:
                rows[tenant] = row
                continue
            for field in SUMMED:
                seen[field] += row[field]  # type: ignore[literal-required]
            seen["parked"] = seen["parked"] or row["parked"]
    return dict(sorted(rows.items(), key=lambda item: (-item[1]["queued"], item[0])))


def _limits(row: dict[str, Any]) -> str:
    rpm = f"{row['rpm']:g}/min burst {row['burst']:g}" if row["rpm"] else "-"
    cap = str(row["max_in_flight"]) if row["max_in_flight"] else "-"
    return f"{rpm}, in flight ≤ {cap}" + (" (own)" if row["own_limits"] else "")


@click.command("tenants")
@click.option("--tier", type=click.Choice(["critical", "default", "background"]), help="Only this tier's queues.")
@click.option("--top", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Tenants per queue.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tenants_command(tier: str | None, top: int, as_json: bool) -> None:
    """Per queue, each tenant's backlog, messages in flight, throttles and limits."""
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        listing = tenant_listing(admin, tier, top)
    if as_json:
        click.echo(json.dumps({"queues": listing}, indent=2))
        return
    click.echo(f"{'queue':<16}{'tenant':<20}{'queued':>9}{'in flight':>11}{'throttled':>11}  {'held':<12}limits")
    for queue, entry in listing.items():
        for tenant, row in entry["tenants"].items():
            held = row["parked"] or "-"
            if row["parked"] == "rate":
                held = f"rate {row['eligible_in_seconds']:.1f}s"
            click.echo(
                f"{queue:<16}{tenant:<20}{row['queued']:>9}{row['in_flight']:>11}{row['throttled_total']:>11}  "
                f"{held:<12}{_limits(row)}"
            )
