"""Routing rules and the routing middleware, on Dramatiq's StubBroker."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from config import ROUTES
from triage.middleware import Routing
from triage.routing import Router
from triage.settings import ConfigError, Settings
from triage.tiers import build_taxonomy


def make_router(rules: list[tuple[str, str]] | None = None, queues: dict[str, str] | None = None) -> Router:
    taxonomy = build_taxonomy(Settings.model_validate({"queues": queues or {}}))
    return Router(ROUTES if rules is None else rules, taxonomy)


@pytest.mark.parametrize(
    ("actor_name", "queue"),
    [
        ("erp.orders.tasks.reserve_stock", "critical"),
        ("erp.inventory.sync", "critical"),
        ("erp.notifications.send_sms", "default"),
        ("erp.reports.monthly", "background"),
        ("billing.invoice", "default"),
        ("erp.ordersx", "default"),
    ],
)
def test_service_rules(actor_name: str, queue: str) -> None:
    assert make_router().route(actor_name).queue_name == queue


def test_first_matching_rule_wins_and_targets_may_be_queues() -> None:
    # Given rules where a specific pattern precedes a broad one, targeting a queue
    router = make_router([("erp.reports.pdf.*", "reports"), ("erp.*", "critical")], {"reports": "background"})
    # When actors are routed
    pdf, other = router.route("erp.reports.pdf.render"), router.route("erp.reports.csv")
    # Then the first match wins and a queue target carries its tier
    assert (pdf.queue_name, pdf.tier.name) == ("reports", "background")
    assert (other.queue_name, other.tier.name) == ("critical", "critical")


def test_unknown_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"TRIAGE_ROUTES \(or config\.ROUTES\): rule 'a\.\*' targets 'nowhere'"):
        make_router([("a.*", "nowhere")])


@pytest.fixture
def stub() -> StubBroker:
    router = make_router()
    broker = StubBroker(middleware=[Routing(router=router, taxonomy=router.taxonomy), Retries()])
    broker.emit_after("process_boot")
    return broker


def test_plain_actor_is_routed_by_name(stub: StubBroker) -> None:
    # Given a plain Dramatiq actor whose name matches the critical rule
    @dramatiq.actor(actor_name="erp.orders.tasks.reserve_stock", broker=stub)
    def reserve_stock(order_id: str) -> None: ...

    # And one whose name matches the background rule
    @dramatiq.actor(actor_name="erp.reports.monthly", broker=stub)
    def monthly() -> None: ...

    # Then it is on the critical queue with the critical tier's policies (none of them Dramatiq's defaults)
    assert reserve_stock.queue_name == "critical"
    assert reserve_stock.options["tier"] == "critical"
    assert reserve_stock.options["message_priority"] == 9
    assert (reserve_stock.options["max_retries"], reserve_stock.options["min_backoff"]) == (5, 200)
    # And a worker runs it before the background one it may have prefetched beside it
    assert reserve_stock.priority < monthly.priority
    assert {"critical", "background"} <= stub.get_declared_queues()
    assert "default" not in stub.get_declared_queues()


def test_plain_actor_keeps_its_explicit_settings(stub: StubBroker) -> None:
    # Given a plain actor with its own queue and retry count
    @dramatiq.actor(queue_name="legacy", max_retries=1, broker=stub)
    def legacy_job() -> None: ...

    # Then it keeps them, and the unknown queue joins the default tier
    assert legacy_job.queue_name == "legacy"
    assert legacy_job.options["max_retries"] == 1
    assert legacy_job.options["tier"] == "default"
    assert legacy_job.priority == 50


def test_a_tier_retry_queue_that_no_tier_declares_is_a_config_error_naming_the_worker_it_needs() -> None:
    # Given the critical tier's retries sent to a queue no tier declares
    settings = Settings.model_validate({"tiers": {"critical": {"retry_queue": "slowlane"}}})
    # When the taxonomy is built, then the error names the variable, the queue and the worker it needs
    with pytest.raises(ConfigError, match=r"TRIAGE_TIERS__CRITICAL__RETRY_QUEUE: 'slowlane' .*--queues slowlane"):
        build_taxonomy(settings)
