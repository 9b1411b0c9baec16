"""Tier decorators, discovery and routing on the real broker and a real Redis."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
import redis

import actors
import triage
from actors import background, critical, default
from triage.middleware import InvalidPriority, RoutingError


def test_import_discovers_every_example_module() -> None:
    # Given the actors package is imported, then every module under actors/ was loaded
    assert {"analytics", "inventory", "notifications", "orders", "reports"} <= set(actors.modules)
    names = actors.runtime.broker.get_declared_actors()
    assert {"reserve_stock", "place_order", "send_email", "generate_report", "track_event"} <= names
    # And the broker is Dramatiq's global broker
    assert dramatiq.get_broker() is actors.runtime.broker


def test_bare_decorators_bind_tier_queue_and_policies() -> None:
    @critical
    def t_bare_critical() -> None: ...

    @background
    def t_bare_background() -> None: ...

    assert (t_bare_critical.queue_name, t_bare_critical.options["tier"]) == ("critical", "critical")
    assert t_bare_critical.options["message_priority"] == 9
    assert t_bare_critical.priority < t_bare_background.priority  # critical runs first in a worker
    assert t_bare_background.options["time_limit"] == 3_600_000


def test_decorator_options_and_extra_queue() -> None:
    # Given a background actor on its own queue with its own retries and priority
    @background(queue="t_exports", max_retries=1, priority=3, time_limit=60_000)
    def t_export(org_id: str) -> None: ...

    # Then the queue joins the background tier and the options win over the tier's
    assert t_export.queue_name == "t_exports"
    assert actors.runtime.taxonomy.queues["t_exports"] == "background"
    assert "t_exports" in actors.runtime.taxonomy.queues_of("background")
    assert t_export.options["max_retries"] == 1
    assert t_export.options["time_limit"] == 60_000
    assert t_export.options["message_priority"] == 3


def test_unknown_option_is_an_error_at_declaration() -> None:
    with pytest.raises(ValueError, match=r"@default on 't_unknown': unknown option\(s\) colour, queue_name"):

        @default(colour="red", queue_name="x")
        def t_unknown() -> None: ...

    assert "t_unknown" not in actors.runtime.broker.actors


def test_invalid_decorator_priority_is_an_error_at_declaration() -> None:
    with pytest.raises(InvalidPriority, match=r"'t_prio'.*got 42"):

        @critical(priority=42)
        def t_prio() -> None: ...


def test_queue_cannot_belong_to_two_tiers() -> None:
    with pytest.raises(RoutingError, match="queue 'reports' belongs to tier 'background', not 'critical'"):

        @critical(queue="reports")
        def t_conflict() -> None: ...


def test_plain_dramatiq_actor_is_routed_to_critical(r: redis.Redis) -> None:
    # Given an existing plain Dramatiq actor whose name the routing rules know
    @dramatiq.actor(actor_name="erp.orders.tasks.reserve_stock")
    def reserve_stock(order_id: str, sku: str, qty: int) -> None: ...

    # When it is sent
    message: Any = reserve_stock.send("o-1", "SKU-1", 2)
    # Then it lands on the critical queue with the critical priority
    assert reserve_stock.queue_name == "critical"
    assert message.options["priority"] == 9
    assert actors.runtime.broker.counts("critical") == (1, 0, 0)
    assert actors.runtime.broker.counts("default") == (0, 0, 0)


def test_send_with_invalid_priority_writes_nothing(r: redis.Redis) -> None:
    @default
    def t_prio_send() -> None: ...

    with pytest.raises(InvalidPriority, match="got 11"):
        t_prio_send.send_with_options(priority=11)
    assert r.dbsize() == 0
    assert t_prio_send.send_with_options(priority=10).options["priority"] == 10


def test_install_is_once_per_process() -> None:
    # Given the service installed Triage on import
    # When install() is called again without arguments, then it is the same runtime
    assert triage.install() is actors.runtime
    # And asking for another configuration is an error, not a silent mix of two
    with pytest.raises(RuntimeError, match="already installed"):
        triage.install(config={"QUEUES": {"other": "default"}})
