"""Actors for the dashboard tests, doing what real actors do: each run writes to Redis. A
"gateway" switch in Redis makes `t_dash_sms` fail (no retries: straight to the dead letters)
until an operator clears it."""

from __future__ import annotations

import os

import redis

from actors import default

QUEUE = "t_dash"
LEDGER = "test:dashboard:ledger"
GATEWAY_DOWN = "test:dashboard:gateway-down"

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _client


@default(queue=QUEUE)
def t_dash_report(n: int) -> None:
    client().rpush(LEDGER, f"report:{n}")


@default(queue=QUEUE, max_retries=0)
def t_dash_sms(n: int, phone: str) -> None:
    if client().exists(GATEWAY_DOWN):
        raise ConnectionError("the SMS gateway refused the connection")
    client().rpush(LEDGER, f"sms:{n}")
