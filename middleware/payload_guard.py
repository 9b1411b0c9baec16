"""Payload guard: only plain data of a bounded size reaches Redis.

Guarantees, checked before enqueue (first in the stack), so a rejected message
leaves nothing in Redis:
- Every argument is native to the configured encoder: None, bool, int (64-bit),
  float, str, list/tuple and dict with str keys, plus bytes with msgpack. Anything
  else (a datetime, a Decimal, a model instance) raises `PayloadTypeError` (a `TypeError`) naming the actor,
  the parameter and the path inside it, e.g. `items[2]['price']`.
- The encoded message fits `TRIAGE_MAX_PAYLOAD_BYTES`, else `PayloadTooLarge`.
Failure mode: none silent; the producer gets the exception at `send()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.encoder import Encoder
from dramatiq.errors import ActorNotFound
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError

from broker.encoder import MsgpackEncoder

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_SCALARS = (str, float, bool, type(None))


class PayloadTypeError(MiddlewareError, TypeError):
    """An argument is not plain data that the encoder carries natively."""


class PayloadTooLarge(MiddlewareError, ValueError):
    """The encoded message is larger than `TRIAGE_MAX_PAYLOAD_BYTES`."""

    def __init__(self, actor_name: str, size: int, limit: int) -> None:
        super().__init__(
            f"actor {actor_name!r}: encoded message is {size} bytes, over the limit of {limit} bytes "
            "(TRIAGE_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a reference"
        )
        self.actor_name, self.size, self.limit = actor_name, size, limit


class PayloadGuard(Middleware):
    def __init__(self, *, max_bytes: int, encoder: Encoder) -> None:
        self.max_bytes = max_bytes
        self.encoder = encoder
        self.allow_bytes = isinstance(encoder, MsgpackEncoder)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        for name, value in _named_arguments(broker, message):
            problem = self._first_non_native(value, name)
            if problem is not None:
                path, bad = problem
                encoders = "msgpack" if self.allow_bytes else "JSON"
                raise PayloadTypeError(
                    f"actor {message.actor_name!r}: argument {path} is a {type(bad).__name__}, "
                    f"which {encoders} cannot carry natively; pass plain data (str, int, float, bool, "
                    "None, list, dict with str keys)"
                )
        try:
            size = len(self.encoder.encode(message.asdict()))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. an option that is not plain data
            raise PayloadTypeError(f"actor {message.actor_name!r}: message cannot be encoded: {exc}") from None
        if size > self.max_bytes:
            raise PayloadTooLarge(message.actor_name, size, self.max_bytes)

    def _first_non_native(self, value: Any, path: str) -> tuple[str, Any] | None:
        stack: list[tuple[str, Any]] = [(path, value)]
        while stack:
            path, value = stack.pop()
            if isinstance(value, _SCALARS) or (self.allow_bytes and isinstance(value, bytes)):
                continue
            if isinstance(value, int):
                if not _INT_MIN <= value <= _INT_MAX:
                    return path, value
            elif isinstance(value, list | tuple):
                stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
            elif isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        return f"{path} key {key!r}", key
                    stack.append((f"{path}[{key!r}]", item))
            else:
                return path, value
        return None


def _named_arguments(broker: Broker, message: Message[Any]) -> Iterator[tuple[str, Any]]:
    """Yield (`'name'`, value) for each argument, naming positional ones by the actor's signature."""
    names: list[str] = []
    try:
        params = inspect.signature(broker.get_actor(message.actor_name).fn).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (ActorNotFound, TypeError, ValueError):
        pass
    for index, value in enumerate(message.args):
        yield (repr(names[index]) if index < len(names) else f"args[{index}]"), value
    for key, value in message.kwargs.items():
        yield repr(key), value
