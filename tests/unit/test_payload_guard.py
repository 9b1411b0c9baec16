"""Payload guard on a StubBroker: plain data only, bounded size, nothing enqueued otherwise."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import Encoder, JSONEncoder

from triage.broker.encoder import MsgpackEncoder
from triage.middleware import PayloadGuard, PayloadTooLarge


@pytest.fixture(autouse=True)
def msgpack_encoding() -> Iterator[None]:
    """The stub broker encodes with Dramatiq's global encoder: make it the one Triage installs."""
    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(MsgpackEncoder())
    yield
    dramatiq.set_encoder(previous)


def make_broker(max_bytes: int = 10_000, encoder: Encoder | None = None) -> tuple[StubBroker, Any]:
    guard = PayloadGuard(max_bytes=max_bytes, encoder=encoder or MsgpackEncoder())
    broker = StubBroker(middleware=[guard])

    @dramatiq.actor(broker=broker)
    def place(order_id: str, lines: list[dict[str, Any]], note: Any = None) -> None: ...

    return broker, place


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("o1", [], datetime.date(2026, 1, 1)), {}, "argument 'note' is a date"),
        (
            ("o1", [{"sku": "a"}, {"price": decimal.Decimal("1.5")}]),
            {},
            "argument 'lines'[1]['price'] is a Decimal",
        ),
        (("o1", []), {"note": {1: "x"}}, "argument 'note' key 1 is a int"),
        (("o1", []), {"note": 2**64}, "argument 'note' is a int"),
        (("o1", [], {"a", "b"}), {}, "argument 'note' is a set"),
        (("o1", [], object()), {}, "argument 'note' is a object"),
    ],
)
def test_non_native_argument_is_named(args: tuple[Any, ...], kwargs: dict[str, Any], named: str) -> None:
    # Given an actor behind the payload guard
    broker, place = make_broker()
    # When it is sent an argument the encoder cannot carry natively
    with pytest.raises(TypeError) as caught:
        place.send(*args, **kwargs)
    # Then the error names the actor and the argument, and nothing is queued
    assert "actor 'place'" in str(caught.value)
    assert named in str(caught.value)
    assert broker.queues["default"].qsize() == 0


def test_native_arguments_pass() -> None:
    broker, place = make_broker()
    place.send("o1", [{"sku": "a", "qty": 2, "price": 1.5, "gift": False, "meta": None}], note=(1, -(2**63)))
    place.send("o1", [], note=b"\x00raw")
    assert broker.queues["default"].qsize() == 2


def test_bytes_refused_with_json_encoder() -> None:
    _, place = make_broker(encoder=JSONEncoder())
    with pytest.raises(TypeError, match="argument 'note' is a bytes, which JSON cannot carry"):
        place.send("o1", [], note=b"raw")


def test_oversized_message_is_refused() -> None:
    # Given a limit of 10,000 bytes
    broker, place = make_broker(max_bytes=10_000)
    # When a message over it is sent
    with pytest.raises(PayloadTooLarge) as caught:
        place.send("o1", [], note="x" * 10_000)
    # Then the error gives the size and the limit, and nothing is queued
    assert caught.value.limit == 10_000
    assert caught.value.size > 10_000
    assert "TRIAGE_MAX_PAYLOAD_BYTES" in str(caught.value)
    assert broker.queues["default"].qsize() == 0
