"""How a delivery ends when it is neither a plain ack nor a plain nack: retried, moved to
another queue, deferred, or dead-lettered for a stated reason.

Guarantees: the first policy to decide settles the message (later ones see `outcome_of` set and
leave it). A policy decides in `after_process_message` (or before running the message) and
records its decision on the delivered message with `set_outcome`; nothing is written to Redis
then. The consumer applies the decision when Dramatiq settles the delivery, in one script call
together with forgetting the delivery (`retry.lua`, `settle.lua`), so a decision that cannot
be written leaves the message in flight, to be settled when Redis answers or reclaimed.
A dead letter keeps why it failed (`failure_info`): the reason, and the last error's type,
message and the tail of its traceback.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from dramatiq.broker import MessageProxy
from dramatiq.message import Message

TRACEBACK_LIMIT = 2000  # characters of the traceback's tail kept with a dead letter
ENQUEUE_FIELDS = 11  # values per message in the enqueue script's call (`Placed.fields`)


class Placed(NamedTuple):
    """A message ready to be stored: its encoding and where it goes."""

    message: Message[Any]
    delay: int | None
    payload: bytes
    level: int
    tenant: str
    eta: int
    max_deliveries: int  # 0: the queue's default
    shed: bool = False  # held back by load shedding (its eta is the hold's)
    dedup_key: str = ""  # "": not deduplicated
    dedup_mode: str = ""  # "d" until_done, "s" until_start, "w" window
    dedup_ttl_ms: int = 0
    shard: int = 0  # which of its queue's shards (`TriageBroker.shards`)

    def fields(self) -> tuple[Any, ...]:
        """Its ENQUEUE_FIELDS values, in the enqueue script's order."""
        m = self.message
        return (
            m.options["redis_message_id"],
            self.payload,
            self.level,
            self.tenant,
            self.eta,
            self.max_deliveries,
            m.message_id,
            self.dedup_key,
            self.dedup_mode,
            self.dedup_ttl_ms,
            int(self.shed),
        )


@dataclass(frozen=True)
class Outcome:
    kind: Literal["retry", "move", "defer", "dead", "ack"]  # ack: settled as done (a message dropped on purpose)
    placed: Placed | None = None  # retry, move: the message to store instead
    delay_ms: int = 0  # defer
    reason: str = ""  # dead: exhausted, dead_on, ...


_ATTRIBUTE = "_triage_outcome"


def set_outcome(message: MessageProxy, outcome: Outcome) -> None:
    setattr(message, _ATTRIBUTE, outcome)


def outcome_of(message: MessageProxy) -> Outcome | None:
    outcome = message.__dict__.get(_ATTRIBUTE)
    return outcome if isinstance(outcome, Outcome) else None


def failure_info(reason: str, exception: BaseException | None, **extra: Any) -> str:
    """The JSON kept with a dead letter: why, and the last error (type, message, traceback tail)."""
    info: dict[str, Any] = {"reason": reason, **extra}
    if exception is not None:
        trace = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        info["error"] = {
            "type": type(exception).__name__,
            "message": str(exception)[:1000],
            "traceback": trace[-TRACEBACK_LIMIT:],
        }
    return json.dumps(info)
