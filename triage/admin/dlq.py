"""Dead letters, for operators: browse, group, show, requeue and purge, from Redis alone.

Guarantees:
- Reads change nothing. A page of `list` reads index ranges (`{ns:Q}:dead.idx`, see the
  broker's `_dead.lua`) and the records of that page: O(log n + page) per queue, whatever
  the number of dead letters, when filtering by one of actor, error type, tenant or reason.
  Further filters are applied to the records read, so a page may take a few reads. The
  summary walks the index from group to group: O(groups x log n).
- Newest first; a page ends with a cursor (`time-id`) from which the next page starts:
  entries dead-lettered meanwhile do not shift the pages.
- `requeue` moves each entry in one script call (`dlq.lua`): the entry leaves the dead
  letters in the call that enqueues its message, so nothing is lost; two operators
  requeueing the same entries enqueue each once (the second finds it gone); a requeue
  interrupted (Ctrl-C, a crash) can be run again and takes what is left. The message is
  the dead one with its attempts reset, its priority and tenant kept, `requeued_from` set
  to the dead letter's id, and a new id in Redis.
- A sharded queue's dead letters live in the shard where each died; they are listed, grouped
  and counted as one queue's, and requeued into the shard they came from (one slot per call).
- An entry whose message cannot be decoded (reason `undecodable`) is not requeued: it is
  counted as skipped and left in place; `purge` removes it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

from triage.broker.delivery import envelope_error
from triage.broker.keys import QueueKeys
from triage.broker.priority import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from triage.broker.redis_broker import TriageBroker
from triage.broker.slots import grouped

from .dlq_model import EVERYTHING, ActionResult, DeadLetter, Filter, Group, record_from

SEP = b"\0"
TOP = b"\xff"
INDEX_CHUNK = 5000
ACTION_CHUNK = 200
RESET_OPTIONS = ("retries", "triage_first_failure_ms", "triage_deliveries", "redis_message_id")


class DeadLetters:
    """The dead letters of every queue `queues()` knows (name -> tier), through `broker`."""

    def __init__(self, broker: TriageBroker, queues: Callable[[], dict[str, str]]) -> None:
        self.broker = broker
        self.queues = queues

    # -- reading -------------------------------------------------------------------------

    def page(
        self, where: Filter = EVERYTHING, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """A page of dead letters, newest first, and the cursor of the next page (None: no more)."""
        found: list[DeadLetter] = []
        for queue, tier in self._queues(where).items():
            for shard in range(len(self.broker.shards(queue))):
                found += self._page(queue, tier, shard, where, limit + 1, cursor)
        found.sort(key=lambda e: (e.dead_lettered_at_ms, e.id), reverse=True)
        page = found[:limit]
        return page, (page[-1].cursor if len(found) > limit else None)

    def matching(self, where: Filter) -> Iterator[DeadLetter]:
        """Every dead letter that matches, newest first (page by page), without its traceback
        (a requeue or purge of 100,000 entries needs their ids, not their tracebacks)."""
        cursor: str | None = None
        while True:
            page, cursor = self.page(where, limit=500, cursor=cursor)
            yield from (replace(entry, traceback="", error_message=entry.error_message[:200]) for entry in page)
            if cursor is None:
                return

    def show(self, redis_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter with its decoded message (args, kwargs, options), or None."""
        queues = self.queues()
        places = [(name, shard, keys) for name in ([queue] if queue else queues) for shard, keys in self._shards(name)]
        pipe = self.broker.client.pipeline(transaction=False)
        for _name, _shard, keys in places:
            pipe.hget(keys.dead_info, redis_id)
            pipe.hget(keys.dead_msgs, redis_id)
        replies = pipe.execute()
        for index, (name, shard, _keys) in enumerate(places):
            raw, payload = replies[2 * index], replies[2 * index + 1]
            if raw is not None:
                entry = record_from(name, queues.get(name, ""), redis_id, raw)
                decoded = self._decode(payload)
                message = decoded if decoded is not None else {"undecodable": True}
                return DeadLetter(**{**asdict(entry), "message": message, "shard": shard})
        return None

    def summary(self, where: Filter = EVERYTHING) -> list[Group]:
        """Dead letters grouped by (queue, actor, error type, reason), most numerous first.

        Walks the group index from one group to the next, then counts each group's entries in
        the time window and reads its first and last: O(groups x log n), whatever the number of
        dead letters. A tenant filter is refused (the groups do not record tenants: `page`
        filters by tenant)."""
        if where.tenant is not None:
            raise ValueError(
                "the summary groups by actor, error type and reason, not by tenant; list by tenant instead"
            )
        rows: dict[tuple[str, str, str, str], Group] = {}
        for queue, _shard, keys in ((q, s, k) for q in self._queues(where) for s, k in self._shards(q)):
            self._ensure_indexed(keys)
            key = keys.dead_idx
            wanted: list[tuple[bytes, tuple[str, str, str]]] = []
            for value in self._group_values(key):
                actor, error, reason = (part.decode(errors="replace") for part in value.split(b"\x01"))
                if (
                    (where.actor is None or actor == where.actor)
                    and (where.error is None or error == where.error)
                    and (where.reason is None or reason == where.reason)
                ):
                    wanted.append((value, (actor, error, reason)))
            since = f"{where.since_ms:013d}".encode() if where.since_ms else b""
            pipe = self.broker.client.pipeline(transaction=True)
            for value, _ in wanted:
                lower, upper = b"[g" + SEP + value + SEP + since, b"[g" + SEP + value + SEP + TOP
                pipe.zlexcount(key, lower, upper)
                pipe.zrangebylex(key, lower, upper, start=0, num=1)
                pipe.zrevrangebylex(key, upper, lower, start=0, num=1)
            replies = pipe.execute()
            for index, (_value, (actor, error, reason)) in enumerate(wanted):
                count, first, last = replies[3 * index : 3 * index + 3]
                if count:
                    first_ms, last_ms = _split(first[0], b"g", b"")[1], _split(last[0], b"g", b"")[1]
                    seen = rows.get((queue, actor, error, reason))
                    if seen is not None:  # the same group in another shard of the queue
                        count, first_ms, last_ms = (
                            count + seen.count,
                            min(first_ms, seen.first_ms),
                            max(last_ms, seen.last_ms),
                        )
                    group = Group(queue, actor, error, reason, count=count, first_ms=first_ms, last_ms=last_ms)
                    rows[(queue, actor, error, reason)] = group
        return sorted(rows.values(), key=lambda g: (-g.count, g.queue, g.actor, g.error_type, g.reason))

    def _group_values(self, key: str) -> Iterator[bytes]:
        """The distinct groups (actor \x01 error type \x01 reason) of a queue's index, one call each."""
        lower, upper = b"[g" + SEP, b"[g" + SEP + TOP
        while True:
            found: list[bytes] = self.broker.client.zrangebylex(key, lower, upper, start=0, num=1)  # type: ignore[assignment]
            if not found:
                return
            value = _split(found[0], b"g", b"")[0]
            yield value
            lower = b"(g" + SEP + value + SEP + TOP  # past every member of this group

    def select(
        self, ids: Sequence[str], everything: bool, where: Filter, *, limit: int | None = None
    ) -> list[DeadLetter]:
        """The entries an action names: the `ids` (each must exist: LookupError), or those matching
        `where` (every one with `everything`), newest first, at most `limit`. Naming none, or
        ids together with filters, is a ValueError: an action never defaults to everything."""
        if ids and (everything or not where.is_empty()):
            raise ValueError("give entry ids, or all, or filters: not both")
        if not ids and not everything and where.is_empty():
            raise ValueError("say which dead letters: entry ids, all, or filters (queue, actor, error, ...)")
        if ids:
            found = [self.show(i, where.queue) for i in ids]
            missing = [i for i, e in zip(ids, found, strict=True) if e is None]
            if missing:
                raise LookupError(f"no dead letter {', '.join(missing)}")
            return [e for e in found if e is not None]
        return list(itertools.islice(self.matching(where), limit))

    # -- acting --------------------------------------------------------------------------

    def requeue(
        self,
        entries: Sequence[DeadLetter],
        *,
        rate: float | None = None,
        progress: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult:
        """Put the entries' messages back on their queues, at most `rate` per second."""
        result = ActionResult(matched=len(entries))
        started = time.monotonic()
        for chunk in _chunks(entries, max(1, min(ACTION_CHUNK, int(rate or ACTION_CHUNK)))):
            calls: list[tuple[DeadLetter, list[Any]]] = []
            payloads = self._payloads(chunk)
            for entry, payload in zip(chunk, payloads, strict=True):
                if payload is False:  # gone since it was listed: requeued or purged by someone else
                    result.gone += 1
                    continue
                prepared = self._prepare(entry, payload) if isinstance(payload, bytes) else None
                if prepared is None:
                    result.skipped.append(entry.id)
                    continue
                new_id, encoded, level, tenant, max_deliveries = prepared
                calls.append((entry, ["requeue", entry.id, new_id, encoded, level, tenant, max_deliveries]))
            for moved in self._run_dlq(calls):
                result.done += int(moved)
                result.gone += 1 - int(moved)
            if progress is not None:
                progress(result)
            if rate:
                ahead = (result.done + result.gone) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        return result

    def purge(
        self, entries: Sequence[DeadLetter], *, progress: Callable[[ActionResult], None] | None = None
    ) -> ActionResult:
        result = ActionResult(matched=len(entries))
        for chunk in _chunks(entries, ACTION_CHUNK):
            for removed in self._run_dlq([(entry, ["purge", entry.id]) for entry in chunk]):
                result.done += int(removed)
                result.gone += 1 - int(removed)
            if progress is not None:
                progress(result)
        return result

    # -- internals -----------------------------------------------------------------------

    def _shards(self, queue: str) -> list[tuple[int, QueueKeys]]:
        return list(enumerate(self.broker.shards(queue)))

    def _keys(self, entry: DeadLetter) -> QueueKeys:
        return self.broker.shards(entry.queue)[entry.shard]

    def _run_dlq(self, calls: Sequence[tuple[DeadLetter, list[Any]]]) -> list[Any]:
        """dlq.lua for each (entry, args), pipelined per shard (one slot each); replies in order."""
        by_tag: dict[str, list[int]] = {}
        for index, (entry, _args) in enumerate(calls):
            by_tag.setdefault(self._keys(entry).tag, []).append(index)

        def commands(indexes: list[int]) -> Callable[[Any], None]:
            def queue_commands(pipe: Any) -> None:
                for index in indexes:
                    entry, args = calls[index]
                    self.broker.scripts["dlq"](keys=self._keys(entry).dead_letter_keys(), args=args, client=pipe)

            return queue_commands

        replies = grouped(self.broker.client, {tag: (tag, commands(ix)) for tag, ix in by_tag.items()})
        ordered: list[Any] = [None] * len(calls)
        for tag, indexes in by_tag.items():
            for index, reply in zip(indexes, replies[tag], strict=True):
                ordered[index] = reply
        return ordered

    def _queues(self, where: Filter) -> dict[str, str]:
        queues = self.queues()
        if where.queue is not None:
            return {where.queue: queues.get(where.queue, "")}
        return queues

    def _page(
        self, queue: str, tier: str, shard: int, where: Filter, want: int, cursor: str | None
    ) -> list[DeadLetter]:
        """Up to `want` matching entries of one queue shard, newest first, older than `cursor`."""
        keys = self.broker.shards(queue)[shard]
        self._ensure_indexed(keys)
        dim, value = where.index()
        prefix = dim + SEP + value + SEP
        upper = b"[" + prefix + TOP
        if cursor:
            at, _, redis_id = cursor.partition("-")
            upper = b"(" + prefix + at.encode() + SEP + redis_id.encode()
        lower = b"[" + prefix + (f"{where.since_ms:013d}".encode() if where.since_ms else b"")
        out: list[DeadLetter] = []
        while len(out) < want:
            members: list[bytes] = self.broker.client.zrevrangebylex(  # type: ignore[assignment]
                keys.dead_idx, upper, lower, start=0, num=max(want * 2, 50)
            )
            if not members:
                break
            ids = [member.rpartition(SEP)[2].decode() for member in members]
            records: list[Any] = self.broker.client.hmget(keys.dead_info, ids)
            for redis_id, raw in zip(ids, records, strict=True):
                if raw is not None:
                    entry = record_from(queue, tier, redis_id, raw)
                    if where.matches(entry):
                        out.append(replace(entry, shard=shard) if shard else entry)
            upper = b"(" + members[-1]
        return out[:want]

    def _ensure_indexed(self, keys: QueueKeys) -> None:
        """Index the dead letters that have no index entry (written by an earlier version)."""
        pipe = self.broker.client.pipeline(transaction=True)
        pipe.zcard(keys.dead)
        pipe.zlexcount(keys.dead_idx, b"[*" + SEP, b"[*" + SEP + TOP)
        dead, indexed = pipe.execute()
        if dead == indexed:
            return
        have = {member.rpartition(SEP)[2] for member in self._index_members(keys, b"*")}
        ids: list[bytes] = self.broker.client.zrange(keys.dead, 0, -1)  # type: ignore[assignment]
        missing = [i for i in ids if i not in have]
        for start in range(0, len(missing), ACTION_CHUNK):
            args: list[Any] = ["index", *missing[start : start + ACTION_CHUNK]]
            self.broker.scripts["dlq"](keys=keys.dead_letter_keys(), args=args)

    def _index_members(self, keys: QueueKeys, dim: bytes) -> Iterator[bytes]:
        """Every index member of one dimension, in index order."""
        lower, upper = b"[" + dim + SEP, b"[" + dim + SEP + TOP
        key = keys.dead_idx
        while True:
            members: list[bytes] = self.broker.client.zrangebylex(  # type: ignore[assignment]
                key, lower, upper, start=0, num=INDEX_CHUNK
            )
            yield from members
            if len(members) < INDEX_CHUNK:
                return
            lower = b"(" + members[-1]

    def _payloads(self, entries: Sequence[DeadLetter]) -> list[bytes | bool]:
        """Each entry's message; False if the entry is gone, True if it is there without a message."""
        pipe = self.broker.client.pipeline(transaction=False)
        for entry in entries:
            keys = self._keys(entry)
            pipe.hget(keys.dead_msgs, entry.id)
            pipe.hexists(keys.dead_info, entry.id)
        replies = pipe.execute()
        pairs = zip(replies[::2], replies[1::2], strict=True)
        return [payload if payload is not None else bool(there) for payload, there in pairs]

    def _decode(self, payload: bytes | None) -> dict[str, Any] | None:
        if not payload:
            return None
        try:
            fields = self.broker.encoder.decode(payload)
        except Exception:
            return None
        return fields if isinstance(fields, dict) and "actor_name" in fields else None

    def _prepare(self, entry: DeadLetter, payload: bytes | None) -> tuple[str, bytes, int, str, int] | None:
        """The requeued message: (new id, encoded, level, tenant, max deliveries), or None if undecodable."""
        fields = self._decode(payload)
        if fields is None or envelope_error(fields) is not None:  # its id is replaced: any will do
            return None
        options = {k: v for k, v in dict(fields.get("options") or {}).items() if k not in RESET_OPTIONS}
        new_id = os.urandom(16).hex()
        options.update(redis_message_id=new_id, requeued_from=entry.id)
        priority = options.get("priority")
        level = priority if isinstance(priority, int) and MIN_PRIORITY <= priority <= MAX_PRIORITY else DEFAULT_PRIORITY
        tenant = options.get("tenant") if isinstance(options.get("tenant"), str) else ""
        max_deliveries = options.get("max_deliveries")
        encoded = self.broker.encoder.encode({**fields, "options": options})
        return new_id, encoded, level, str(tenant), int(max_deliveries) if isinstance(max_deliveries, int) else 0


def _split(member: bytes, dim: bytes, value: bytes) -> tuple[bytes, int, str]:
    """An index member -> (value, time dead-lettered, id)."""
    rest = member[len(dim) + 1 :]
    head, at, redis_id = rest.rsplit(SEP, 2)
    return head, int(at), redis_id.decode()


def _chunks(items: Sequence[DeadLetter], size: int) -> Iterator[Sequence[DeadLetter]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
