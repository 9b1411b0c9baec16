"""The demo: its own actors on each tier, and a producer that sends them a realistic mix.

Guarantees:
- `declare_demo_actors()` declares the demo's actors (simulated work, names `demo.*`) on the
  installed runtime, once per process; importing this module declares nothing. The
  service's workers call it when `TRIAGE_DEMO=1` (`triage run` sets it); the actors depend
  on nothing of the service, so the demo keeps working when the examples are replaced.
- `produce()` sends at about `rate` messages per second (orders and payments on critical,
  notifications on default, analytics events and bursts of report exports per tenant on
  background), prints the queue counters every 5 seconds, keeps going through a Redis
  outage (it says so and retries), and stops cleanly on Ctrl-C or SIGTERM.
Failure mode: sent to workers that did not declare the demo actors, the messages are
dead-lettered as `unknown-actor` (visible in `triage stats`), never lost silently.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from types import FrameType
from typing import Any, NamedTuple

import click
import redis
from dramatiq import Actor
from dramatiq.errors import BrokerConnectionError

from triage.decorators import background, critical, default

from .ops import Admin

ORGS = ("acme", "globex", "initech", "umbrella", "hooli")


class DemoActors(NamedTuple):
    place_order: Actor[[str, int], None]
    charge_payment: Actor[[str, int], None]
    notify: Actor[[int, str], None]
    track_event: Actor[[str, str], None]
    export_report: Actor[[str, str], None]


_declared: DemoActors | None = None


def _work(min_ms: float, max_ms: float) -> None:
    time.sleep(random.uniform(min_ms, max_ms) / 1000)


def declare_demo_actors() -> DemoActors:
    """Declare the demo's actors on the installed runtime (once per process) and return them."""
    global _declared
    if _declared is not None:
        return _declared

    @critical(actor_name="demo.place_order")
    def place_order(order_id: str, lines: int) -> None:
        _work(2, 8)

    @critical(actor_name="demo.charge_payment")
    def charge_payment(order_id: str, amount_cents: int) -> None:
        _work(5, 20)

    @default(actor_name="demo.notify")
    def notify(chat_id: int, text: str) -> None:
        _work(10, 30)

    @background(actor_name="demo.track_event", tenant_arg="org_id")
    def track_event(org_id: str, name: str) -> None:
        _work(1, 5)

    @background(actor_name="demo.export_report", tenant_arg="org_id", priority=1)
    def export_report(org_id: str, report_id: str) -> None:
        _work(200, 800)

    _declared = DemoActors(place_order, charge_payment, notify, track_event, export_report)
    return _declared


def _send_one(actors: DemoActors) -> None:
    org = random.choice(ORGS)
    roll = random.random()
    if roll < 0.15:
        actors.place_order.send(uuid.uuid4().hex[:12], random.randint(1, 3))
    elif roll < 0.25:
        actors.charge_payment.send(uuid.uuid4().hex[:12], random.randint(500, 50_000))
    elif roll < 0.55:
        actors.notify.send(random.randint(1000, 9999), "Your order has shipped")
    else:
        actors.track_event.send(org, "page_view")


def _report_burst(actors: DemoActors, size: int) -> None:
    org = random.choice(ORGS)
    for _ in range(size):
        actors.export_report.send(org, uuid.uuid4().hex[:8])


def produce(*, rate: float, duration: float = 0.0) -> int:
    """Send work until interrupted (or for `duration` seconds); return how many messages were sent."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> Any:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    actors = declare_demo_actors()
    admin = Admin()
    interval = 1.0 / rate if rate > 0 else 1.0
    started = last_report = last_burst = time.monotonic()
    sent = 0
    click.echo(f"demo: sending ~{rate:g} msg/s to {admin.settings.redis_url_redacted}; Ctrl-C stops")
    while not stopping and not (duration and time.monotonic() - started >= duration):
        now = time.monotonic()
        try:
            _send_one(actors)
            sent += 1
            if now - last_burst >= 15:
                _report_burst(actors, 20)
                sent += 20
                last_burst = now
            if now - last_report >= 5:
                last_report = now
                _print_counters(admin, sent)
        except (BrokerConnectionError, redis.RedisError) as exc:  # sends, then the stats read
            click.echo(f"demo: Redis unavailable ({exc}); retrying in 1 s", err=True)
            time.sleep(1)
        time.sleep(interval)
    click.echo(f"demo: stopped after sending {sent} messages")
    return sent


def _print_counters(admin: Admin, sent: int) -> None:
    parts = [f"{q}: {s['queued']} queued/{s['running']} running" for q, s in admin.stats().items()]
    click.echo(f"demo: sent {sent} | " + " | ".join(parts))
