"""Group commit of acks: acks made at the same time by several worker threads go to Redis in one call.

Guarantees:
- `ack()` returns only once its id has been written (or kept in the settle backlog, as a
  single ack would be), and raises what the write raised: an ack is as synchronous and as
  durable as one written alone. Nothing waits on purpose: no timer, no added delay, so a
  crash's redelivery window does not grow.
- The first thread to ack while no write is under way writes at once, alone. Threads that ack
  while a write is under way queue their ids; when the write ends, the oldest of them is woken
  and writes everything queued by then (up to `MAX_BATCH` ids a call) in one call, and so on. A
  thread writes only until its own id is written, so no thread is kept writing for others.
- Robust to a thread that leaves without warning (an interrupt raised in it: Dramatiq's time
  limit, a shutdown notification): an ack it queued is still written, by the next writer; a
  write it was making is made again by the next writer (an ack written twice is a no-op); no
  thread holds the writing role once it has left, and a waiting thread that missed its
  wake-up takes the role within `POLL_S`.
- The ids of one call belong to one shard (one `GroupCommit` per shard of a consumer).
Cost: with one worker thread, none (one write per ack, as before). With N threads finishing
together, up to N acks share one round trip and one script call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

MAX_BATCH = 64
POLL_S = 0.05  # a waiting thread checks whether nobody writes, in case its wake-up was missed


class _Ack:
    __slots__ = ("error", "redis_id", "wake", "written")

    def __init__(self, redis_id: str) -> None:
        self.redis_id = redis_id
        self.wake = threading.Event()
        self.error: Exception | None = None
        self.written = False


class GroupCommit:
    """Acks of one shard, written together when they arrive together (see the module's docstring).

    `write`: writes the acks of the ids it is given, in one call (the consumer's settle call);
    an `Exception` it raises is raised by the ack of every id it was given. It must leave the
    ids unsettled when a `BaseException` that is not an `Exception` interrupts it: they are
    written again by the next writer.
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
        while not mine.written:
            if not self._as_writer(mine):
                mine.wake.wait(POLL_S)
                mine.wake.clear()
        if mine.error is not None:
            raise mine.error

    def flush(self) -> None:
        """Write the acks still queued (their threads left before they were written), unless
        a writer is at work already (it writes them)."""
        self._as_writer(None)

    def _as_writer(self, mine: _Ack | None) -> bool:
        """Take the writing role if nobody has it, and write until `mine` is written (None:
        until nothing is queued); False when another thread has the role."""
        writer = False
        try:
            with self._lock:
                if self._writing or (mine is not None and mine.written):
                    return False
                writer = True  # (before the flag: an interrupt between them leaves no flag set for good)
                self._writing = True
            self._write_until(mine)
        finally:
            if writer:
                with self._lock:
                    self._writing = False
                    if self._queued:
                        self._queued[0].wake.set()
        return True

    def _write_until(self, mine: _Ack | None) -> None:
        """Write the oldest queued acks, `MAX_BATCH` a call, until `mine` is written (None:
        until nothing is queued)."""
        while mine is None or not mine.written:
            with self._lock:
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
            if not batch:
                return
            error: Exception | None = None
            try:
                self._write([ack.redis_id for ack in batch])
            except Exception as exc:
                error = exc
            except BaseException:  # this thread's own interrupt: the batch is written again by the next writer
                with self._lock:
                    self._queued[:0] = batch
                raise
            for ack in batch:
                ack.error, ack.written = error, True
                ack.wake.set()
