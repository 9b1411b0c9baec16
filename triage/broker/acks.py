"""Group commit of acks: acks made at the same time by several worker threads go to Redis in one call.

Guarantees:
- `ack()` returns only once its id has been written (or kept in the settle backlog, as a
  single ack would be), and raises what the write raised: an ack is as synchronous and as
  durable as one written alone. Nothing waits on purpose: no timer, no added delay, so a
  crash's redelivery window does not grow.
- The first thread to ack while no write is under way writes at once, alone. Threads that ack
  while a write is under way queue their ids; when the write ends, the first of them writes
  everything queued by then (up to `MAX_BATCH` ids) in one call, and so on. A thread writes at
  most one batch, the one holding its own id, so no thread is kept writing for others.
- The ids of one call belong to one shard (one `GroupCommit` per shard of a consumer).
Cost: with one worker thread, none (one write per ack, as before). With N threads finishing
together, up to N acks share one round trip and one script call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

MAX_BATCH = 64


class _Ack:
    __slots__ = ("done", "error", "lead", "redis_id")

    def __init__(self, redis_id: str) -> None:
        self.redis_id = redis_id
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.lead = False


class GroupCommit:
    """Acks of one shard, written together when they arrive together (see the module's docstring).

    `write`: writes the acks of the ids it is given, in one call (the consumer's settle call);
    what it raises is raised by the ack of every id it was given.
    """

    def __init__(self, write: Callable[[list[str]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queued: list[_Ack] = []
        self._writing = False

    def ack(self, redis_id: str) -> None:
        mine = _Ack(redis_id)
        with self._lock:
            self._queued.append(mine)
            mine.lead = not self._writing
            self._writing = True
        try:
            if not mine.lead:
                mine.done.wait()  # written by the call of a thread ahead, or handed the lead
        finally:  # (an exception raised in this thread while it waits still passes the lead on)
            if mine.lead:
                self._lead(mine)
        if mine.error is not None:
            raise mine.error

    def _lead(self, mine: _Ack) -> None:
        """Write the oldest queued ids (this thread's own first: a leader is always the oldest
        queued), then hand the lead to the oldest one left, if any. An exception that is not an
        error of the write (an interrupt raised in this thread: Dramatiq's time limit, shutdown)
        is this thread's alone: the other ids of the batch go back to the head of the queue, to
        be written by the next leader (an ack written twice is a no-op)."""
        with self._lock:
            batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
        try:
            self._write([ack.redis_id for ack in batch])
        except Exception as exc:
            for ack in batch:
                ack.error = exc
        except BaseException:
            with self._lock:
                self._queued[:0] = [ack for ack in batch if ack is not mine]
            batch = [mine]
            raise
        finally:
            for ack in batch:
                if ack is not mine:
                    ack.done.set()
            with self._lock:
                if self._queued:
                    following = self._queued[0]
                    following.lead = True
                    following.done.set()
                else:
                    self._writing = False
