"""The admin API fuzzed from its own OpenAPI schema (schemathesis) against a real `triage serve`
process with dead letters, a breaker and queues in Redis: no request gets a 500, every answer
matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection, positive_data_acceptance

from tests.integration.test_dead_letters import make_dead, t_dlq_export
from tests.web_helpers import Server, serving
from triage.admin.ops import Admin
from triage.admin.web import create_app
from triage.settings import Settings

TOKEN = "fuzzing-admin-token-0123456789"
EXAMPLES = int(os.environ.get("TRIAGE_TEST_FUZZ_EXAMPLES", "25"))  # per route; more for a deeper run


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[Server]:
    with serving(TRIAGE_ADMIN_TOKEN=TOKEN, TRIAGE_BREAKERS='{"sms": {}}') as served:
        yield served


@pytest.fixture
def dead_letters(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 3)


# The schema the server serves, built from the same code without a server or Redis (the test
# below checks that the server serves exactly this one).
SCHEMA = create_app(Admin(Settings()), token=TOKEN).openapi()
schema = schemathesis.openapi.from_dict(SCHEMA)


def test_the_server_serves_this_schema(fuzzed_server: Server) -> None:
    assert json.loads(fuzzed_server.get("/openapi.json")[1]) == SCHEMA


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(
    case: schemathesis.Case[Any], fuzzed_server: Server, dead_letters: None
) -> None:
    # Given any request the schema allows (and many it does not), with the admin token
    # When it is sent to the real server
    # Then the server answers within the schema, never with a 500
    # Two checks are left out where they cannot hold:
    # - an action that names no dead letters, `{}`, is valid for the schema but refused with a
    #   400 that says so ("name what you act on" is the server's rule, not the schema's);
    # - a value the schema forbids can serialise to a request it allows (an empty list is no
    #   query parameter at all), so "invalid data is rejected" is checked by test_admin_api
    #   instead (unknown and repeated parameters, malformed values);
    # - "a wrong token is a 401 or 403" meets the throttle of wrong tokens after 10 from this
    #   address (a 429, a second later): test_admin_api checks every endpoint without a token
    #   and with a wrong one, and the throttle, instead.
    names_nothing_allowed = case.operation.path.endswith(("/requeue", "/purge"))
    excluded: list[Any] = [
        negative_data_rejection,
        ignored_auth,
        *([positive_data_acceptance] if names_nothing_allowed else []),
    ]
    case.call_and_validate(
        base_url=fuzzed_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded
    )
