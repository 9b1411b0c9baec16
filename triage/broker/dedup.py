"""Deduplication keys, as the broker stores and releases them (`lua/_dedup.lua`).

Guarantees:
- A message's key is taken in the same enqueue script call that stores it: there is no
  moment at which the key is held and the message is not in Redis, or the reverse. Within
  one batch, the first message with a key keeps it and the others are duplicates.
- A duplicate is not stored; the send returns a message carrying the holder's message_id
  (`duplicate_of` in its options), or raises `DuplicateMessage` when the message asks for it
  (`dedup_on_duplicate="raise"`, single sends only: a batch always returns).
- Every key has a ttl (`dedup_ttl`, seconds, required): nothing holds a key forever.
  Keys longer than `MAX_KEY_BYTES` are stored as their SHA-256.
- Messages carry their key in their options (`dedup_key`, `dedup_mode`, `dedup_ttl`), so
  retries, deferrals and redeliveries keep it; they are never duplicates of themselves.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

import redis
from dramatiq.errors import BrokerError
from dramatiq.message import Message
from redis.commands.core import Script

from .keys import QueueKeys
from .text import as_text

MAX_KEY_BYTES = 200
MAX_TTL_S = 366 * 86_400
MODES = {"until_done": "d", "until_start": "s", "window": "w"}
MODE_NAMES = {letter: name for name, letter in MODES.items()}


class DuplicateMessage(BrokerError):
    """A send refused as a duplicate: another message holds its dedup key (`original_id`)."""

    def __init__(self, key: str, queue: str, original_id: str) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            f"dedup key {key!r} on queue {queue!r} is held by message {original_id}: duplicate not stored"
        )
        self.key, self.queue, self.original_id = key, queue, original_id


def stored_key(key: str) -> str:
    """The key as stored: itself, or `sha256:<hex>` when longer than MAX_KEY_BYTES."""
    raw = key.encode()
    return key if len(raw) <= MAX_KEY_BYTES else "sha256:" + hashlib.sha256(raw).hexdigest()


def dedup_of(message: Message[Any]) -> tuple[str, str, int]:
    """(stored key, mode letter, ttl ms) of a message, ("", "", 0) without a key; a ValueError
    naming the actor when its options are not usable."""
    options = message.options
    key = options.get("dedup_key")
    if key is None or key == "":
        return "", "", 0
    actor = message.actor_name
    if not isinstance(key, str):
        raise ValueError(f"actor {actor!r}: dedup_key must be a string, got {type(key).__name__}")
    mode, ttl = options.get("dedup_mode", "until_done"), options.get("dedup_ttl")
    problem = mode_problem(mode) or ttl_problem(ttl)
    if problem:
        raise ValueError(f"actor {actor!r}: a dedup key needs {problem}")
    assert isinstance(ttl, int | float)  # ttl_problem checked it
    return stored_key(key), MODES[mode], int(ttl * 1000)


def ttl_problem(ttl: object) -> str | None:
    """What is wrong with a `dedup_ttl` (None: nothing); checked at declaration and at send."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S:
        return f"dedup_ttl in seconds, 0 < ttl <= one year (got {ttl!r})"
    return None


def mode_problem(mode: object) -> str | None:
    """What is wrong with a `dedup_mode` (None: nothing)."""
    if isinstance(mode, str) and mode in MODES:
        return None
    return f"dedup_mode one of {', '.join(MODES)} (got {mode!r})"


def as_duplicate(message: Message[Any], original_id: str) -> Message[Any]:
    """What a send of a duplicate returns: the message, with the holder's id."""
    options = {k: v for k, v in message.options.items() if k != "redis_message_id"}
    options["duplicate_of"] = original_id
    return message.copy(message_id=original_id, options=options)


class KeyHolder(TypedDict):
    key: str
    queue: str
    message_id: str
    mode: str  # until_done, until_start, window
    expires_in_seconds: float


def holder(client: redis.Redis, keys: QueueKeys, key: str) -> KeyHolder | None:
    """Who holds `key` on the queue and until when (None: free, or expired)."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.dedup, stored_key(key))
    pipe.time()
    record, (seconds, micros) = pipe.execute()
    if record is None:
        return None
    message_id, mode, expires = as_text(record).split("|")
    left = (int(expires) - (seconds * 1000 + micros // 1000)) / 1000  # keys expire by Redis's clock
    if left <= 0:
        return None
    return KeyHolder(key=key, queue=keys.queue, message_id=message_id, mode=MODE_NAMES[mode], expires_in_seconds=left)


def release(script: Script, keys: QueueKeys, redis_message_id: str) -> str | None:
    """Release the key the stored message holds, if it still holds it (`dedup.lua`); the key, or None."""
    released = script(keys=keys.dedup_script_keys(), args=["release", redis_message_id])
    return as_text(released) if released else None


def drop(client: redis.Redis, keys: QueueKeys, key: str) -> bool:
    """Free `key` on the queue now, whoever holds it (operators); False if it was not held."""
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.dedup, stored_key(key))
    pipe.zrem(keys.dedup_exp, stored_key(key))
    return bool(pipe.execute()[0])
