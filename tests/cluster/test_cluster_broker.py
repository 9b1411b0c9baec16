"""The broker on a real 3-master Redis Cluster, in-process: every key hash-tagged so each script
touches one slot, sharded queues spread over the masters, the steps that span slots idempotent,
and the operator's views summing the shards."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from triage.admin.dlq import DeadLetters
from triage.admin.dlq_model import Filter
from triage.admin.redis_cluster import LocalCluster
from triage.broker.consumer import TriageConsumer
from triage.broker.delivery import shard_of
from triage.broker.errors import Backpressure
from triage.broker.limits import Limits
from triage.broker.redis_broker import TriageBroker
from triage.broker.slots import CrossSlotError, slot_of
from triage.broker.storing import BATCH_KEY_PREFIX

NS = "cl"
HOT = "hot"  # three shards
QUEUES = ("critical", "default", "background", HOT)
# Keys that are not a queue's and are written by one single-key command each (no script, no
# transaction): Dramatiq's result keys and group barriers, spread over the nodes on purpose.
UNTAGGED_SINGLE_KEY = ("cl-results:",)

BrokerFactory = Callable[..., TriageBroker]


@pytest.fixture
def new_broker(cluster_url: str) -> Iterator[BrokerFactory]:
    made: list[TriageBroker] = []

    def factory(**options: Any) -> TriageBroker:
        options.setdefault("shards", lambda queue: 3 if queue == HOT else 1)
        broker = TriageBroker(url=cluster_url, namespace=options.pop("namespace", NS), middleware=[], **options)
        for queue in QUEUES:
            broker.declare_queue(queue)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.close()


def message(queue: str, i: int, **options: Any) -> Message[Any]:
    return Message(queue, "job", (i,), {}, options)


def fetch_all(consumer: TriageConsumer, count: int = 100) -> list[Any]:
    taken: list[Any] = []
    while consumer._fetch(count):
        taken += consumer.cache
        consumer.cache.clear()
    return taken


def keyspace(cluster: LocalCluster) -> list[str]:
    found: list[str] = []
    for node in cluster.masters():
        with redis.Redis(host="127.0.0.1", port=node.port) as direct:
            found += [key.decode() for key in direct.scan_iter(count=1000)]
    return found


def test_every_key_is_hash_tagged_and_a_sharded_queue_spans_the_masters(
    cluster: LocalCluster, new_broker: BrokerFactory
) -> None:
    # Given a broker on a 3-master cluster, with queue `hot` in three shards
    broker = new_broker()
    # When messages go through every path: tenants, delays, dedup keys, acks, retries, dead letters
    sent = [broker.enqueue(message(q, i, tenant=f"t{i % 4}")) for q in QUEUES for i in range(6)]
    broker.enqueue(message(HOT, 99), delay=60_000)
    broker.enqueue(message("default", 100, dedup_key="once", dedup_mode="until_done", dedup_ttl=60))
    broker.registry.register(QUEUES, broker.queue_labels())
    for queue in QUEUES:
        consumer = broker.consume(queue, prefetch=50, timeout=100)
        for i, proxy in enumerate(fetch_all(consumer)):
            if i == 0:
                broker.retry_later(proxy, proxy._message.copy(), delay_ms=60_000)
                consumer.ack(proxy)
            elif i == 1:
                consumer.nack(proxy)
            else:
                consumer.ack(proxy)
    # Then every key carries a hash tag (one slot per script call), but for the single-key ones
    keys = keyspace(cluster)
    assert keys
    assert len(sent) == 24
    assert [k for k in keys if not k.startswith("{") and not k.startswith(UNTAGGED_SINGLE_KEY)] == []
    # And the queues are on more than one master, and the three shards of `hot` on three
    shard_nodes = {cluster.node_for_key(keys.tag).port for keys in broker.shards(HOT)[:3]}
    queue_nodes = {cluster.node_for_key(broker.keys(q).tag).port for q in QUEUES}
    assert len(shard_nodes) == 3
    assert len(queue_nodes) > 1
    # And the counts add the shards up: 6 + 1 delayed + one retry per queue waiting, one dead letter each
    stats = broker.counts(HOT)
    assert stats == (0, 2, 0)


def test_a_namespace_that_would_split_a_queue_over_slots_is_refused_at_startup(new_broker: BrokerFactory) -> None:
    # Given a namespace that empties the hash tag ("{}..." hashes the whole key, slot by key)
    # When a queue is declared on a cluster
    with pytest.raises(CrossSlotError, match=r"queue 'critical'.* slots .*must not contain '\{' or '\}'"):
        new_broker(namespace="}x")


def test_a_tenant_keeps_its_shard_and_other_messages_go_round_robin(new_broker: BrokerFactory, cc: redis.Redis) -> None:
    broker = new_broker()
    # When 30 untenanted messages and 10 of tenant acme are sent to `hot`
    for i in range(30):
        broker.enqueue(message(HOT, i))
    for i in range(10):
        broker.enqueue(message(HOT, i, tenant="acme"))
    # Then the untenanted ones are spread 10 / 10 / 10, and acme's all sit in one shard
    shards = broker.shards(HOT)
    depth = [int(cc.hlen(keys.items)) for keys in shards]
    home = zlib.crc32(b"acme") % 3
    assert depth[3] == 0  # the queue's own keys: served, never written
    assert [d - (10 if i == home else 0) for i, d in enumerate(depth[:3])] == [10, 10, 10]


def test_messages_queued_before_the_queue_was_sharded_are_still_served(cluster_url: str) -> None:
    # Given three messages sent while `hot` had one shard
    before = TriageBroker(url=cluster_url, namespace=NS, middleware=[])
    before.enqueue_batch([message(HOT, i) for i in range(3)])
    # When the queue gets three shards, and a new message is sent
    after = TriageBroker(url=cluster_url, namespace=NS, middleware=[], shards=lambda queue: 3)
    after.enqueue(message(HOT, 3))
    # Then the counts see all four, and a consumer takes all four
    assert after.counts(HOT)[0] == 4
    taken = fetch_all(after.consume(HOT, prefetch=10, timeout=100))
    assert sorted(m.args[0] for m in taken) == [0, 1, 2, 3]
    assert {shard_of(m) for m in taken} >= {3}  # the queue's own keys: the last shard served


def test_a_consumer_serves_the_shards_in_turn(new_broker: BrokerFactory) -> None:
    # Given four messages in each shard
    broker = new_broker()
    broker.enqueue_batch([message(HOT, i) for i in range(12)])
    # When a consumer fetches one at a time
    consumer = broker.consume(HOT, prefetch=1, timeout=100)
    order = []
    for _ in range(12):
        assert consumer._fetch(1)
        proxy = consumer.cache.popleft()
        order.append(shard_of(proxy))
        consumer.ack(proxy)
    # Then it takes from each shard in turn
    assert order == [0, 1, 2] * 4


def test_priority_and_tenant_round_robin_hold_within_a_shard(new_broker: BrokerFactory) -> None:
    # Given two tenants that hash to the same shard: A floods, B sends two, then A one urgent message
    same = [f"t{i}" for i in range(100) if zlib.crc32(f"t{i}".encode()) % 3 == 0][:2]
    a, b = same
    broker = new_broker()
    broker.enqueue_batch([message(HOT, i, tenant=a, priority=5) for i in range(10)])
    broker.enqueue_batch([message(HOT, 100 + i, tenant=b, priority=5) for i in range(2)])
    broker.enqueue(message(HOT, 999, tenant=a, priority=9))
    # When a consumer takes them all
    taken = fetch_all(broker.consume(HOT, prefetch=20, timeout=100), 20)
    # Then the urgent one first, then A and B in turn until B has none left
    args = [m.args[0] for m in taken]
    assert args[0] == 999
    assert args[1:5] == [0, 100, 1, 101]
    assert len(args) == 13


def test_a_move_to_another_slot_is_stored_once_however_often_it_is_handed_over(
    new_broker: BrokerFactory, cc: redis.Redis
) -> None:
    # Given a message fetched from `default`, moved by a policy to `background` (another slot)
    broker = new_broker()
    assert slot_of(broker.keys("default").tag) != slot_of(broker.keys("background").tag)
    broker.enqueue(message("default", 1, tenant="acme"))
    consumer = broker.consume("default", prefetch=1, timeout=100)
    (proxy,) = fetch_all(consumer)
    broker.move_later(proxy, proxy._message.copy(queue_name="background"), delay_ms=0)
    # When it is settled, and the hand-over runs a second time (a crash between the two steps)
    consumer.ack(proxy)
    consumer.ack(proxy)
    # Then it is in `background` once, gone from `default`, counted as moved once
    assert broker.counts("background") == (1, 0, 0)
    assert broker.counts("default") == (0, 0, 0)
    assert int(cc.hget(broker.keys("default").stats, "moved_total") or 0) == 1
    moved = fetch_all(broker.consume("background", prefetch=5, timeout=100))
    assert [m.args for m in moved] == [(1,)]
    assert moved[0].options["tenant"] == "acme"


def test_a_batch_over_several_slots_sent_again_stores_each_message_once(new_broker: BrokerFactory) -> None:
    # Given a batch over three queues and the three shards of `hot`
    broker = new_broker()
    batch = [message(q, i) for q in ("critical", "default", HOT) for i in range(6)]
    broker.enqueue_batch(batch)
    # When it is sent again as it was (the producer did not see its reply)
    broker.enqueue_batch(batch)
    # Then each message is stored once
    assert [broker.counts(q)[0] for q in ("critical", "default", HOT)] == [6, 6, 6]


def test_a_batch_refused_in_a_later_slot_says_what_was_stored_and_can_be_sent_again(
    new_broker: BrokerFactory,
) -> None:
    # Given tenant acme may have 2 pending messages on `default`, and none on `critical` yet
    caps: dict[str, Limits] = {"acme": (0, 0, 0, 2)}
    broker = new_broker(tenant_limits=lambda queue: ((0, 0, 0, 0), caps if queue == "default" else {}))
    batch = [message("critical", i, tenant="acme") for i in range(3)]
    batch += [message("default", i, tenant="acme") for i in range(3)]
    # When the batch is sent
    with pytest.raises(Backpressure) as refused:
        broker.enqueue_batch(batch)
    # Then the refusal lists what the first slot stored, and the second stored nothing
    assert sorted(refused.value.stored) == sorted(m.message_id for m in batch[:3])
    assert broker.counts("critical")[0] == 3
    assert broker.counts("default")[0] == 0
    # And once acme may have more, the same batch stores only what was missing
    caps["acme"] = (0, 0, 0, 10)
    broker._limits_published.clear()
    broker.publish_tenant_limits("default")
    broker.enqueue_batch(batch)
    assert [broker.counts(q)[0] for q in ("critical", "default")] == [3, 3]


def test_dead_letters_of_a_sharded_queue_are_listed_requeued_and_purged(new_broker: BrokerFactory) -> None:
    # Given six messages of `hot` failed and dead-lettered, two per shard
    broker = new_broker()
    broker.enqueue_batch([message(HOT, i) for i in range(6)])
    consumer = broker.consume(HOT, prefetch=10, timeout=100)
    for proxy in fetch_all(consumer):
        consumer.nack(proxy)
    dead = DeadLetters(broker, lambda: dict.fromkeys(QUEUES, "default"))
    # When an operator lists and groups them
    page, _ = dead.page(Filter(queue=HOT), limit=10)
    (group,) = dead.summary(Filter(queue=HOT))
    # Then they are one queue's: six entries, one group of six, from the three shards
    assert len(page) == 6
    assert group.count == 6
    assert sorted({entry.shard for entry in page}) == [0, 1, 2]
    # When four are requeued and two purged
    done = dead.requeue(page[:4])
    purged = dead.purge(page[4:])
    # Then each went back to the shard it died in, and none is left
    assert (done.done, purged.done) == (4, 2)
    assert broker.counts(HOT)[0] == 4
    assert dead.page(Filter(queue=HOT))[0] == []
    back = fetch_all(broker.consume(HOT, prefetch=10, timeout=100))
    assert sorted(shard_of(m) for m in back) == sorted(e.shard for e in page[:4])


def test_pause_and_resume_cover_every_shard(new_broker: BrokerFactory) -> None:
    broker = new_broker()
    broker.enqueue_batch([message(HOT, i) for i in range(6)])
    # When the sharded queue is paused
    broker.pause(HOT)
    # Then no shard hands anything out, and it reads as paused
    assert fetch_all(broker.consume(HOT, prefetch=10, timeout=100)) == []
    assert broker.is_paused(HOT)
    # When it is resumed, all six come out
    broker.resume(HOT)
    assert not broker.is_paused(HOT)
    assert len(fetch_all(broker.consume(HOT, prefetch=10, timeout=100))) == 6


def test_a_durable_enqueue_waits_on_the_slots_own_primary(new_broker: BrokerFactory) -> None:
    # Given a cluster without replicas and a broker that wants one replica to confirm
    broker = new_broker(min_replicas=1, replica_timeout_ms=50)
    # When a message is sent, Then WAIT ran after the script on its node: 0 replicas, refused
    from triage.broker.errors import ReplicationError

    with pytest.raises(ReplicationError, match="confirmed by 0 of 1"):
        broker.enqueue(message(HOT, 1))
    assert broker.counts(HOT)[0] == 1  # on the primary all the same, as the error says


def test_keys_of_a_batch_step_do_not_linger_beyond_their_window(new_broker: BrokerFactory, cc: redis.Redis) -> None:
    # Given a batch over two slots (each message takes a window key on its id)
    broker = new_broker()
    batch = [message("critical", 1), message("default", 2)]
    broker.enqueue_batch(batch)
    # Then each key is held for an hour at most, on its message's queue
    ttl_ms = int(cc.zscore(broker.keys("critical").dedup_exp, BATCH_KEY_PREFIX + batch[0].message_id) or 0)
    assert 0 < ttl_ms - int(cc.time()[0]) * 1000 <= 3_600_000 + 1000
