"""Actors for deduplication tests: each run appends its key to a ledger file (outside Redis,
so the ledger does not share Redis's fate); `python -m tests.dedup_actors ACTOR KEYS COPIES THREADS
SEED` is a producer."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any

from actors import default, enqueue_batch

QUEUE = "t_dedup"


def _record(key: str) -> None:
    with open(os.environ["TEST_LEDGER"], "a") as ledger:
        ledger.write(f"{key} {os.getpid()} {time.time():.6f}\n")


@default(queue=QUEUE, dedup="job:{key}", dedup_ttl=600)
def once_job(key: str, sender: int = 0) -> None:
    """One run per key while a message with the key is pending (until_done)."""
    _record(key)


@default(queue=QUEUE, dedup="win:{key}", dedup_ttl=600, dedup_mode="window")
def window_job(key: str, sender: int = 0) -> None:
    """One run per key in 10 minutes, whatever happened to the first (window)."""
    _record(key)


@default(queue=QUEUE, dedup="slow:{key}", dedup_ttl=600)
def slow_once_job(key: str, seconds: float) -> None:
    """Long enough for a test to kill its worker mid-run."""
    time.sleep(seconds)
    _record(key)


def produce(actor: Any, keys: int, copies: int, threads: int, seed: int) -> None:
    """`copies` sends of each key to `actor`, shuffled over `threads` threads; single sends and
    batches of up to 10 mixed."""
    rng = random.Random(seed)
    work = [f"k{k}" for k in range(keys) for _ in range(copies)]
    rng.shuffle(work)
    shares = [work[i::threads] for i in range(threads)]

    def send(share: list[str], thread_seed: int) -> None:
        r = random.Random(thread_seed)
        at = 0
        while at < len(share):
            if r.random() < 0.5:
                actor.send(share[at], seed)
                at += 1
            else:
                size = r.randint(2, 10)
                enqueue_batch([actor.message(key, seed) for key in share[at : at + size]])
                at += size

    pool = [threading.Thread(target=send, args=(share, seed * 100 + i)) for i, share in enumerate(shares)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


if __name__ == "__main__":
    produce(globals()[sys.argv[1]], *(int(a) for a in sys.argv[2:6]))
