"""Placement on a StubBroker: priority defaults, bounds and hook; tenants from options and arguments."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import Retries

from config import ROUTES
from triage.middleware import InvalidPriority, InvalidTenant, Placement, Routing
from triage.middleware.placement import PriorityHook
from triage.routing import Router
from triage.settings import Settings
from triage.tiers import build_taxonomy


def make_broker(hook: PriorityHook | None = None) -> StubBroker:
    taxonomy = build_taxonomy(Settings())
    router = Router(ROUTES, taxonomy)
    return StubBroker(
        middleware=[Routing(router=router, taxonomy=taxonomy), Placement(taxonomy=taxonomy, hook=hook), Retries()]
    )


def test_priority_defaults_to_the_tier_and_an_explicit_one_wins() -> None:
    broker = make_broker()

    @dramatiq.actor(actor_name="erp.reports.monthly", broker=broker)
    def monthly() -> None: ...

    # When sent without a priority, it gets the tier's; an explicit one is kept
    assert monthly.send().options["priority"] == 2
    assert monthly.send_with_options(priority=10).options["priority"] == 10


@pytest.mark.parametrize("bad", [0, 11, "high", 5.5, True, None])
def test_invalid_priority_is_refused_before_anything_is_queued(bad: Any) -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker)
    def job() -> None: ...

    with pytest.raises(InvalidPriority, match=r"actor 'job': priority must be an integer from 1 to 10"):
        job.send_with_options(priority=bad)
    assert broker.queues["default"].qsize() == 0


def test_hook_adjusts_and_is_clamped() -> None:
    # Given a hook that raises user-initiated work by 2
    def bump(message: Message[Any], priority: int) -> int:
        return priority + 2 if message.options.get("user_initiated") else priority

    broker = make_broker(hook=bump)

    @dramatiq.actor(actor_name="erp.orders.pay", broker=broker)
    def pay() -> None: ...

    # Then the hook's result is used, clamped to 10
    assert pay.send_with_options(user_initiated=True).options["priority"] == 10
    assert pay.send_with_options(priority=3, user_initiated=True).options["priority"] == 5
    assert pay.send().options["priority"] == 9


def test_tenant_from_option_or_tenant_arg() -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker, tenant_arg="org_id")
    def export(report_id: str, org_id: str) -> None: ...

    # Then the tenant comes from the argument, by position or keyword, unless given
    assert export.send("r1", "acme").options["tenant"] == "acme"
    assert export.send("r1", org_id="globex").options["tenant"] == "globex"
    assert export.send_with_options(args=("r1", "acme"), tenant="initech").options["tenant"] == "initech"


def test_no_tenant_means_the_shared_tenant() -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker)
    def ping() -> None: ...

    assert "tenant" not in ping.send().options


@pytest.mark.parametrize("bad", ["", 42, "x" * 129])
def test_invalid_tenant_is_refused(bad: Any) -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker, tenant_arg="org")
    def job(org: Any) -> None: ...

    with pytest.raises(InvalidTenant, match="actor 'job': tenant must be a non-empty string"):
        job.send(bad)
    assert broker.queues["default"].qsize() == 0


def test_tenant_arg_must_be_a_parameter() -> None:
    broker = make_broker()
    with pytest.raises(InvalidTenant, match="tenant_arg 'org_id' is not one of its parameters"):

        @dramatiq.actor(broker=broker, tenant_arg="org_id")
        def job(org: str) -> None: ...

    assert "job" not in broker.actors
