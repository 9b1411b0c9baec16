"""Storing placed messages with the enqueue script: once per send or batch on one Redis, once per
slot on a Redis Cluster.

Guarantees:
- One Redis (or Sentinel): every message of a send or a batch, over any queues and shards, is
  stored by one script call: all or none; a tenant refused by admission means nothing is stored.
- Redis Cluster: a script call touches one slot, so a batch over several slots (queues, or
  shards of one queue) is stored one slot at a time, each step all-or-none, in the order of the
  batch's first message for that slot. So that a batch interrupted between two steps (a lost
  connection, a refusal by admission in a later slot) can be sent again without storing a
  message twice, each message of such a batch that has no dedup key of its own takes a window
  key on its message id (`BATCH_KEY_PREFIX` + message_id, held `BATCH_KEY_TTL_MS`): the batch
  sent again stores only what is missing. A refusal raises `Backpressure`; its `stored` lists
  the message ids that earlier steps stored.
- Durable enqueue (`min_replicas`): `WAIT` right after each script call on the same connection
  (on a cluster, the connection to the slot's primary); `ReplicationError` if fewer replicas
  confirmed in time.
- A connection error raises Dramatiq's `ConnectionClosed`: what was sent may or may not be stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import redis
from redis.commands.core import Script

from .connection import is_cluster
from .errors import CONNECTION_ERRORS, Backpressure, ReplicationError, connection_lost
from .keys import QueueKeys
from .limits import Limits, refusal
from .outcome import Placed
from .slots import grouped
from .text import as_text

BATCH_KEY_PREFIX = "triage.batch:"
BATCH_KEY_TTL_MS = 3_600_000


class Group:
    """The messages of one send that go to one queue shard (one slot)."""

    def __init__(self, keys: QueueKeys, admission: list[int]) -> None:
        self.keys, self.admission = keys, admission
        self.fields: list[Any] = []
        self.members: list[int] = []  # index in the send's `placed` of each message, in order


def group(
    placed: Sequence[Placed], keys_of: Callable[[Placed], QueueKeys], admission: Callable[[str], list[int]]
) -> list[Group]:
    """The send's messages by queue shard, in order of first appearance."""
    groups: dict[tuple[str, int], Group] = {}
    for i, p in enumerate(placed):
        where = (p.message.queue_name, p.shard)
        g = groups.get(where)
        if g is None:
            keys = keys_of(p)
            g = groups[where] = Group(keys, admission(keys.queue))
        g.fields.extend(p.fields())
        g.members.append(i)
    return list(groups.values())


def with_batch_keys(placed: Sequence[Placed]) -> list[Placed]:
    """The messages, each without a dedup key of its own given a window key on its message id."""
    return [
        p
        if p.dedup_key
        else p._replace(
            dedup_key=BATCH_KEY_PREFIX + p.message.message_id, dedup_mode="w", dedup_ttl_ms=BATCH_KEY_TTL_MS
        )
        for p in placed
    ]


class Storer:
    """Runs the enqueue script for a broker's sends (see the module's guarantees)."""

    def __init__(
        self,
        client: redis.Redis,
        script: Script,
        tenant_limits: Callable[[str], tuple[Limits, dict[str, Limits]]],
        min_replicas: int,
        replica_timeout_ms: int,
    ) -> None:
        self.client, self.script, self.tenant_limits = client, script, tenant_limits
        self.min_replicas, self.replica_timeout_ms = min_replicas, replica_timeout_ms
        self.cluster = is_cluster(client)

    def store(self, groups: list[Group], placed: Sequence[Placed], now: int) -> dict[int, str]:
        """Store the groups; the duplicates (index in `placed` -> the holder's message_id), not stored."""
        if not self.cluster or len(groups) == 1:
            return self._step(groups, placed, now)
        duplicates: dict[int, str] = {}
        stored: list[str] = []
        for g in groups:
            try:
                duplicates.update(self._step([g], placed, now))
            except Backpressure as exc:
                exc.stored = stored
                raise
            stored += [placed[i].message.message_id for i in g.members if i not in duplicates]
        return duplicates

    def _step(self, groups: list[Group], placed: Sequence[Placed], now: int) -> dict[int, str]:
        keys: list[str] = []
        for g in groups:
            keys += g.keys.enqueue_keys()
        # Lua's cmsgpack reads byte strings as msgpack "raw": no bin type.
        args = [
            now,
            msgpack.packb([g.fields for g in groups], use_bin_type=False),
            msgpack.packb([g.admission for g in groups]),
        ]
        try:
            if not self.min_replicas:
                return self._stored(self.script(keys=keys, args=args), groups, placed)

            def commands(pipe: Any) -> None:
                self.script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)

            reply, confirmed = grouped(self.client, {0: (keys[0], commands)})[0]
        except CONNECTION_ERRORS as exc:
            raise connection_lost(exc) from None
        duplicates = self._stored(reply, groups, placed)
        if confirmed < self.min_replicas:
            raise ReplicationError(len(placed), int(confirmed), self.min_replicas, self.replica_timeout_ms)
        return duplicates

    def _stored(self, reply: list[Any], groups: list[Group], placed: Sequence[Placed]) -> dict[int, str]:
        """The duplicates of the script's reply; `Backpressure` if it refused a tenant (it then
        stored nothing)."""
        if as_text(reply[0]) == "refused":
            g = groups[int(reply[2]) - 1]
            raise refusal(reply[1:], g.keys.queue, g.fields, self.tenant_limits)
        duplicates = {}
        for at in range(2, len(reply), 3):
            index, holder = groups[int(reply[at]) - 1].members[int(reply[at + 1]) - 1], as_text(reply[at + 2])
            if holder != placed[index].message.message_id:  # else: sent again after a lost reply, stored already
                duplicates[index] = holder
        return duplicates
