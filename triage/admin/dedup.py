"""`triage dedup`: who holds a deduplication key, and the operator's release.

Guarantees: works from Redis and the environment alone, like the other operator commands.
A key lives on one queue (under its hash tag): `--queue` names it, else every queue that
`triage stats` knows is looked at. `show` prints the holder's message id, the mode and the
time left; `release` frees the key at once, whoever holds it (the next send with it is
stored). A key held nowhere exits with status 3.
"""

from __future__ import annotations

import json

import click

from triage.broker.dedup import KeyHolder, drop, holder
from triage.broker.keys import QueueKeys

from .cli_common import NOT_FOUND, admin_or_exit, fail, reporting_redis_errors
from .ops import Admin


def holders(admin: Admin, key: str, queue: str | None) -> list[tuple[KeyHolder, QueueKeys]]:
    """Who holds `key`, on `queue` or on every known queue (any shard), and where."""
    queues = [queue] if queue else list(admin.queues())
    found = ((holder(admin.broker.client, keys, key), keys) for q in queues for keys in admin.broker.shards(q))
    return [(h, keys) for h, keys in found if h is not None]


@click.group("dedup")
def dedup_group() -> None:
    """Deduplication keys: who holds one, and releasing it."""


@dedup_group.command("show")
@click.argument("key")
@click.option("--queue", help="The queue the key belongs to (default: look at every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(key: str, queue: str | None, as_json: bool) -> None:
    """Who holds KEY: the message id, the mode, and for how long still."""
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        found = holders(admin, key, queue)
    if not found:
        fail(f"dedup key {key!r} is not held" + (f" on queue {queue!r}" if queue else " on any queue"), NOT_FOUND)
    if as_json:
        click.echo(json.dumps({"holders": [h for h, _ in found]}, indent=2))
        return
    for h, _ in found:
        click.echo(
            f"{h['key']}: held on queue {h['queue']} by message {h['message_id']} ({h['mode']}), "
            f"expires in {h['expires_in_seconds']:.0f} s"
        )


@dedup_group.command("release")
@click.argument("key")
@click.option("--queue", help="The queue the key belongs to (default: every queue that holds it).")
def release(key: str, queue: str | None) -> None:
    """Free KEY now, whoever holds it: the next send with it is stored."""
    admin = admin_or_exit()
    with reporting_redis_errors(admin.settings):
        found = holders(admin, key, queue)
        for _, keys in found:
            drop(admin.broker.client, keys, key)
    if not found:
        fail(f"dedup key {key!r} is not held" + (f" on queue {queue!r}" if queue else " on any queue"), NOT_FOUND)
    for h, _ in found:
        click.echo(f"released {h['key']} on queue {h['queue']} (held by message {h['message_id']})")
