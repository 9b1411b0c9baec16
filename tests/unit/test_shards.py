"""Sharded queues and cluster slots without a server: where each shard's keys fall, the check that
refuses keys of two slots, the `shards` setting, and the cluster URL's form."""

from __future__ import annotations

import pytest

from triage.broker.connection import cluster_from_url
from triage.broker.keys import QueueKeys, shard_tags
from triage.broker.slots import CrossSlotError, check_slots, slot_of
from triage.settings import ConfigError, load_settings, shard_counter


@pytest.mark.parametrize("shards", [2, 3, 4, 6, 16])
def test_each_shard_falls_in_the_middle_of_its_share_of_the_slots(shards: int) -> None:
    # When a queue's shard tags are worked out
    tags = shard_tags("triage", "events", shards)
    # Then shard i's slot lies in the middle of the i-th 1/N of the slot space, so an evenly
    # split cluster of N masters (what `redis-cli --cluster create` makes) holds one shard each
    width = 16384 / shards
    for i, tag in enumerate(tags):
        assert abs(slot_of(tag) - (i + 0.5) * width) <= width / 8
    # And every process finds the same tags
    shard_tags.cache_clear()
    assert shard_tags("triage", "events", shards) == tags


def test_an_unsharded_queue_keeps_its_own_tag() -> None:
    assert shard_tags("triage", "events", 1) == ("{triage:events}",)


def test_every_script_of_a_shard_takes_keys_of_one_slot() -> None:
    # Given the keys of a shard of a queue
    keys = QueueKeys("triage", "events", shard_tags("triage", "events", 3)[1])
    lists = [keys.enqueue_keys(), keys.fetch_keys("w1"), keys.settle_keys("w1"), keys.reclaim_keys("w1")]
    # Then they share one slot (the check passes)
    check_slots(("shard", keys) for keys in lists)


def test_keys_of_two_slots_are_refused_with_the_queue_named() -> None:
    # Given a namespace that empties the hash tag: "{}x:q}..." hashes each key whole
    keys = QueueKeys("}x", "q")
    # Then the check names what and which keys, and why
    with pytest.raises(CrossSlotError, match=r"queue q: its keys fall in \d+ Redis Cluster slots .* must not contain"):
        check_slots([("queue q", keys.enqueue_keys())])


def test_a_queue_is_given_shards_in_the_object_form_of_its_setting() -> None:
    settings = load_settings(queues={"events": {"tier": "background", "shards": 3}, "sms": "default"})
    assert settings.queue_tiers() == {"events": "background", "sms": "default"}
    count = shard_counter(settings)
    assert (count("events"), count("sms"), count("default")) == (3, 1, 1)


@pytest.mark.parametrize("shards", [0, 65])
def test_a_shard_count_out_of_range_names_the_variable(shards: int) -> None:
    with pytest.raises(ConfigError, match=r"config\.QUEUES\['events'\]\['shards'\]|TRIAGE_QUEUES__EVENTS__SHARDS"):
        load_settings({"QUEUES": {"events": {"tier": "background", "shards": shards}}})


def test_a_cluster_url_names_its_nodes_and_database_zero_only() -> None:
    with pytest.raises(ValueError, match="database 0 only"):
        cluster_from_url("redis+cluster://127.0.0.1:7000/2")
    with pytest.raises(ValueError, match="at least one node"):
        cluster_from_url("redis+cluster:///")
