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
        self.fail_once = False

    def __call__(self, ids: list[str]) -> None:
        self.entered.set()
        self.hold.wait(10)
        self.calls.append(list(ids))
        failure = self.fail_with
        if self.fail_once:
            self.fail_with = None
        if failure is not None:
            raise failure


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


def _queued_behind_a_write(
    commit: GroupCommit, writes: Writes, queued: list[str]
) -> tuple[list[threading.Thread], dict[str, BaseException]]:
    """Ack "a" in a thread whose write is held, then ack `queued` in threads of their own, queued
    behind it; the threads ("a" first) and the errors their acks raised (filled as they end)."""
    writes.hold.clear()
    errors: dict[str, BaseException] = {}
    threads = [_ack_in_thread(commit, "a", errors)]
    assert writes.entered.wait(5)
    threads += [_ack_in_thread(commit, redis_id, errors) for redis_id in queued]
    _wait_queued(commit, len(queued))
    return threads, errors


def _release(writes: Writes, threads: list[threading.Thread]) -> None:
    writes.hold.set()
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)


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
    commit = GroupCommit(writes)
    # When three more threads ack meanwhile
    threads, errors = _queued_behind_a_write(commit, writes, ["b", "c", "d"])
    assert all(thread.is_alive() for thread in threads)  # none returns before its ack is written
    _release(writes, threads)
    # Then their three acks were written in one call after a's, and every thread returned
    assert writes.calls[0] == ["a"]
    assert sorted(writes.calls[1]) == ["b", "c", "d"]
    assert len(writes.calls) == 2
    assert errors == {}


def test_a_failed_write_fails_every_ack_in_it_and_the_next_acks_still_go_through() -> None:
    # Given a write under way that will fail, and two acks queued behind it
    writes = Writes()
    writes.fail_with = ConnectionError("refused")
    commit = GroupCommit(writes)
    threads, errors = _queued_behind_a_write(commit, writes, ["b", "c"])
    # When the writes fail
    _release(writes, threads)
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
    commit = GroupCommit(writes)
    threads, errors = _queued_behind_a_write(commit, writes, [str(i) for i in range(5)])
    # When the write ends
    _release(writes, threads)
    # Then the five were written in calls of at most two, each exactly once
    assert [len(call) for call in writes.calls] == [1, 2, 2, 1]
    assert sorted(i for call in writes.calls[1:] for i in call) == ["0", "1", "2", "3", "4"]
    assert errors == {}


class Interrupted(BaseException):
    """Like Dramatiq's Interrupt (a time limit, a shutdown): raised in one thread, not an error of the write."""


def test_an_interrupt_in_the_writing_thread_leaves_its_batch_to_the_next_write() -> None:
    # Given a write under way that will be interrupted in its thread, and two acks queued behind it
    writes = Writes()
    writes.fail_with, writes.fail_once = Interrupted(), True
    commit = GroupCommit(writes)
    threads, errors = _queued_behind_a_write(commit, writes, ["b", "c"])
    # When the interrupt lands (and the next write succeeds)
    _release(writes, threads)
    # Then only the interrupted thread raised, and a later call wrote its ack again with the other two
    assert list(errors) == ["a"]
    assert isinstance(errors["a"], Interrupted)
    assert writes.calls[0] == ["a"]
    assert sorted(writes.calls[1]) == ["a", "b", "c"]


def test_an_ack_whose_thread_left_is_written_by_the_next_ack_or_by_flush() -> None:
    # Given an ack queued by a thread that left before it was written (the write of "a" was interrupted)
    writes = Writes()
    writes.fail_with, writes.fail_once = Interrupted(), True
    commit = GroupCommit(writes)
    with pytest.raises(Interrupted):
        commit.ack("a")
    # When the consumer closes (or the next ack comes)
    commit.flush()
    # Then it was written
    assert writes.calls == [["a"], ["a"]]
    commit.flush()
    assert writes.calls == [["a"], ["a"]]  # nothing left to write
