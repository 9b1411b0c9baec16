"""Redis key names of the Triage broker.

Guarantees: every key of a queue carries the queue's hash tag `{namespace:queue}`, so
one queue's keys live in one Redis Cluster slot and a script over one queue is a legal
cluster script. `QueueKeys.block()` is the 17-key block of `lua/_placement.lua`, in its
order.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = range(1, 11)  # message priorities; 10 is the most urgent
BLOCK_SIZE = 17


@dataclass(frozen=True)
class QueueKeys:
    namespace: str
    queue: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}:{self.queue}}}"

    def key(self, name: str) -> str:
        return f"{self.tag}:{name}"

    @property
    def msgs(self) -> str:
        return self.key("msgs")

    @property
    def items(self) -> str:
        return self.key("items")

    @property
    def state(self) -> str:
        return self.key("state")

    @property
    def delayed(self) -> str:
        return self.key("delayed")

    @property
    def stats(self) -> str:
        return self.key("stats")

    @property
    def paused(self) -> str:
        return self.key("paused")

    @property
    def wake(self) -> str:
        return self.key("wake")

    @property
    def dead(self) -> str:
        return self.key("dead")

    @property
    def dead_msgs(self) -> str:
        return self.key("dead.msgs")

    def rr(self, level: int) -> str:
        return self.key(f"rr:{level}")

    def acks(self, consumer_id: str) -> str:
        return self.key(f"acks:{consumer_id}")

    def block(self) -> list[str]:
        """The 17 keys every placement script takes, in `_placement.lua` order."""
        return [
            self.msgs,
            self.items,
            self.state,
            self.delayed,
            self.stats,
            self.paused,
            self.wake,
            *(self.rr(level) for level in LEVELS),
        ]

    def settle_keys(self, consumer_id: str) -> list[str]:
        return [self.msgs, self.stats, self.acks(consumer_id), self.dead, self.dead_msgs]

    def message_keys(self) -> list[str]:
        """Every key that holds messages (what a flush drops)."""
        return [self.msgs, self.items, self.state, self.delayed, *(self.rr(level) for level in LEVELS)]
