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
from typing import Any, NoReturn

from dramatiq import Broker, Middleware
from dramatiq.encoder import Encoder
from dramatiq.errors import ActorNotFound
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError

from triage.broker.encoder import MsgpackEncoder

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_SCALARS = (str, float, bool, type(None))
_ENVELOPE_BYTES = 512  # message id, timestamp, field names, encoder framing


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


class _NotNative(Exception):
    pass


class PayloadGuard(Middleware):
    """Checks arguments and size before enqueue; encodes only when the message may be near the limit.

    The hot path walks the arguments once, checking types and adding up an upper bound of
    their encoded size; the message is encoded to measure it exactly only when that bound
    (plus options and envelope) could exceed the limit. Errors are described on a slow path.
    """

    def __init__(self, *, max_bytes: int, encoder: Encoder) -> None:
        self.max_bytes = max_bytes
        self.encoder = encoder
        self.allow_bytes = isinstance(encoder, MsgpackEncoder)
        # Worst-case encoded bytes per str character: msgpack UTF-8 is at most 4; JSON's
        # ASCII escapes at most 12 (a surrogate pair for one character).
        self.per_char = 4 if self.allow_bytes else 12
        self._names: dict[str, list[str]] = {}

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        try:
            bound = self._bound((message.args, message.kwargs))
        except _NotNative:
            self._raise_type_error(broker, message)
        try:
            bound += self._bound(message.options)
        except _NotNative:
            bound = self.max_bytes + 1  # unknown option types: measure exactly
        bound += self.per_char * (len(message.actor_name) + len(message.queue_name)) + _ENVELOPE_BYTES
        if bound <= self.max_bytes:
            return
        try:
            size = len(self.encoder.encode(message.asdict()))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. an option that is not plain data
            raise PayloadTypeError(f"actor {message.actor_name!r}: message cannot be encoded: {exc}") from None
        if size > self.max_bytes:
            raise PayloadTooLarge(message.actor_name, size, self.max_bytes)

    def _bound(self, value: Any) -> int:
        """An upper bound of the encoded size of `value`; raises _NotNative on a non-native value."""
        size = 0
        stack = [value]
        per_char, allow_bytes = self.per_char, self.allow_bytes
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is str:
                size += per_char * len(item) + 5
            elif kind is int:
                if not _INT_MIN <= item <= _INT_MAX:
                    raise _NotNative
                size += 21
            elif item is None or kind is bool or kind is float:
                size += 25
            elif kind is list or kind is tuple:
                stack.extend(item)
                size += 5 + len(item)
            elif kind is dict:
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise _NotNative
                    size += per_char * len(key) + 6
                    stack.append(child)
                size += 5
            elif kind is bytes and allow_bytes:
                size += len(item) + 5
            elif isinstance(item, str | int | float):  # subclasses: IntEnum, StrEnum, ...
                stack.append(_plain(item))
            else:
                raise _NotNative
        return size

    def _raise_type_error(self, broker: Broker, message: Message[Any]) -> NoReturn:
        encoders = "msgpack" if self.allow_bytes else "JSON"
        for name, value in self._named_arguments(broker, message):
            problem = self._first_non_native(value, name)
            if problem is not None:
                path, bad = problem
                raise PayloadTypeError(
                    f"actor {message.actor_name!r}: argument {path} is a {type(bad).__name__}, "
                    f"which {encoders} cannot carry natively; pass plain data (str, int, float, bool, "
                    "None, list, dict with str keys)"
                )
        raise PayloadTypeError(f"actor {message.actor_name!r}: arguments cannot be encoded by {encoders}")

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

    def _named_arguments(self, broker: Broker, message: Message[Any]) -> Iterator[tuple[str, Any]]:
        """Yield (`'name'`, value) for each argument, naming positional ones by the actor's signature."""
        names = self._names.get(message.actor_name)
        if names is None:
            names = []
            try:
                params = inspect.signature(broker.get_actor(message.actor_name).fn).parameters.values()
                names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (ActorNotFound, TypeError, ValueError):
                pass
            self._names[message.actor_name] = names
        for index, value in enumerate(message.args):
            yield (repr(names[index]) if index < len(names) else f"args[{index}]"), value
        for key, value in message.kwargs.items():
            yield repr(key), value


def _plain(value: str | int | float) -> str | int | float:
    """A subclass of a plain type (an IntEnum, a StrEnum) as its plain value."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
