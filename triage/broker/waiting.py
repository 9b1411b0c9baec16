"""How an idle consumer waits: for a wake-up token, the next due time, or its timeout.

Guarantees:
- One shard (`wait_one`): the consumer blocks on its queue's wake-up list (BLPOP) instead of
  polling; an enqueue, a resume or a requeue wakes it within a round trip. It wakes on time
  for a delayed message or a retry by its own clock, not Redis's: Redis ends a blocked call's
  timeout only on its server tick (every 1000/hz ms: 100 ms at the default `hz 10`), so a BLPOP
  asked to wait 20 ms can return 190 ms later. It blocks only until one tick and
  `TICK_MARGIN_S` before the due time (the server's `hz` is read once; the default when CONFIG
  is refused); for the rest it checks the wake-up list without blocking every `POLL_S` (a new
  message still wakes it within that) and returns at the due time. That stretch is the only
  polling, only while a delayed message falls due within it.
- Several shards (`ShardWaker`): one thread per shard blocks on that shard's wake-up list (on
  a cluster the lists live in different slots, and one BLPOP may not name two), only while its
  consumer is idle, and sets one event; the consumer waits on the event with its own timeout,
  so it wakes on time by its own clock. A token taken by a waker whose consumer has just found
  work wakes that consumer once for nothing; the threads stop when the consumer closes.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis

from .errors import CONNECTION_ERRORS

TICK_MARGIN_S = 0.05  # how late Redis's tick can come under load, beyond 1/hz
POLL_S = 0.01
RECONNECT_S = 0.5  # a waker that lost Redis tries again after this

_TICKS: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def server_tick_s(client: redis.Redis) -> float:
    """Redis's server tick, 1/hz seconds, read once per client (0.1 s, the default, when CONFIG
    GET is refused, as managed services may, or fails)."""
    if client not in _TICKS:
        try:
            config: Any = client.config_get("hz")
            hz = int(config.get("hz") or config.get(b"hz") or 10)
        except (redis.RedisError, OSError, ValueError, AttributeError):
            hz = 10
        _TICKS[client] = 1 / max(1, hz)
    return _TICKS[client]


def client_socket_timeout(client: redis.Redis) -> float | None:
    """The client's socket timeout (a cluster client's, from its nodes' settings): a blocking
    wait must end before it."""
    pool = getattr(client, "connection_pool", None)
    holder = pool if pool is not None else getattr(client, "nodes_manager", None)
    kwargs: dict[str, Any] = getattr(holder, "connection_kwargs", {})
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else None


def wait_one(client: redis.Redis, wake: str, *, wait: float, due_in: float, stretch: float) -> None:
    """Wait on one wake-up list for up to `wait` s, returning on time for something due in `due_in` s."""
    if due_in > wait:  # the timeout or a parked tenant comes first: Redis's tick will do
        client.blpop([wake], timeout=wait)
        return
    if due_in > stretch:  # block until shortly before it is due; a token wakes it sooner
        started = time.monotonic()
        if client.blpop([wake], timeout=due_in - stretch) is not None:
            return
        due_in -= time.monotonic() - started
    deadline = time.monotonic() + max(0.001, due_in)
    while (left := deadline - time.monotonic()) > 0:
        if client.lpop(wake) is not None:
            return
        time.sleep(min(POLL_S, left))


class ShardWaker:
    """Threads that block on several wake-up lists while their consumer is idle (see above)."""

    def __init__(self, client: redis.Redis, wakes: Sequence[str], timeout: float, name: str) -> None:
        self.client, self.timeout = client, timeout
        self.woken = threading.Event()
        self.idle = threading.Event()
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(wake,), name=f"{name}-waker-{i}", daemon=True)
            for i, wake in enumerate(wakes)
        ]
        for thread in self.threads:
            thread.start()

    def wait(self, seconds: float) -> None:
        """Block until a token arrives on any list, or `seconds` pass."""
        self.idle.set()
        try:
            self.woken.wait(max(0.0, seconds))
        finally:
            self.idle.clear()
            self.woken.clear()

    def _run(self, wake: str) -> None:
        while not self.stopped.is_set():
            if not self.idle.wait(self.timeout):
                continue
            try:
                if self.client.blpop([wake], timeout=self.timeout) is not None:
                    self.woken.set()
            except CONNECTION_ERRORS:
                self.woken.set()  # the consumer's own calls will meet the outage and report it
                self.stopped.wait(RECONNECT_S)

    def stop(self) -> None:
        self.stopped.set()
