"""The broker's Lua scripts, loaded once per client.

Guarantees: each script is loaded as one text: a header that defines the constants the
Lua shares with Python (`BLOCK` = `keys.BLOCK_SIZE`, the keys of a queue's block;
`TOP_LEVEL` and `BOTTOM_LEVEL` = `priority.MAX_PRIORITY` and `MIN_PRIORITY`, its priority
levels; `SLOT_PARKED` and `TENANT_SWEEP_PER_FETCH` from `limits`; `ENQUEUE_FIELDS` = `outcome.ENQUEUE_FIELDS`, the
values per message in the enqueue call), then the preludes it uses (`_fifo.lua`, the
FIFO / round-robin structure of a queue and its helpers; `_dead.lua`, the dead letters;
`_tenants.lua`, the per-tenant limits; `_dedup.lua`, the deduplication keys), then the script. No Lua file spells
those constants: they are defined once, in Python.
"""

from __future__ import annotations

import functools
from pathlib import Path

import redis
from redis.commands.core import Script

from .keys import BLOCK_SIZE
from .limits import SLOT_PARKED, TENANT_SWEEP_PER_FETCH
from .outcome import ENQUEUE_FIELDS
from .priority import MAX_PRIORITY, MIN_PRIORITY

LUA_DIR = Path(__file__).parent / "lua"
PRELUDE = "_fifo"
DEAD = "_dead"
TENANTS = "_tenants"
DEDUP = "_dedup"
# Each script and the preludes it includes, in order.
PRELUDES: dict[str, tuple[str, ...]] = {
    "enqueue": (PRELUDE, TENANTS, DEDUP),
    "fetch": (PRELUDE, TENANTS),
    "settle": (PRELUDE, DEAD, TENANTS, DEDUP),
    "requeue": (PRELUDE, TENANTS),
    "retry": (PRELUDE, TENANTS),
    "reclaim": (PRELUDE, DEAD, TENANTS, DEDUP),
    "dlq": (PRELUDE, DEAD, TENANTS),
    "dedup": (PRELUDE, DEDUP),
    "unpause": (),
}
SCRIPT_NAMES = tuple(PRELUDES)  # the scripts over a queue's keys, loaded by the broker
# Scripts over keys of their own (not a queue's), loaded by their owner with `load`.
STANDALONE = ("breaker", "actor_limits", "oldest", "detail", "counter")


def header() -> str:
    """The Lua lines that define the constants shared with Python, from their Python values."""
    return (
        "-- Constants of keys.py and priority.py.\n"
        f"local BLOCK = {BLOCK_SIZE} -- keys in a queue's block (keys.BLOCK_SIZE)\n"
        f"local TOP_LEVEL = {MAX_PRIORITY} -- the most urgent priority level (priority.MAX_PRIORITY)\n"
        f"local BOTTOM_LEVEL = {MIN_PRIORITY} -- the least urgent priority level (priority.MIN_PRIORITY)\n"
        f"local SLOT_PARKED = {SLOT_PARKED} -- parked until a slot is released (limits.SLOT_PARKED)\n"
        f"local TENANT_SWEEP_PER_FETCH = {TENANT_SWEEP_PER_FETCH} -- idle tenants a fetch forgets at most\n"
        f"local ENQUEUE_FIELDS = {ENQUEUE_FIELDS} -- values per message in enqueue's ARGV (outcome.ENQUEUE_FIELDS)\n"
    )


@functools.cache
def source(name: str) -> str:
    """The text Redis runs for script `name`: the header, its preludes, then `<name>.lua` (read
    once per process: `queue_stats` loads `oldest` at every call)."""
    parts = [header(), *((LUA_DIR / f"{part}.lua").read_text() for part in (*PRELUDES.get(name, ()), name))]
    return "\n".join(parts)


def register(client: redis.Redis) -> dict[str, Script]:
    return {name: client.register_script(source(name)) for name in SCRIPT_NAMES}


def load(client: redis.Redis, name: str) -> Script:
    """One of the `STANDALONE` scripts, registered on `client`."""
    return client.register_script(source(name))
