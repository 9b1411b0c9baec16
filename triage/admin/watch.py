"""`triage stats --watch`: a live view of the queues, refreshed every second.

Guarantees: reads Redis only (one `triage stats` read per refresh); rates are the change of
the counters between two refreshes, per second of the time that really passed; the oldest
wait is compared with the queue's tier's SLA target, and a queue over it is marked `LATE`.
Ctrl-C stops it. The screen is cleared between views only on a terminal.
"""

from __future__ import annotations

import sys
import time

import click

from triage.tiers import sla_targets

from .ops import Admin

HEADER = (
    f"{'queue':<18}{'tier':<12}{'queued':>9}{'running':>9}{'delayed':>9}{'retrying':>9}{'dead':>8}"
    f"{'in/s':>9}{'done/s':>9}{'ok/1h':>9}{'fail/1h':>9}{'oldest':>9}{'sla':>7}"
)


def watch_stats(admin: Admin, *, interval: float = 1.0, iterations: int = 0) -> None:
    """Print a view every `interval` seconds, `iterations` times (0: until Ctrl-C)."""
    sla = sla_targets(admin.settings)
    before: dict[str, tuple[int, int]] = {}
    then = time.monotonic()
    shown = 0
    try:
        while iterations == 0 or shown < iterations:
            data = admin.stats()
            now = time.monotonic()
            elapsed = max(now - then, 1e-3)
            lines = [time.strftime("%H:%M:%S") + "  (Ctrl-C to stop)", HEADER]
            for name, row in data.items():
                enqueued, acked = row["enqueued_total"], row["acked_total"]
                last = before.get(name, (enqueued, acked))
                rate_in, rate_done = (enqueued - last[0]) / elapsed, (acked - last[1]) / elapsed
                before[name] = (enqueued, acked)
                target = sla.get(row["tier"], sla["default"])
                oldest = row["oldest_waiting_seconds"]
                late = "  LATE" if oldest > target else ("  paused" if row["paused"] else "")
                lines.append(
                    f"{name:<18}{row['tier']:<12}{row['queued']:>9}{row['running']:>9}{row['delayed']:>9}"
                    f"{row['retrying']:>9}{row['dead_letters_total']:>8}{rate_in:>9.1f}{rate_done:>9.1f}"
                    f"{row['succeeded_last_hour']:>9}{row['failed_last_hour']:>9}"
                    f"{oldest:>8.1f}s{target:>6.0f}s{late}"
                )
            if shown and sys.stdout.isatty():
                click.clear()
            click.echo("\n".join(lines) + "\n", nl=False)
            shown, then = shown + 1, now
            if iterations == 0 or shown < iterations:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
