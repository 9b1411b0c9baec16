"""The Lua scripts and the Python side agree on keys: declared keys only, one hash slot per queue,
documented headers, each named key at the position Python passes it, constants defined in Python."""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping

import pytest
from redis.crc import key_slot

from triage.broker.keys import BLOCK_SIZE, LEVELS, QueueKeys
from triage.broker.priority import MAX_PRIORITY, MIN_PRIORITY
from triage.broker.scripts import (
    DEAD,
    DEDUP,
    LUA_DIR,
    PRELUDE,
    PRELUDES,
    SCRIPT_NAMES,
    STANDALONE,
    TENANTS,
    header,
    source,
)

CALL = re.compile(r'redis\.call\("(\w+)",\s*([^,)]+)')
LOCAL_FROM_KEYS = re.compile(r"local (\w+) = KEYS\[")
KEY_LOCAL = re.compile(r"^\s*local (\w+) = KEYS\[([^\]]+)\]\s*$", re.MULTILINE)
HEADER_KEY = re.compile(r"^--\s+(\w+)\s+KEYS\[([^\]]+)\]", re.MULTILINE)
CONSTANT = re.compile(r"^local ([A-Z_]+(?:, [A-Z_]+)*) = (.+)$", re.MULTILINE)
BLOCK_OFFSET = re.compile(r"^\s*local b = (.+)$", re.MULTILINE)
FIFO_BLOCK_LINE = re.compile(
    r"^--\s+b \+ ([A-Z]+(?: \+ level)?)\s+(\d+)(?: \.\. (\d+))?\s+(\{ns:Q\}:\S+)", re.MULTILINE
)

# The queue a retry comes from, when it goes to another (retry.lua names its keys `src_*`).
SOURCE = QueueKeys("ns", "src")
# What the broker passes to each script for one queue (redis_broker._store, consumer, registry.reap,
# admin.dlq), and the consumer id that names its acks key.
PASSED: dict[str, tuple[Callable[[QueueKeys], list[str]], str]] = {
    "enqueue": (lambda keys: keys.enqueue_keys(), ""),
    "fetch": (lambda keys: keys.fetch_keys("c"), "c"),
    "requeue": (lambda keys: keys.requeue_keys("c"), "c"),
    "settle": (lambda keys: keys.settle_keys("c"), "c"),
    "retry": (lambda keys: keys.retry_keys(SOURCE, "c"), "c"),
    "reclaim": (lambda keys: keys.reclaim_keys("w"), "w"),
    "dlq": (lambda keys: keys.dead_letter_keys(), ""),
    "dedup": (lambda keys: keys.dedup_script_keys(), ""),
}


