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


FUNCTION = re.compile(r"local function (\w+)\(([^)]*)\)")


def key_expressions(lua: str) -> tuple[set[str], dict[str, list[int]]]:
    """Locals bound to KEYS, and for each local function the positions of its parameters used as keys."""
    from_keys = set(LOCAL_FROM_KEYS.findall(lua))
    key_params: dict[str, list[int]] = {}
    for match in FUNCTION.finditer(lua):
        name, params = match.group(1), [p.strip() for p in match.group(2).split(",")]
        body = lua[match.end() : lua.find("\nend", match.end())]
        used = {key.strip() for _, key in CALL.findall(body)}
        key_params[name] = [i for i, p in enumerate(params) if p in used]
    return from_keys, key_params


def is_key(expression: str, from_keys: set[str]) -> bool:
    return expression.startswith("KEYS[") or expression in from_keys


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_key_a_script_touches_comes_from_KEYS(name: str) -> None:
    # Given the script as it is loaded (the placement prelude included)
    lua = source(name)
    from_keys, key_params = key_expressions(lua)
    calls = CALL.findall(lua)
    assert calls
    # Then the key of every redis.call is KEYS[...], a local taken from KEYS, or a parameter
    # of a helper whose every caller passes one of those
    params = {p.strip() for m in FUNCTION.finditer(lua) for p in m.group(2).split(",")}
    for command, key in calls:
        key = key.strip()
        assert is_key(key, from_keys) or key in params, f"{name}.lua: {command} on {key}"
    for function, positions in key_params.items():
        for call in re.finditer(rf"(?<!function ){function}\(([^)]*)\)", lua):
            args = [a.strip() for a in call.group(1).split(",")]
            for position in positions:
                assert is_key(args[position], from_keys), f"{name}.lua: {function}(... {args[position]} ...)"


@pytest.mark.parametrize("queue", ["critical", "default", "gpu.generation", "reports"])
def test_each_script_call_touches_one_slot(queue: str) -> None:
    keys = QueueKeys("triage", queue)
    calls = {
        "enqueue": keys.enqueue_keys(),
        "fetch/requeue": keys.fetch_keys("0f1e2d3c"),
        "settle": keys.settle_keys("0f1e2d3c"),
        "reclaim": keys.reclaim_keys("0f1e2d3c"),
        "pause/resume": [keys.paused, keys.wake],
    }
    assert len(keys.block()) == BLOCK_SIZE
    for name, names in calls.items():
        assert len({key_slot(k.encode()) for k in names}) == 1, name
