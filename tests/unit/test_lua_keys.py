"""Cluster-readiness of the Lua scripts: declared keys only, one hash slot per queue, documented headers."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from broker.keys import BLOCK_SIZE, QueueKeys
from broker.scripts import LUA_DIR, SCRIPT_NAMES, source

CALL = re.compile(r'redis\.call\("(\w+)",\s*([^,)]+)')
LOCAL_FROM_KEYS = re.compile(r"local (\w+) = KEYS\[")


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, "_placement"])
def test_every_script_starts_with_the_keys_it_touches(name: str) -> None:
    header = []
    for line in (LUA_DIR / f"{name}.lua").read_text().splitlines():
        if not line.startswith("--"):
            break
        header.append(line)
    assert header, f"{name}.lua has no header"
    assert any("KEYS" in line or "{ns:Q}" in line for line in header)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_key_a_script_touches_comes_from_KEYS(name: str) -> None:
    # Given the script as it is loaded (the placement prelude included)
    lua = source(name)
    from_keys = set(LOCAL_FROM_KEYS.findall(lua))
    calls = CALL.findall(lua)
    assert calls
    # Then the key argument of every redis.call is KEYS[...] or a local taken from KEYS
    for command, key in calls:
        key = key.strip()
        assert key.startswith("KEYS[") or key in from_keys, f"{name}.lua: {command} on {key}"


@pytest.mark.parametrize("queue", ["critical", "default", "gpu.generation", "reports"])
def test_each_script_call_touches_one_slot(queue: str) -> None:
    keys = QueueKeys("triage", queue)
    calls = {
        "enqueue": keys.block(),
        "fetch": [*keys.block(), keys.acks("0f1e2d3c")],
        "requeue": [*keys.block(), keys.acks("0f1e2d3c")],
        "settle": keys.settle_keys("0f1e2d3c"),
        "pause/resume": [keys.paused, keys.wake],
    }
    assert len(keys.block()) == BLOCK_SIZE
    for name, names in calls.items():
        assert len({key_slot(k.encode()) for k in names}) == 1, name
