"""A delivered message: the envelope a Triage producer writes, and what the broker learns at fetch.

Guarantees:
- A delivered message is the message `send()` returned: equal to it, options included. What the
  broker learns at fetch (the id it handed the message out under, the delivery count, when it
  became ready to run, its shard) stays on the delivered proxy, read with `redis_id_of`,
  `delivery_count`, `ready_at_ms` and `shard_of`, and never travels with a copy of the message
  that middleware enqueues again.
- Only the envelope a Triage producer writes is delivered (`envelope_error`): every field of a
  Dramatiq message with its type, options that are a map and name the id the message was stored
  under. Anything else is a `DecodeError` whose cause says what is wrong.
- A delivered message prints as `actor(id=…)`: its arguments stay out of Dramatiq's logs.
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.encoder import Encoder
from dramatiq.errors import DecodeError
from dramatiq.message import Message

DELIVERIES_OPTION = "triage_deliveries"  # where versions before 0.2 kept the count (dropped on re-enqueue)
_DELIVERIES = "_triage_deliveries"  # the proxy's attributes
_READY = "_triage_ready_ms"
_SHARD = "_triage_shard"
_REDIS_ID = "_triage_redis_id"
# The envelope a Triage producer writes: each field and its type.
ENVELOPE: dict[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": (list, tuple),
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}


def delivery_count(message: Message[Any] | MessageProxy) -> int:
    """How many times the broker has handed this message to a worker, this delivery included:
    1 on a first delivery, more after the worker that held it died (a retry is a new message,
    delivered for the first time). A message that was not delivered by a Triage broker: 1."""
    count = message.__dict__.get(_DELIVERIES) if isinstance(message, MessageProxy) else None
    return int(count) if count else 1


def ready_at_ms(message: Message[Any] | MessageProxy) -> int | None:
    """When the delivered message became ready to run (epoch ms): its enqueue, by Redis's clock,
    or its eta for a delayed message or a retry, by the clock of the process that set it (or
    Redis's, if that is earlier). None for a message not delivered by Triage."""
    ready = message.__dict__.get(_READY) if isinstance(message, MessageProxy) else None
    return int(ready) if ready else None


def shard_of(message: Message[Any] | MessageProxy) -> int:
    """Which shard of its queue the delivered message came from (0 when not sharded)."""
    shard = message.__dict__.get(_SHARD) if isinstance(message, MessageProxy) else None
    return int(shard or 0)


def redis_id_of(message: Message[Any] | MessageProxy) -> str:
    """The id the broker handed the delivered message out under (what settles it); for a message
    not delivered by a Triage broker, the id its options name."""
    handed = message.__dict__.get(_REDIS_ID) if isinstance(message, MessageProxy) else None
    return str(handed) if handed is not None else str(message.options["redis_message_id"])


def envelope_error(fields: Any, redis_id: str | None = None) -> str | None:
    """What makes decoded fields not a message a Triage producer wrote, or None. With `redis_id`,
    its options must name that id (the one it was stored and handed out under)."""
    if not isinstance(fields, dict):
        return f"the message is a {type(fields).__name__}, not a map"
    for name, kind in ENVELOPE.items():
        if name not in fields:
            return f"field {name!r} is missing"
        if not isinstance(fields[name], kind) or isinstance(fields[name], bool):
            return f"field {name!r} is a {type(fields[name]).__name__}"
    unknown = sorted(set(fields) - set(ENVELOPE))
    if unknown:
        return f"unknown field(s) {', '.join(map(repr, unknown))}"
    if redis_id is None:
        return None
    claimed = fields["options"].get("redis_message_id")
    if claimed is None:
        return "options lack redis_message_id"
    if claimed != redis_id:
        return f"options name another message's id ({str(claimed)[:40]!r})"
    return None


class TriageMessageProxy(MessageProxy):
    """A delivered message whose text form names the actor and message id, never the arguments:
    Dramatiq's worker logs messages with `%s` at ERROR and WARNING, and arguments may be
    personal data. (Actors still log their arguments at DEBUG.)"""

    def __str__(self) -> str:
        return f"{self.actor_name}(id={self.message_id})"

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self}>"


def delivered(
    encoder: Encoder, payload: bytes, redis_id: str, deliveries: int, ready_ms: int, shard: int
) -> TriageMessageProxy:
    """The delivered message of a fetch, with what the broker learned at fetch kept on the proxy
    (the id it was handed out under, its delivery count, when it became ready, its shard).
    Decoded with the broker's encoder rather than Dramatiq's global one, and only if its envelope
    is what a Triage producer writes (`envelope_error`): else `DecodeError`, whose cause says why."""
    try:
        fields = encoder.decode(payload)
    except Exception as exc:
        raise DecodeError("Failed to decode message.", payload, exc) from exc  # type: ignore[no-untyped-call]
    problem = envelope_error(fields, redis_id)
    if problem is not None:
        cause = ValueError(f"not a Triage message: {problem}")
        raise DecodeError("Failed to decode message.", payload, cause) from cause  # type: ignore[no-untyped-call]
    fields["args"] = tuple(fields["args"])
    message = TriageMessageProxy(Message(**fields))
    message.__dict__.update({_REDIS_ID: redis_id, _DELIVERIES: deliveries, _READY: ready_ms})
    if shard:
        message.__dict__[_SHARD] = shard
    return message
