"""Deduplication: one message per key, taken atomically with the enqueue, released by the broker.

    @background(dedup="report:{org_id}:{report_id}", dedup_ttl=3600)
    def generate_report(org_id: str, report_id: int) -> None: ...

    generate_report.send("acme", 7)                     # stored
    generate_report.send(org_id="acme", report_id=7)    # duplicate: not stored, returns the first's id
    notify.send_with_options(args=(...), dedup_key="welcome:42", dedup_ttl=86400)

Guarantees:
- The key comes from the message's `dedup_key` option, else from the actor's `dedup`: a
  template over the call's arguments, bound like a call (positional and keyword calls give
  the same key, defaults filled in), or a callable taking the call's arguments. A template
  naming a parameter the actor does not have, a missing `dedup_ttl`, or a bad mode is an error
  at declaration; a key that cannot be built is an error at `send()` naming the actor.
- Modes (`dedup_mode`, actor or message option): `until_done` (default; held until the
  message is acked or dead-lettered: queued, delayed, running and retrying count as one),
  `until_start` (released when the message starts running, so one may be queued while one
  runs), `window` (held for `dedup_ttl` whatever happens). Every key expires after
  `dedup_ttl` seconds at the latest.
- The check and the taking happen in the broker's enqueue script (`triage.broker.dedup`);
  release on ack and dead letter in the settle scripts, atomically with them. This middleware
  only computes the key and, for `until_start`, releases it as the message starts (if that
  call fails, the key is released at the ack instead).
- A duplicate is not an error unless the actor (or message) says `on_duplicate="raise"`
  (`DuplicateMessage`); otherwise `send()` returns a message with the holder's message_id.
"""

from __future__ import annotations

import inspect
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.message import Message

from triage.broker.dedup import mode_problem, release, ttl_problem
from triage.broker.delivery import redis_id_of, shard_of
from triage.broker.redis_broker import triage_broker

from .declaration import InvalidActorOption

logger = logging.getLogger(__name__)

ON_DUPLICATE = ("return", "raise")


class DedupKeyError(InvalidActorOption):
    """A dedup key that could not be built from a call's arguments; the message names the actor."""


@dataclass(frozen=True)
class _Rule:
    key: str | Callable[..., Any] | None  # a template, a callable, or None (per-send keys only)
    ttl: float | None
    mode: str
    on_duplicate: str
    signature: inspect.Signature


class Deduplication(Middleware):
    """The `dedup`, `dedup_ttl`, `dedup_mode` and `on_duplicate` actor options."""

    def __init__(self) -> None:
        self._rules: dict[str, _Rule] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"dedup", "dedup_ttl", "dedup_mode", "on_duplicate"}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        options = actor.options
        if not any(name in options for name in self.actor_options):
            return
        where = f"actor {actor.actor_name!r}"
        key, ttl = options.get("dedup"), options.get("dedup_ttl")
        mode, on_duplicate = options.get("dedup_mode", "until_done"), options.get("on_duplicate", "return")
        if key is not None and not (isinstance(key, str) and key) and not callable(key):
            raise InvalidActorOption(f"{where}: dedup must be a key template (str) or a callable, got {key!r}")
        problem = (ttl_problem(ttl) if ttl is not None else None) or mode_problem(mode)
        if problem:
            raise InvalidActorOption(f"{where}: needs {problem}")
        if key is not None and ttl is None:
            raise InvalidActorOption(f"{where}: dedup needs dedup_ttl (seconds), the longest a key may be held")
        if on_duplicate not in ON_DUPLICATE:
            raise InvalidActorOption(f"{where}: on_duplicate must be 'return' or 'raise', got {on_duplicate!r}")
        signature = inspect.signature(actor.fn)
        if isinstance(key, str):
            _check_template(key, signature, where)
        self._rules[actor.actor_name] = _Rule(key, ttl, mode, on_duplicate, signature)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        options = message.options
        rule = self._rules.get(message.actor_name)
        if rule is None and "dedup_key" not in options:
            return
        if "dedup_key" not in options:
            assert rule is not None
            if rule.key is None:
                return
            options["dedup_key"] = self._key(rule, message)
        if rule is not None:
            options.setdefault("dedup_ttl", rule.ttl)
            options.setdefault("dedup_mode", rule.mode)
            if rule.on_duplicate == "raise":
                options.setdefault("dedup_on_duplicate", "raise")

    def _key(self, rule: _Rule, message: Message[Any]) -> str:
        where = f"actor {message.actor_name!r}"
        try:
            if callable(rule.key):
                key = rule.key(*message.args, **message.kwargs)
            else:
                assert isinstance(rule.key, str)
                bound = rule.signature.bind(*message.args, **message.kwargs)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                for name, param in rule.signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD:
                        arguments.update(arguments.pop(name, {}))
                key = rule.key.format_map(arguments)
        except Exception as exc:
            raise DedupKeyError(f"{where}: dedup key not built from the call's arguments ({exc!r})") from None
        if not isinstance(key, str) or not key:
            raise DedupKeyError(f"{where}: the dedup callable returned {key!r}, not a non-empty string")
        return key

    def before_process_message(self, broker: Broker, message: Any) -> None:
        if message.options.get("dedup_mode") != "until_start" or "dedup_key" not in message.options:
            return
        try:
            triage = triage_broker(broker, needed_by=self)
            keys = triage.shards(message.queue_name)[shard_of(message)]
            release(triage.scripts["dedup"], keys, redis_id_of(message))
        except Exception as exc:  # the settle script releases it at the ack instead
            logger.warning("Dedup key of %s not released at start (%s); it is at the ack.", message, exc)


def _check_template(template: str, signature: inspect.Signature, where: str) -> None:
    """Every field of the template names a parameter of the actor (or it takes **kwargs)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidActorOption(f"{where}: dedup template {template!r} is not a format string ({exc})") from None
    params = signature.parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for field in fields:
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit():
            raise InvalidActorOption(f"{where}: dedup template {template!r} must name parameters ({{org_id}})")
        if name not in params and not open_kwargs:
            raise InvalidActorOption(
                f"{where}: dedup template {template!r} names {name!r}, which is not a parameter of the actor"
            )
