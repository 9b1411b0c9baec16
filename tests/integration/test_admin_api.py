"""The admin HTTP API of a real `triage serve` process: the token on every endpoint, dead letters
paged and filtered, requeue and purge by ids, filters or all (bounded per call), pause and
resume, breakers reset and opened, and clear 4xx answers for bad input."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute

from actors import runtime
from tests.integration.test_dead_letters import QUEUE, make_dead, t_dlq_export, t_dlq_sync
from tests.web_helpers import Server, WebClient, serving
from triage.admin.ops import Admin
from triage.admin.web import create_app
from triage.settings import Settings

TOKEN = "admin-api-token-for-the-tests"
API = "/api/v1/admin"


@pytest.fixture
def server(r: redis.Redis) -> Iterator[Server]:
    with serving(TRIAGE_ADMIN_TOKEN=TOKEN, TRIAGE_BREAKERS='{"sms": {"failure_threshold": 3}}') as served:
        yield served


def call(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, text = server.call(method, API + path, TOKEN, body)
    return status, json.loads(text)


def test_every_admin_endpoint_needs_the_token(server: Server) -> None:
    # Given every route of the app (from its routing table: a route left out of the schema
    # counts too) but the public ones: health, readiness, the schema
    app = create_app(Admin(Settings()), token=TOKEN)
    public = {"/healthz", "/readyz", "/openapi.json"}
    routes = [
        inner
        for route in app.routes
        for inner in (route.original_router.routes if hasattr(route, "original_router") else [route])
    ]  # (an included router is one entry of app.routes: its own routes are inside it)
    operations = [
        (method, route.path.replace("{queue}", "default").replace("{name}", "sms").replace("{entry_id}", "1-0"))
        for route in routes
        if isinstance(route, APIRoute)
        and route.path not in public
        and (route.path.startswith(API) or route.path == "/metrics")  # the dashboard's: test_dashboard_access
        for method in route.methods or ()
    ]
    assert ("GET", "/metrics") in operations
    assert len(operations) >= 10
    for n, (method, path) in enumerate(operations):
        body: dict[str, Any] | None = {} if method == "POST" else None
        # When called without a token, then with a wrong one (each from an address of its own,
        # through the proxy on this machine that the server believes: the throttle, tested
        # below, answers 429 past 10 wrong tokens from one address)
        # Then 401 (asking for a bearer token), then 403, and nothing was done
        assert server.call(method, path, None, body)[0] == 401, path
        wrong = server.call(method, path, "not-the-admin-token", body, {"X-Forwarded-For": f"192.0.2.{n + 1}"})
        assert wrong[0] == 403, path
    assert not runtime.queue_stats()["default"]["paused"]


def test_dead_letters_are_paged_newest_first_and_filtered(server: Server) -> None:
    # Given 5 dead exports and 2 dead syncs
    make_dead(t_dlq_export, 5)
    make_dead(t_dlq_sync, 2, error=ValueError("bad row"))
    # When an operator pages through them 3 at a time
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, page = call(server, "GET", f"/queue/dead-letters?limit=3{cursor}")
        assert status == 200
        seen += page["dead_letters"]
        if page["next"] is None:
            break
        cursor = f"&cursor={page['next']}"
    # Then every entry comes once, newest first, without traceback or message
    assert len({e["id"] for e in seen}) == len(seen) == 7
    times = [e["dead_lettered_at_ms"] for e in seen]
    assert times == sorted(times, reverse=True)
    assert all(e["traceback"] == "" and e["message"] is None for e in seen)
    # And the filters are the CLI's
    status, page = call(server, "GET", f"/queue/dead-letters?queue={QUEUE}&error=ValueError&since=1h")
    assert [e["actor"] for e in page["dead_letters"]] == ["t_dlq_sync", "t_dlq_sync"]
    # And one entry shows its traceback and decoded message
    status, entry = call(server, "GET", f"/queue/dead-letters/{seen[0]['id']}")
    assert status == 200
    assert "Traceback" in entry["traceback"]
    assert entry["message"]["args"]
    # And the summary groups them
    status, groups = call(server, "GET", "/queue/dead-letters/summary")
    assert sorted((g["actor"], g["count"]) for g in groups) == [("t_dlq_export", 5), ("t_dlq_sync", 2)]


def test_requeue_and_purge_take_what_they_name_and_no_more_than_the_limit(server: Server) -> None:
    # Given 5 dead exports and 2 dead syncs
    make_dead(t_dlq_export, 5)
    make_dead(t_dlq_sync, 2)
    # When the exports are requeued 3 per call
    status, first = call(server, "POST", "/queue/dead-letters/requeue", {"actor": "t_dlq_export", "limit": 3})
    status2, second = call(server, "POST", "/queue/dead-letters/requeue", {"actor": "t_dlq_export", "limit": 3})
    # Then the first call took 3 and said more remain, the second took the last 2
    assert (status, first["done"], first["more"]) == (200, 3, True)
    assert (status2, second["done"], second["more"]) == (200, 2, False)
    stats = runtime.queue_stats()[QUEUE]
    assert (stats["queued"], stats["dead_letters_total"], stats["requeued_total"]) == (5, 2, 5)
    # When one sync is purged by id, then the rest with all
    listed = call(server, "GET", "/queue/dead-letters")[1]["dead_letters"]
    status, purged = call(server, "POST", "/queue/dead-letters/purge", {"ids": [listed[0]["id"]]})
    assert (status, purged["done"]) == (200, 1)
    status, purged = call(server, "POST", "/queue/dead-letters/purge", {"all": True, "queue": QUEUE})
    # Then nothing is left dead, and the requeued ones are still queued
    assert (status, purged["done"]) == (200, 1)
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 0


def test_bad_requests_name_the_problem_and_change_nothing(server: Server) -> None:
    make_dead(t_dlq_export, 2)
    # An action that names nothing is refused: never "everything" by default
    status, answer = call(server, "POST", "/queue/dead-letters/purge", {})
    assert status == 400
    assert "say which dead letters" in answer["detail"]
    # Ids and filters together are refused
    status, answer = call(server, "POST", "/queue/dead-letters/requeue", {"ids": ["1-0"], "all": True})
    assert status == 400
    assert "not both" in answer["detail"]
    # An id that does not exist, a queue nobody declared: 404 naming it
    status, answer = call(server, "POST", "/queue/dead-letters/purge", {"ids": ["123-0"]})
    assert status == 404
    assert "123-0" in answer["detail"]
    status, answer = call(server, "POST", "/queue/nope/pause")
    assert status == 404
    assert "unknown queue 'nope'" in answer["detail"]
    # A malformed parameter: 422 naming it
    status, answer = call(server, "GET", "/queue/dead-letters?since=yesterday")
    assert status == 422
    assert answer["detail"][0]["loc"] == ["query", "since"]
    status, answer = call(server, "POST", "/queue/dead-letters/purge", {"all": True, "frobnicate": 1})
    assert status == 422
    # A misspelt filter, or one given twice, is refused: never read as "everything" or as one of them
    status, answer = call(server, "GET", "/queue/dead-letters?actr=t_dlq_export")
    assert status == 422
    assert answer["detail"][0]["loc"] == ["query", "actr"]
    status, answer = call(server, "GET", "/queue/dead-letters?actor=a&actor=b")
    assert status == 422
    assert answer["detail"][0]["loc"] == ["query", "actor"]
    # And the dead letters are all still there
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 2


def test_numbers_are_finite_booleans_strict_and_empty_filters_refused(server: Server) -> None:
    # Given two dead letters, one of them of a tenant
    make_dead(t_dlq_export, 2)
    # When a rate or a duration is not a finite number in range
    for path, body in [
        ("/queue/dead-letters/requeue", {"all": True, "rate": float("nan")}),
        ("/queue/dead-letters/requeue", {"all": True, "rate": float("inf")}),
        ("/queue/dead-letters/requeue", {"all": True, "rate": -float("inf")}),
        ("/queue/dead-letters/requeue", {"all": True, "rate": 1e9}),
        ("/breakers/sms/open", {"seconds": float("nan")}),
        ("/breakers/sms/open", {"seconds": float("inf")}),
    ]:
        status, answer = call(server, "POST", path, body)
        # Then a 422 that names the field (never a 500: the answer is JSON a client can read)
        assert status == 422, (path, body, answer)
        assert answer["detail"][0]["loc"][-1] in ("rate", "seconds"), answer
    # When `all` is anything but a JSON boolean
    for value in ("yes", 1, "true", None):
        status, answer = call(server, "POST", "/queue/dead-letters/purge", {"all": value})
        # Then it is refused, not read as true
        assert status == 422, (value, answer)
        assert answer["detail"][0]["loc"] == ["body", "all"]
    # When a filter is the empty string (a dead letter without tenant has tenant "": an empty
    # filter would mean "no tenant" here and "no filter" in the dashboard's blank field)
    for name in ("tenant", "actor", "error", "reason"):
        status, answer = call(server, "POST", "/queue/dead-letters/purge", {"queue": QUEUE, name: ""})
        # Then it is refused, naming the field: omit it to not filter
        assert status == 422, (name, answer)
        assert answer["detail"][0]["loc"] == ["body", name]
        status, answer = call(server, "GET", f"/queue/dead-letters?{name}=")
        assert status == 422, (name, answer)
    # And nothing was requeued, purged or opened
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 2
    assert call(server, "GET", "/breakers")[1]["sms"]["state"] == "closed"


def test_pause_resume_and_breakers(server: Server) -> None:
    # When an operator pauses the default queue
    assert call(server, "POST", "/queue/default/pause") == (200, {"queue": "default", "paused": True})
    # Then it is paused in Redis, until resumed
    assert runtime.queue_stats()["default"]["paused"]
    assert call(server, "POST", "/queue/default/resume") == (200, {"queue": "default", "paused": False})
    assert not runtime.queue_stats()["default"]["paused"]
    # When breaker sms is opened for 60 s, then reset
    status, opened = call(server, "POST", "/breakers/sms/open", {"seconds": 60})
    assert (status, opened["state"]) == (200, "open")
    assert call(server, "GET", "/breakers")[1]["sms"]["state"] == "open"
    status, closed = call(server, "POST", "/breakers/sms/reset")
    assert (status, closed["state"]) == (200, "closed")
    assert call(server, "GET", "/breakers")[1]["sms"]["state"] == "closed"
    # And an unknown breaker is a 404 naming it
    status, answer = call(server, "POST", "/breakers/nope/reset")
    assert status == 404
    assert "nope" in answer["detail"]


def test_wrong_bearer_tokens_are_throttled_but_never_the_right_one(server: Server) -> None:
    # Given an address that has sent 10 wrong bearer tokens to the admin API (all answered 403)
    answers = [server.call("GET", f"{API}/queue/stats", f"wrong-token-number-{n:04d}") for n in range(10)]
    assert [status for status, _ in answers] == [403] * 10
    # When it sends an 11th
    began = time.monotonic()
    refused = WebClient(server.url).get(f"{API}/queue/stats", {"Authorization": "Bearer wrong-token-number-0011"})
    # Then it is refused with when to try again (after a delay), and nothing is shown
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert time.monotonic() - began >= 0.9
    assert "queues" not in refused.text
    # And the right token is still answered at once
    assert server.call("GET", f"{API}/queue/stats", TOKEN)[0] == 200
    # And the dashboard's login counts in the same throttle: that address's wrong login is refused too
    client = WebClient(server.url)
    nonce = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert nonce
    assert client.post("/login", {"token": "wrong-token-number-0012", "csrf": nonce.group(1)}).status_code == 429