def lua_file(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def without_comments(lua: str) -> str:
    return re.sub(r"--.*", "", lua)


OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


def evaluate(expression: str, names: Mapping[str, int]) -> int:
    """A Lua key position (integers, names, + - * and parentheses) as a number."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not a key position: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def lua_constants() -> dict[str, int]:
    """The upper-case locals of the generated header and of the prelude, evaluated in order."""
    constants: dict[str, int] = {}
    for names, values in CONSTANT.findall(without_comments(header() + lua_file(PRELUDE))):
        for constant, value in zip(names.split(", "), values.split(","), strict=True):
            constants[constant] = evaluate(value.strip(), constants)
    return constants


def helpers() -> dict[str, list[tuple[str, str]]]:
    """For each prelude function, the keys it names as locals: (name, position expression)."""
    prelude = lua_file(PRELUDE)
    found = {}
    for match in re.finditer(r"^local function (\w+)\(", prelude, re.MULTILINE):
        body = prelude[match.end() : prelude.find("\nend", match.end())]
        found[match.group(1)] = KEY_LOCAL.findall(body)
    return found


def positions(name: str, groups: int, pairs: list[tuple[str, str]]) -> list[tuple[str, int, int, int]]:
    """(key name, KEYS index, queue group, level) of every key in `pairs`, for each block offset
    the script takes with `groups` queues and each level (for keys that depend on it)."""
    constants = lua_constants()
    offset = BLOCK_OFFSET.search(lua_file(name))
    out = []
    for group in range(1, groups + 1):
        b = evaluate(offset.group(1), {**constants, "g": group}) if offset else 0
        for key, expression in pairs:
            for level in LEVELS if "level" in expression else [MIN_PRIORITY]:
                index = evaluate(expression, {**constants, "b": b, "level": level})
                out.append((key, index, group, level))
    return out


def named_keys(name: str) -> list[tuple[str, str]]:
    """The keys a script names as locals, its own and those of the prelude helpers it calls."""
    script = without_comments(lua_file(name))
    pairs = KEY_LOCAL.findall(script)
    for helper, helper_pairs in helpers().items():
        if re.search(rf"\b{helper}\(", script):
            pairs += helper_pairs
    return pairs


def expected_key(key: str, keys: QueueKeys, consumer: str, level: int) -> str:
    """The Python key that a Lua local named `key` stands for (`src_*`: of the queue a retry comes from)."""
    if key.startswith("src_"):
        key, keys = key.removeprefix("src_"), SOURCE
    if key == "acks":
        return keys.acks(consumer)
    if key == "rr":
        return keys.levels[level - MIN_PRIORITY]
    assert hasattr(keys, key), f"a Lua key local named {key!r} is no QueueKeys key"
    value = getattr(keys, key)
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, *STANDALONE, PRELUDE, DEAD, TENANTS, DEDUP])
def test_every_script_starts_with_the_keys_it_touches(name: str) -> None:
    # Given the Lua file as written
    header_lines = []
    for line in lua_file(name).splitlines():
        if not line.startswith("--"):
            break
        header_lines.append(line)
    # Then it opens with a comment that names its keys
    assert header_lines, f"{name}.lua has no header"
    assert any("KEYS" in line or "{ns:Q}" in line for line in header_lines)


FUNCTION = re.compile(r"local function (\w+)\(([^)]*)\)")


def key_expressions(lua: str) -> tuple[set[str], dict[str, list[int]]]:
    """Locals bound to KEYS, and for each local function the positions of its parameters used as
    keys: in its own redis.call, or passed on at a key position of another helper (to a fixpoint)."""
    from_keys = set(LOCAL_FROM_KEYS.findall(lua))
    functions = {}
    for match in FUNCTION.finditer(lua):
        params = [p.strip() for p in match.group(2).split(",")]
        functions[match.group(1)] = (params, lua[match.end() : lua.find("\nend", match.end())])
    key_params: dict[str, list[int]] = {
        name: [i for i, p in enumerate(params) if p in {key.strip() for _, key in CALL.findall(body)}]
        for name, (params, body) in functions.items()
    }
    changed = True
    while changed:
        changed = False
        for name, (params, body) in functions.items():
            for callee, positions in key_params.items():
                for call in re.finditer(rf"(?<!function ){callee}\(([^)]*)\)", body):
                    args = [a.strip() for a in call.group(1).split(",")]
                    for position in positions:
                        if position < len(args) and args[position] in params:
                            index = params.index(args[position])
                            if index not in key_params[name]:
                                key_params[name].append(index)
                                changed = True
    return from_keys, key_params


def is_key(expression: str, from_keys: set[str]) -> bool:
    return expression.startswith("KEYS[") or expression in from_keys


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, *STANDALONE])
def test_every_key_a_script_touches_comes_from_KEYS(name: str) -> None:
    # Given the script as it is loaded (the header and the _fifo.lua prelude included)
    lua = source(name)
    from_keys, key_params = key_expressions(lua)
    calls = CALL.findall(lua)
    assert calls
    # Then the key of every redis.call is KEYS[...], a local taken from KEYS, or a parameter
    # of a helper whose every caller passes one of those
    params = {p.strip() for m in FUNCTION.finditer(lua) for p in m.group(2).split(",")}
    for command, key in calls:
        key = key.strip()
        if command == "publish":  # a channel, not a key: no slot, nothing stored
            continue
        assert is_key(key, from_keys) or key in params, f"{name}.lua: {command} on {key}"
    for function, key_positions in key_params.items():
        for call in re.finditer(rf"(?<!function ){function}\(([^)]*)\)", lua):
            args = [a.strip() for a in call.group(1).split(",")]
            enclosing = None  # the helper whose body the call is in, if any
            for match in FUNCTION.finditer(lua[: call.start()]):
                enclosing = match
            inside = enclosing is not None and lua.find("\nend", enclosing.end()) > call.start()
            own_params = [p.strip() for p in enclosing.group(2).split(",")] if enclosing and inside else []
            for position in key_positions:
                arg = args[position]
                passed_on = arg in own_params
                # a helper's own parameter, passed on: checked at that helper's callers (key_params)
                assert is_key(arg, from_keys) or passed_on, f"{name}.lua: {function}(... {arg} ...)"


@pytest.mark.parametrize(
    ("name", "groups"),
    [
        ("enqueue", 1),
        ("enqueue", 2),
        ("fetch", 1),
        ("requeue", 1),
        ("settle", 1),
        ("retry", 1),
        ("reclaim", 1),
        ("dlq", 1),
        ("dedup", 1),
    ],
)
def test_the_keys_python_passes_are_the_keys_the_script_names(name: str, groups: int) -> None:
    # Given the keys the broker passes to the script, for `groups` queues concatenated as
    # redis_broker._store does (only enqueue takes several queues)
    keys_of, consumer = PASSED[name]
    queues = [QueueKeys("ns", f"q{group}") for group in range(1, groups + 1)]
    passed = [key for queue in queues for key in keys_of(queue)]
    # When the positions the script names (its locals, and those of the helpers it calls) and
    # the positions its header declares are evaluated with the Python constants
    named = positions(name, groups, named_keys(name))
    declared = positions(name, groups, HEADER_KEY.findall(lua_file(name)))
    # Then the highest position the script can use is the number of keys passed, none is beyond it
    assert max(index for _, index, _, _ in named) == len(passed), f"{name}.lua names keys up to a position"
    assert max(index for _, index, _, _ in declared) == len(passed), f"{name}.lua's header declares keys up to"
    for key, index, _, _ in named + declared:
        assert 1 <= index <= len(passed), f"{name}.lua: {key} at KEYS[{index}] of {len(passed)}"
    # And each named key is the Python key at that position
    for key, index, group, level in named:
        expected = expected_key(key, queues[group - 1], consumer, level)
        assert passed[index - 1] == expected, f"{name}.lua: {key} is KEYS[{index}] = {passed[index - 1]}"


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, *STANDALONE])
def test_each_header_lists_the_keys_its_script_names(name: str) -> None:
    # Given the script's header and its code
    lua = lua_file(name)
    # When the keys listed in the header as `name  KEYS[position]` are read
    listed = dict(HEADER_KEY.findall(lua))
    # Then they are the keys the script names as locals, at the same positions
    assert listed == dict(KEY_LOCAL.findall(without_comments(lua)))


def test_the_block_is_the_one_fifo_lua_describes() -> None:
    # Given a queue's block in Python and the block that _fifo.lua's header describes
    block = QueueKeys("ns", "Q").block()
    constants = lua_constants()
    described: dict[int, str] = {}
    for expression, first, last, template in FIFO_BLOCK_LINE.findall(lua_file(PRELUDE)):
        levels = list(LEVELS) if "level" in expression else [MIN_PRIORITY]
        indexes = [evaluate(f"b + {expression}", {**constants, "b": 0, "level": level}) for level in levels]
        # Then the numbers written in the header are the positions the offsets give
        assert (int(first), int(last or first)) == (indexes[0], indexes[-1]), expression
        for level, index in zip(levels, indexes, strict=True):
            described[index] = template.replace("level", str(level))
    # Then BLOCK_SIZE counts the block's keys, and the header lists them all, in order
    assert len(block) == BLOCK_SIZE == constants["BLOCK"]
    assert sorted(described) == list(range(1, BLOCK_SIZE + 1))
    assert [described[index] for index in sorted(described)] == block


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_the_loaded_script_takes_its_constants_from_python(name: str) -> None:
    # When a script is loaded
    lua = source(name)
    # Then it starts with the header built from the Python constants, then its preludes
    assert lua.startswith(header() + "\n" + "\n".join(lua_file(prelude) for prelude in PRELUDES[name]))
    constants = lua_constants()
    assert constants["BLOCK"] == BLOCK_SIZE
    assert constants["TOP_LEVEL"] == MAX_PRIORITY
    assert constants["BOTTOM_LEVEL"] == MIN_PRIORITY
    # And no Lua file defines them again or spells their values
    for file in [name, PRELUDE, DEAD, TENANTS]:
        code = re.sub(r"KEYS\[[^\]]*\]", "KEYS[]", without_comments(lua_file(file)))  # positions: checked above
        for constant in ("BLOCK", "TOP_LEVEL", "BOTTOM_LEVEL"):
            assert not re.search(rf"\blocal {constant}\b", code), f"{file}.lua defines {constant}"
        for value in {BLOCK_SIZE, BLOCK_SIZE + 1, MAX_PRIORITY}:
            assert not re.search(rf"(?<![\w.]){value}(?![\w.])", code), f"{file}.lua spells {value}"


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, *STANDALONE, PRELUDE, DEAD, TENANTS, DEDUP])
def test_scripts_index_KEYS_only_in_named_locals_at_the_top(name: str) -> None:
    # Given the code of the Lua file, without comments
    lines = [line.strip() for line in without_comments(lua_file(name)).splitlines() if line.strip()]
    body_started = False
    for number, line in enumerate(lines, 1):
        local = KEY_LOCAL.match(line)
        # Then every KEYS index is a local that names one key...
        assert "KEYS[" not in line or local, f"{name}.lua: {line!r} indexes KEYS outside the named locals"
        if name == PRELUDE:
            # ...which, in the prelude, is an offset in the block, named: b + STATE, b + RR + level
            assert not local or re.fullmatch(r"b \+ [A-Z]+(?: \+ level)?", local.group(2)), line
            continue
        # ...declared before the script's body (only other locals and loop headers come first)
        # (or at the top of a loop over queues: a loop header starts a new block of names)
        if local:
            assert not body_started, f"{name}.lua, line {number}: {line!r} comes after the body started"
        elif line.startswith("for "):
            body_started = False
        elif not line.startswith("local "):
            body_started = True


@pytest.mark.parametrize("queue", ["critical", "default", "gpu.generation", "reports"])
def test_each_script_call_touches_one_slot(queue: str) -> None:
    # Given the keys of each script call for one queue
    keys = QueueKeys("triage", queue)
    calls = {
        "enqueue": keys.enqueue_keys(),
        "fetch": keys.fetch_keys("0f1e2d3c"),
        "requeue": keys.requeue_keys("0f1e2d3c"),
        "settle": keys.settle_keys("0f1e2d3c"),
        "retry within the queue": keys.retry_keys(keys, "0f1e2d3c"),
        "reclaim": keys.reclaim_keys("0f1e2d3c"),
        "dlq": keys.dead_letter_keys(),
        "pause/resume": [keys.paused, keys.wake],
    }
    # Then each call's keys hash to one cluster slot
    assert len(keys.block()) == BLOCK_SIZE
    for name, names in calls.items():
        assert len({key_slot(k.encode()) for k in names}) == 1, name
