"""The broker's Lua scripts, loaded once per client: `_placement.lua` prepended to each."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).parent / "lua"
SCRIPT_NAMES = ("enqueue", "fetch", "settle", "requeue", "reclaim")


def source(name: str) -> str:
    prelude = (LUA_DIR / "_placement.lua").read_text()
    return prelude + "\n" + (LUA_DIR / f"{name}.lua").read_text()


def register(client: redis.Redis) -> dict[str, Script]:
    return {name: client.register_script(source(name)) for name in SCRIPT_NAMES}
