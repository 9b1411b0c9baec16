"""The demo producer: a steady, realistic mix of work across the three tiers.

Guarantees: sends at about `rate` messages per second (orders and payments on
critical, emails and chat notifications on default, analytics events and bursts of
report exports on background), prints the queue counters every 5 seconds, and
stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from types import FrameType

import click
import redis
from dramatiq.errors import BrokerConnectionError

from config.broker import Runtime

ORGS = ("acme", "globex", "initech", "umbrella", "hooli")


def _send_one() -> None:
    from actors import analytics, notifications, orders

    org = random.choice(ORGS)
    roll = random.random()
    if roll < 0.15:
        lines: list[dict[str, str | int]] = [
            {"sku": f"SKU-{random.randint(1, 500)}", "qty": random.randint(1, 3)} for _ in range(2)
        ]
        orders.place_order.send(uuid.uuid4().hex[:12], f"buyer@{org}.example", lines)
    elif roll < 0.25:
        orders.charge_payment.send(uuid.uuid4().hex[:12], random.randint(500, 50_000))
    elif roll < 0.45:
        notifications.notify.send(random.randint(1000, 9999), "Your order has shipped")
    elif roll < 0.55:
        notifications.send_email.send(f"ops@{org}.example", "Weekly digest", "…")
    else:
        analytics.track_event.send(org, "page_view", {"path": "/checkout", "ms": random.randint(5, 900)})


def _report_burst(size: int) -> None:
    from actors import reports

    org = random.choice(ORGS)
    for _ in range(size):
        reports.generate_report.send(org, uuid.uuid4().hex[:8])


def produce(runtime: Runtime, *, rate: float, duration: float = 0.0) -> int:
    """Send work until interrupted (or for `duration` seconds); return how many messages were sent."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    interval = 1.0 / rate if rate > 0 else 1.0
    started = last_report = last_burst = time.monotonic()
    sent = 0
    click.echo(f"demo: sending ~{rate:g} msg/s to {runtime.settings.redis_url_redacted}; Ctrl-C stops")
    while not stopping and not (duration and time.monotonic() - started >= duration):
        now = time.monotonic()
        try:
            _send_one()
            sent += 1
            if now - last_burst >= 15:
                _report_burst(20)
                sent += 20
                last_burst = now
            if now - last_report >= 5:
                last_report = now
                _print_counters(runtime, sent)
        except (BrokerConnectionError, redis.RedisError) as exc:  # sends, then the stats read
            click.echo(f"demo: Redis unavailable ({exc}); retrying in 1 s", err=True)
            time.sleep(1)
        time.sleep(interval)
    click.echo(f"demo: stopped after sending {sent} messages")
    return sent


def _print_counters(runtime: Runtime, sent: int) -> None:
    stats = runtime.queue_stats()
    parts = [f"{q}: {s['queued']} queued/{s['running']} running" for q, s in stats.items()]
    click.echo(f"demo: sent {sent} | " + " | ".join(parts))
