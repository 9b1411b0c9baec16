"""Request bodies are capped before anything reads them, against a real `triage serve`: a
300 MB body, announced by its Content-Length or streamed without one (chunked), with or without
the admin token, to the API and to a dashboard form, is answered 413 while the process's memory
stays where it was."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.web_helpers import Server, serving
from triage.admin.web import ADMIN_PREFIX

TOKEN = "body-limit-admin-token-for-tests"
HUGE = 300 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)
REQUEUE = f"{ADMIN_PREFIX}/queue/dead-letters/requeue"


@pytest.fixture
def server(r: redis.Redis) -> Iterator[Server]:
    with serving(TRIAGE_ADMIN_TOKEN=TOKEN) as served:
        yield served


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (the peak resident set) and VmRSS of a process, in kB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmHWM", "VmRSS"))}


def send_huge(server: Server, path: str, *, chunked: bool, token: str | None = None) -> tuple[int, int]:
    """POSTs a 300 MB body to `path` (chunked, or with its Content-Length), sending until the server
    answers or closes; returns the answer's status and how many body bytes went out."""
    headers = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json"]
    headers.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}")
    if token:
        headers.append(f"Authorization: Bearer {token}")
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        deadline = time.monotonic() + 60
        while sent < HUGE and time.monotonic() < deadline:
            if select.select([connection], [], [], 0)[0]:
                break  # the server has answered (or closed): stop sending
            piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
            try:
                connection.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(CHUNK)
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 "), f"no answer after {sent} bytes: {answer!r}"
    return int(answer.split()[1]), sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_body_is_refused_with_413_and_memory_stays_bounded(server: Server, chunked: bool) -> None:
    # Given the web process, warmed up by one ordinary request
    assert server.call("POST", REQUEUE, TOKEN, {"ids": ["1-0"]})[0] == 404
    before = memory_kb(server.process.pid)
    # When 300 MB bodies come, to the API without a token and with one, and to the login form
    answers = [
        send_huge(server, REQUEUE, chunked=chunked),
        send_huge(server, REQUEUE, chunked=chunked, token=TOKEN),
        send_huge(server, "/login", chunked=chunked),
    ]
    after = memory_kb(server.process.pid)
    # Then each is answered 413, having been read 1 MiB at most (the data in flight aside)
    assert [status for status, _ in answers] == [413, 413, 413]
    assert all(sent < 64 * 1024 * 1024 for _, sent in answers), answers
    # And the process's peak memory grew by less than 50 MB
    assert after["VmHWM"] - before["VmHWM"] < 50 * 1024, (before, after)
    # And it still serves
    assert server.get("/healthz")[0] == 200


def test_a_body_within_the_cap_is_served_and_the_cap_is_a_setting(r: redis.Redis) -> None:
    # Given a web process whose cap is 4 KiB
    with serving(TRIAGE_ADMIN_TOKEN=TOKEN, TRIAGE_WEB_MAX_BODY_BYTES="4096") as server:
        ids = [f"{n}-0" for n in range(100)]  # about 900 bytes of JSON
        # When a body within it comes, it is served (an unknown id: 404), one over it is a 413
        assert server.call("POST", REQUEUE, TOKEN, {"ids": ids})[0] == 404
        status, text = server.call("POST", REQUEUE, TOKEN, {"ids": ids * 6})
        assert status == 413
        assert "TRIAGE_WEB_MAX_BODY_BYTES" in json.loads(text)["detail"]
        # And without the token, the same: a 413 before the 401
        assert server.call("POST", REQUEUE, None, {"ids": ids * 6})[0] == 413
        assert server.call("POST", REQUEUE, None, {"ids": ids})[0] == 401
