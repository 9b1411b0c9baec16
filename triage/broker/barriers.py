"""The rate-limiter backend of Dramatiq's group callbacks, safe on Redis Cluster.

Guarantees: Dramatiq's Redis backend as it is, but for `incr` and `decr` (the barrier that
fires a group's completion callbacks once), which are one Lua call on one key (`lua/counter.lua`)
instead of a WATCH/MULTI transaction that redis-py's cluster pipelines refuse. Same results:
the counter moves by `amount` unless it would pass the bound, and the call says which.
"""

from __future__ import annotations

import redis
from dramatiq.rate_limits.backends import RedisBackend

from .scripts import load


class BarrierBackend(RedisBackend):  # type: ignore[misc]
    def __init__(self, *, client: redis.Redis) -> None:
        super().__init__(client=client)
        self._counter = load(client, "counter")

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        return bool(self._counter(keys=[key], args=[amount, maximum, "max", ttl]))

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        return bool(self._counter(keys=[key], args=[-amount, minimum, "min", ttl]))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.client!r}>"
