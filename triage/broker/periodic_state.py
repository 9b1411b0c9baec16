"""The periodic actors' records in Redis: the last tick each scheduler sent, each actor's last
run and its outcome, its last success. Written by the `Periodic` middleware (schedulers and
workers), read by `triage schedule` and the web process.

Guarantees: one hash per namespace, `{ns:periodic}` (a hash tag of its own), fields
`fired|<actor>` and `run|<actor>` (JSON) and `ok|<actor>` (unix seconds); every write is one
round trip; a reader treats a missing or unreadable record as none.
"""

from __future__ import annotations

import json
from typing import Any

import redis


def periodic_key(namespace: str) -> str:
    return f"{{{namespace}:periodic}}"


def write(client: redis.Redis, namespace: str, fields: dict[str, str]) -> None:
    """Set `fields` in one round trip (raises redis.RedisError)."""
    pipe = client.pipeline(transaction=False)
    for name, value in fields.items():
        pipe.hset(periodic_key(namespace), name, value)
    pipe.execute()


def records(client: redis.Redis, namespace: str) -> dict[str, Any]:
    """Every record, by field name (JSON decoded; `ok|` fields as floats; unreadable ones left out)."""
    raw: dict[bytes, bytes] = client.hgetall(periodic_key(namespace))  # type: ignore[assignment]
    found = {key.decode(): _decoded(key.decode(), value) for key, value in raw.items()}
    return {name: value for name, value in found.items() if value is not None}


def record(client: redis.Redis, namespace: str, name: str) -> Any:
    """One record (`fired|<actor>`, ...), decoded as `records` does; None if missing or unreadable."""
    raw: bytes | None = client.hget(periodic_key(namespace), name)  # type: ignore[assignment]
    return _decoded(name, raw) if raw is not None else None


def _decoded(name: str, value: bytes) -> Any:
    try:
        return float(value) if name.startswith("ok|") else json.loads(value)
    except ValueError:
        return None


def last_successes(client: redis.Redis, namespace: str) -> dict[str, float]:
    """Per periodic actor that ever succeeded: when its last success ended (unix seconds)."""
    return {name[3:]: at for name, at in records(client, namespace).items() if name.startswith("ok|")}
