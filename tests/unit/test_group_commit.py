"""Group commit of acks: acks that arrive while a write is under way share the next write."""

from __future__ import annotations

import threading
import time

import pytest

from triage.broker import acks
from triage.broker.acks import GroupCommit


class Writes:
    """A write that records each call's ids; `hold` keeps the next call waiting until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail_with: BaseException | None = None

    def __call__(self, ids: list[str]) -> None:
        self.entered.set()
        self.hold.wait(10)
        self.calls.append(list(ids))
        if self.fail_with is not None:
            raise self.fail_with


def _ack_in_thread(commit: GroupCommit, redis_id: str, errors: dict[str, BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            commit.ack(redis_id)
        except BaseException as exc:
            errors[redis_id] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_queued(commit: GroupCommit, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(commit._queued) < count:
        assert time.monotonic() < deadline, "acks were not queued"
        time.sleep(0.001)


def test_acks_one_after_the_other_are_written_one_by_one() -> None:
    # Given a group commit with nobody else acking
    writes = Writes()
    commit = GroupCommit(writes)
    # When a thread acks three messages in turn
    for redis_id in ("a", "b", "c"):
        commit.ack(redis_id)
    # Then each was written alone, at once
    assert writes.calls == [["a"], ["b"], ["c"]]


def test_acks_that_arrive_during_a_write_share_the_next_one() -> None:
    # Given a write under way for message a
    writes = Writes()
    writes.hold.clear()
    commit = GroupCommit(writes)
    errors: dict[str, BaseException] = {}
    first = _ack_in_thread(commit, "a", errors)
    assert writes.entered.wait(5)
    # When three more threads ack meanwhile
    others = [_ack_in_thread(commit, redis_id, errors) for redis_id in ("b", "c", "d")]
    _wait_queued(commit, 3)
    assert all(thread.is_alive() for thread in others)  # none returns before its ack is written
    writes.hold.set()
    for thread in [first, *others]:
        thread.join(5)
    # Then their three acks were written in one call after a's, and every thread returned
    assert writes.calls[0] == ["a"]
    assert sorted(writes.calls[1]) == ["b", "c", "d"]
    assert len(writes.calls) == 2
    assert errors == {}
    assert not any(thread.is_alive() for thread in [first, *others])


def test_a_failed_write_fails_every_ack_in_it_and_the_next_acks_still_go_through() -> None:
    # Given a write under way that will fail, and two acks queued behind it
    writes = Writes()
    writes.hold.clear()
    writes.fail_with = ConnectionError("refused")
    commit = GroupCommit(writes)
    errors: dict[str, BaseException] = {}
    threads = [_ack_in_thread(commit, "a", errors)]
    assert writes.entered.wait(5)
    threads += [_ack_in_thread(commit, redis_id, errors) for redis_id in ("b", "c")]
    _wait_queued(commit, 2)
    # When the writes fail
    writes.hold.set()
    for thread in threads:
        thread.join(5)
    # Then each ack raised the error of the call that held it
    assert sorted(errors) == ["a", "b", "c"]
    assert all(isinstance(exc, ConnectionError) for exc in errors.values())
    # And an ack made after them is written (no thread was left holding the lead)
    writes.fail_with = None
    commit.ack("d")
    assert writes.calls[-1] == ["d"]


def test_no_call_writes_more_than_max_batch_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given batches of at most 2, and five acks queued behind a write under way
    monkeypatch.setattr(acks, "MAX_BATCH", 2)
    writes = Writes()
    writes.hold.clear()
    commit = GroupCommit(writes)
    errors: dict[str, BaseException] = {}
    threads = [_ack_in_thread(commit, "a", errors)]
    assert writes.entered.wait(5)
    threads += [_ack_in_thread(commit, str(i), errors) for i in range(5)]
    _wait_queued(commit, 5)
    # When the write ends
    writes.hold.set()
    for thread in threads:
        thread.join(5)
    # Then the five were written in calls of at most two, each exactly once
    assert [len(call) for call in writes.calls] == [1, 2, 2, 1]
    assert sorted(i for call in writes.calls[1:] for i in call) == ["0", "1", "2", "3", "4"]
    assert errors == {}
