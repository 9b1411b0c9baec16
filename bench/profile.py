"""`make profile`: where a message's time goes, producer side and worker side, on the full default stack.

- Producer: `N` single sends of a no-op, in this process under cProfile; the functions that take
  the most time per send (inclusive), in microseconds per message.
- Worker: a real `dramatiq` worker process (1 process x 8 threads) draining `N` no-ops from a fresh
  Redis, sampled by py-spy (`--gil`: only the thread holding the GIL, i.e. where Python's one core
  of the process goes); samples are grouped by what the code was doing (fetch, settle, each
  middleware's hooks, the actor, Dramatiq's own machinery, redis-py), in % of the samples.
- Redis: every command's own duration (SLOWLOG with a 0 µs threshold) during the drain, per Lua
  script and per command, in µs per message.
Writes `bench/last-profile.md`. Needs py-spy (`pip install py-spy`); the producer part runs without it.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import hashlib
import os
import pstats
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.run import BIN, ROOT, client, fresh_redis, wait_until, workers
from triage.admin.processes import children
from triage.admin.redis_server import RedisServer, free_port
from triage.broker.scripts import SCRIPT_NAMES, STANDALONE, source

# What a worker's stack frames say it is doing, first match wins (checked from the innermost frame out).
CATEGORIES = (
    ("fetch (consumer, fetch.lua call)", ("_fetch_shard (", "_fetch (")),
    ("settle (ack/nack/requeue, settle.lua call)", ("ack (", "nack (", "_settle (", "requeue (", "backlog.py")),
    ("consumer: hand out from its cache, wait", ("consumer.py", "waiting.py")),
    ("the actor", ("_probes.py",)),
    ("middleware: metrics", ("middleware/metrics.py",)),
    ("middleware: heartbeat", ("middleware/heartbeat.py",)),
    ("middleware: retries", ("middleware/retries.py",)),
    ("middleware: breakers, actor limits", ("middleware/breakers.py", "middleware/actor_limits.py", "circuit.py")),
    ("middleware: dedup, periodic", ("middleware/dedup.py", "middleware/periodic")),
    ("middleware: other Triage", ("triage/middleware/",)),
    ("Dramatiq middleware", ("dramatiq/middleware/",)),
    ("Dramatiq worker (queues, threads, dispatch)", ("dramatiq/worker.py", "dramatiq/broker.py", "dispatch.py")),
)
FETCH_COUNTS = (1, 8, 100)


def script_costs(n: int = 5000) -> list[tuple[str, float]]:
    """Redis's own time (µs) of fetch.lua per message, fetching 1, 8 or 100 at a time, and of
    settle.lua per ack, on a fresh Redis and a bare broker (INFO commandstats)."""
    from dramatiq.message import Message

    from triage.broker.redis_broker import TriageBroker

    rows = []
    with tempfile.TemporaryDirectory(prefix="triage-profile-") as tmp:
        server = RedisServer(port=free_port(), data_dir=Path(tmp), appendonly=False).start()
        r = redis.Redis.from_url(server.url)
        broker = TriageBroker(url=server.url, middleware=[])
        try:
            for count in FETCH_COUNTS:
                broker.enqueue_batch([Message("q", "job", (i,), {}, {}) for i in range(n)])
                consumer = broker.consume("q", prefetch=count, timeout=100)
                r.config_resetstat()
                got: list[Any] = []
                while len(got) < n and consumer._fetch(count):
                    got += consumer.cache
                    consumer.cache.clear()
                fetch_us = r.info("commandstats")["cmdstat_evalsha"]["usec"] / n
                r.config_resetstat()
                for message in got:
                    consumer.ack(message)
                settle_us = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
                rows += [
                    (f"fetch.lua, {count} per call, per message", fetch_us),
                    (f"settle.lua (ack), after fetches of {count}", settle_us),
                ]
        finally:
            broker.close()
            r.close()
            server.stop()
    return rows


def producer_profile(n: int) -> list[tuple[str, float]]:
    """The top functions of `n` single sends (inclusive µs per send), on a fresh Redis."""
    with tempfile.TemporaryDirectory(prefix="triage-profile-") as tmp:
        server = RedisServer(port=free_port(), data_dir=Path(tmp), appendonly=False).start()
        os.environ["REDIS_URL"] = server.url
        try:
            import bench.triage_app as app  # installs Triage on that Redis

            for _ in range(200):  # warm: scripts loaded, queue registered
                app.send(app.noop)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(n):
                app.send(app.noop)
            profiler.disable()
        finally:
            server.stop()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        rows.append((f"{where}:{name}", ct / n * 1e6))
    rows.sort(key=lambda row: -row[1])
    return rows[:25]


def category(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for label, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return label
    if any("redis/" in frame for frame in frames):
        return "redis-py"
    return "other"


def worker_profile(n: int, seconds: float) -> tuple[dict[str, float], dict[str, float], float, int]:
    """py-spy samples of one worker process by category (%), Redis µs per message by command or script,
    the drain rate, and the messages drained while sampled."""
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    names = {_sha(name): name for name in (*SCRIPT_NAMES, *STANDALONE)}
    with fresh_redis() as (env, r), tempfile.TemporaryDirectory(prefix="triage-profile-") as tmp:
        client("triage", env, "prefill_noop", n)
        key = "{triage:bench}:msgs"
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 1_000_000)
        r.slowlog_reset()
        raw = Path(tmp) / "stacks.txt"
        with workers("triage", env, ["bench"], 1) as master:
            (child,) = children(master)
            left = r.hlen(key)
            started = time.perf_counter()
            subprocess.run(
                [spy, "record", "--pid", str(child), "--duration", str(int(seconds)), "--rate", "200",
                 "--gil", "--nonblocking", "--format", "raw", "--output", str(raw)],
                check=True, capture_output=True, timeout=seconds + 60,
            )  # fmt: skip
            drained = left - r.hlen(key)
            rate = drained / (time.perf_counter() - started)
            wait_until(lambda: r.hlen(key) == 0, 600)
        entries: Any = r.slowlog_get(1_000_000)
        samples: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples[category(stack)] += int(count)
    total = sum(samples.values()) or 1
    by_category = {label: 100 * count / total for label, count in samples.most_common()}
    usec: collections.Counter[str] = collections.Counter()
    for entry in entries:
        raw_command = entry["command"]
        text = raw_command.decode(errors="replace") if isinstance(raw_command, bytes) else str(raw_command)
        command = text.split()
        head = command[0].upper() if command else "?"
        if head == "EVALSHA" and len(command) > 1:
            head = f"{names.get(command[1], command[1][:8])}.lua"
        usec[head] += int(entry["duration"])
    drained_total = n
    per_message = {name: micros / drained_total for name, micros in usec.most_common(12)}
    return by_category, per_message, rate, drained


def _sha(name: str) -> str:
    """The SHA1 Redis names a script by (EVALSHA), not a security hash."""
    return hashlib.sha1(source(name).encode(), usedforsecurity=False).hexdigest()


def section(title: str, header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    """A titled two-column Markdown table."""
    return ["", title, "", f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    lines = [f"Profile of the full default stack, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores.", ""]
    lines += [
        "Producer: single sends of a no-op, cProfile (inclusive time per send; cProfile slows",
        "every call, so read the shares, not the totals).",
        "",
        "| function | µs per send |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {micros:.1f} |" for name, micros in producer_profile(options.messages // 3)]
    by_category, per_message, rate, drained = worker_profile(options.messages, options.seconds)
    lines += section(
        f"Worker: 1 process x 8 threads draining no-ops ({rate:,.0f} msg/s while sampled, {drained:,} messages),"
        " py-spy `--gil` samples:",
        ("the GIL holder was in", "share"),
        [(label, f"{share:.1f} %") for label, share in by_category.items()],
    )
    lines += section(
        "Redis: each command's own time during the drain (SLOWLOG, threshold 0), per message drained:",
        ("command or script", "µs per message"),
        [(name, f"{micros:.1f}") for name, micros in per_message.items()],
    )
    lines += section(
        "The two scripts of every message alone (a bare broker, no other load; INFO commandstats):",
        ("script", "µs"),
        [(name, f"{micros:.1f}") for name, micros in script_costs()],
    )
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "last-profile.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
