"""One producer command against one app, in its own process: `python -m bench.client APP COMMAND ...`.

Prints one JSON object. Commands:
  enqueue N         single sends of no-op messages; rate in msg/s
  enqueue_dedup N   single sends of no-op messages, each with a dedup key of its own (Triage only)
  enqueue_periodic N   single sends of a per-minute job's ticks, one tick each, as periodiq does (Triage only)
  enqueue_bg N      single sends of background messages (each asks load shedding); rate in msg/s
  batch N           batches of 1000 (Triage's enqueue_batch; stock sends one by one)
  prefill_noop N    N no-op messages on `bench`
  prefill_redis_call N   N messages on `bench` whose actor makes one Redis call
  prefill_noop_breaker N   N no-op messages behind a closed circuit breaker (Triage only)
  prefill_noop_rate_limited N   N no-op messages of an actor with a (never binding) rate limit (Triage only)
  prefill_bg N MS   N background messages of MS ms each
  prefill_tenant N MS   N messages of tenant A (MS ms each) on `bench`
  probes COUNT RATE     COUNT critical probes at RATE per second
  tenant_b COUNT        COUNT messages of tenant B, at once
  prefill_delayed N     N no-op messages delayed by one hour
  prefill_fails_once N  N messages on `bench` whose first run fails (their retry succeeds)
  prefill_flood N MS    N messages of tenant A (MS ms each) that record their start (Triage only)
  tenants_paced S RATE  tenants B, C, D, E each send RATE messages/s for S seconds
  late_probes COUNT DELAY   COUNT messages delayed DELAY ms, one at a time (each after the last ran)
  retry_probes COUNT DELAY  COUNT messages whose first run asks Retry(delay=DELAY), one at a time
  steady S RATE         no-op messages at RATE per second for S seconds (a steady load)
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any


def main(argv: list[str]) -> dict[str, Any]:
    app: Any = importlib.import_module(f"bench.{argv[0]}_app")
    command, args = argv[1], [float(a) for a in argv[2:]]
    started = time.perf_counter()
    if command == "enqueue":
        for _ in range(int(args[0])):
            app.send(app.noop)
    elif command == "enqueue_dedup":
        run = time.time_ns()  # keys of this run only: every send is stored, none is a duplicate
        for i in range(int(args[0])):
            app.noop.send_with_options(dedup_key=f"bench:{run}:{i}", dedup_ttl=600)
    elif command == "enqueue_periodic":
        first = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=int(args[0]))
        for i in range(int(args[0])):  # distinct ticks: every send is stored
            app.noop_periodic.send_with_options(scheduled_at=(first + timedelta(minutes=i)).isoformat())
    elif command == "enqueue_bg":
        for _ in range(int(args[0])):
            app.send(app.background_work, 0.0)
    elif command == "batch" or command == "prefill_noop":
        app.send_many(app.noop, [() for _ in range(int(args[0]))])
    elif command == "prefill_redis_call":
        app.send_many(app.redis_call, [() for _ in range(int(args[0]))])
    elif command == "prefill_noop_breaker":
        app.send_many(app.noop_breaker, [() for _ in range(int(args[0]))])
    elif command == "prefill_noop_rate_limited":
        app.send_many(app.noop_rate_limited, [() for _ in range(int(args[0]))])
    elif command == "prefill_bg":
        app.send_many(app.background_work, [(args[1],) for _ in range(int(args[0]))])
    elif command == "prefill_tenant":
        app.send_many(app.tenant_job, [(0.0, "", args[1]) for _ in range(int(args[0]))], tenant="A")
    elif command == "probes":
        count, rate = int(args[0]), args[1]
        for i in range(count):
            next_at = started + i / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
            app.send(app.critical_probe, time.time())
    elif command == "tenant_b":
        for _ in range(int(args[0])):
            app.send(app.tenant_job, time.time(), "tenant_b", 0.0, tenant="B")
    elif command == "prefill_fails_once":
        app.send_many(app.fails_once, [(i,) for i in range(int(args[0]))])
    elif command == "prefill_flood":
        app.send_many(app.tenant_flood, [(args[1],) for _ in range(int(args[0]))], tenant="A")
    elif command == "tenants_paced":
        seconds, rate = args[0], args[1]
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            while sent < elapsed * rate:
                for tenant in "BCDE":
                    app.send(app.tenant_job, time.time(), f"tenant_{tenant}", 2.0, tenant=tenant)
                sent += 1
            time.sleep(0.005)
        args = [float(sent * 4)]
    elif command in ("late_probes", "retry_probes"):
        count, delay = int(args[0]), int(args[1])
        label = f"{command}:{delay}"
        for i in range(count):
            if command == "late_probes":
                app.send(app.late_probe, time.time() + delay / 1000, label, delay=delay)
            else:
                app.send(app.retry_probe, f"{started}:{i}", delay, label)
            time.sleep(delay / 1000 + 0.1 + (i % 5) * 0.013)  # the last one has run: the worker is idle again
    elif command == "steady":
        seconds, rate = args[0], args[1]
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            while sent < elapsed * rate:
                app.send(app.noop)
                sent += 1
            time.sleep(0.002)
        args = [float(sent)]
    elif command == "prefill_delayed":
        app.send_many(app.noop, [() for _ in range(int(args[0]))], delay=3_600_000)
    else:
        raise SystemExit(f"unknown command {command!r}")
    elapsed = time.perf_counter() - started
    count = int(args[0]) if args else 0
    return {"seconds": elapsed, "rate": count / elapsed if elapsed else 0.0}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
