"""Redis Cluster slots: commands grouped so that no group crosses a slot, on one Redis or many.

Guarantees:
- `grouped(client, groups)` runs groups of commands (a function that queues them on a
  pipeline) and gives each group's replies back. On a single Redis (or Sentinel) it is one
  pipeline, one round trip, one transaction around all if asked, as before clusters. On a
  cluster it is one pipeline per group on the node that serves the group's slot (its own
  transaction if asked), so a group may hold Lua scripts and `WAIT` (which must follow the
  writes on the same connection). A group turned away because its slot moved (MOVED, ASK, a
  failover under way) did not run: it is sent again once the slot map is refreshed, up to
  `RETRIES` times, then the error is raised. A group that may have run in part is never sent
  again: its first error is raised (and the slot map refreshed for the next call).
- `node_client(client, key)`: the plain client of the node serving `key`'s slot (the client
  itself on a single Redis).
- `check_slots(named_key_lists)` raises `CrossSlotError` naming the first list whose keys
  do not share one slot: the startup check that every script's keys are a legal cluster call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, TryAgainError

from .connection import is_cluster

RETRIES = 5
RETRY_PAUSE_S = 0.25  # a manual failover takes about a second; an automatic one, the node timeout
K = TypeVar("K")
REDIRECTED = (AskError, TryAgainError, ClusterDownError)  # AskError covers MOVED


class CrossSlotError(ValueError):
    """Keys that one script or transaction takes do not share one Redis Cluster slot."""


def slot_of(key: str | bytes) -> int:
    """The cluster slot of a key (its hash tag's, when it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def check_slots(named: Iterable[tuple[str, list[str]]]) -> None:
    """Raise `CrossSlotError` for the first (what, keys) whose keys span slots."""
    for what, keys in named:
        slots = {slot_of(key) for key in keys}
        if len(slots) > 1:
            raise CrossSlotError(
                f"{what}: its keys fall in {len(slots)} Redis Cluster slots ({', '.join(keys[:3])}, ...); "
                "a queue name or namespace must not contain '{' or '}', which would change their hash tag"
            )


def node_client(client: redis.Redis, key: str) -> redis.Redis:
    """The client of the node serving `key`'s slot on a cluster; `client` itself otherwise."""
    if not is_cluster(client):
        return client
    node = client.get_node_from_key(key)  # type: ignore[attr-defined]
    node_redis: redis.Redis = client.get_redis_connection(node)  # type: ignore[attr-defined]
    return node_redis


def grouped(
    client: redis.Redis,
    groups: Mapping[K, tuple[str, Callable[[Any], None]]],
    *,
    transaction: bool = False,
) -> dict[K, list[Any]]:
    """Run each group (name -> (a key of its slot, a function queuing its commands on a
    pipeline)) and return each group's replies. See the module's guarantees."""
    if not groups:
        return {}
    if not is_cluster(client):
        pipe = client.pipeline(transaction=transaction)
        sizes = {}
        for name, (_key, queue_commands) in groups.items():
            before = len(pipe.command_stack)
            queue_commands(pipe)
            sizes[name] = len(pipe.command_stack) - before
        replies = iter(pipe.execute())
        return {name: [next(replies) for _ in range(size)] for name, size in sizes.items()}
    return {name: _on_node(client, key, queue_commands, transaction) for name, (key, queue_commands) in groups.items()}


def _on_node(client: redis.Redis, key: str, queue_commands: Callable[[Any], None], transaction: bool) -> list[Any]:
    for attempt in range(RETRIES + 1):
        pipe = node_client(client, key).pipeline(transaction=transaction)
        queue_commands(pipe)
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except REDIRECTED as exc:  # a transaction turned away: none of it ran
            error: BaseException = exc
            resend = True
            client.nodes_manager.initialize()  # type: ignore[attr-defined]
        except redis.ConnectionError:  # it may have run: the caller decides
            client.nodes_manager.initialize()  # type: ignore[attr-defined]  # for the next call
            raise
        else:
            errors = [r for r in replies if isinstance(r, BaseException)]
            if not errors:
                return replies
            # Sent again only if none of it ran: the slot moved (a failover, a resharding), so
            # its keyed commands were turned away, and nothing else succeeded either (a WAIT
            # sent to what is now a replica fails without writing). Else the first real error.
            redirected = any(isinstance(e, REDIRECTED) for e in errors)
            resend = redirected and len(errors) == len(replies)
            error = next((e for e in errors if not isinstance(e, REDIRECTED)), errors[0])
            if redirected:
                client.nodes_manager.initialize()  # type: ignore[attr-defined]  # the new slot map, for every call
        if not resend or attempt == RETRIES:
            raise error
        time.sleep(RETRY_PAUSE_S)
    raise AssertionError("unreachable")
