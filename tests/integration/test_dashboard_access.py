"""Who may see and act on the dashboard, over HTTP against a real `triage serve`: every
page sends a visitor without a session to the login page, every action is refused without a
session, without the session's CSRF token, from another origin, and in read-only mode; a
session holds no token; actions are audited with the token's name; a dead letter's arguments
stay off its page until asked for."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.routing import APIRoute

from actors import runtime
from tests.helpers import wait_for
from tests.integration.test_dead_letters import QUEUE, make_dead, t_dlq_export
from tests.web_helpers import Server, WebClient, serving
from triage.admin.auth import Tokens
from triage.admin.dashboard.site import Site
from triage.admin.dashboard.throttle import LoginThrottle
from triage.admin.ops import Admin
from triage.admin.web import ADMIN_PREFIX, create_app
from triage.settings import Settings

ALICE, BOB = "alice-token-for-the-dashboard", "bob-token-for-the-dashboard!"
ENV = {"TRIAGE_ADMIN_TOKENS": json.dumps({"alice": ALICE, "bob": BOB}), "TRIAGE_BREAKERS": '{"sms": {}}'}
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/metrics", "/login"}
SAMPLES = {"{queue}": QUEUE, "{name}": "sms", "{entry_id}": "1-0", "{job_id}": "abc"}
ACTIONS = {"/queues": ("pause", "resume"), "/breakers": ("reset", "open"), "/dead-letters": ("requeue", "purge")}


def logged_in(server: Server, token: str = ALICE) -> WebClient:
    client = WebClient(server.url)
    nonce = csrf_in(client.get("/login").text)
    answer = client.post("/login", {"token": token, "csrf": nonce, "next": "/"})
    assert answer.status_code == 303, answer.text
    return client


def csrf_in(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def dashboard_operations() -> list[tuple[str, str]]:
    """(method, path) of every dashboard route (every route of the app that is not the API's),
    with each action a route takes."""
    app = create_app(Admin(Settings()), token=ALICE)
    return [
        (method, path)
        for route in app.routes
        if isinstance(route, APIRoute) and not route.path.startswith(ADMIN_PREFIX) and route.path not in PUBLIC
        for method in route.methods or ()
        for path in _filled(route.path)
    ]


def _filled(path: str) -> list[str]:
    for name, value in SAMPLES.items():
        path = path.replace(name, value)
    if "{action}" not in path:
        return [path]
    return [path.replace("{action}", action) for action in ACTIONS["/" + path.split("/")[1]]]


@pytest.fixture
def server(r: redis.Redis) -> Iterator[Server]:
    runtime.broker.declare_queue(QUEUE)
    runtime.broker.registry.record_queues({QUEUE: "default"})
    with serving(**ENV) as served:
        yield served


def test_without_a_session_every_page_goes_to_login_and_every_action_is_refused(server: Server) -> None:
    # Given every dashboard route of the app's routing table
    operations = dashboard_operations()
    assert ("GET", "/") in operations
    assert ("POST", "/queues/t_dlq/pause") in operations
    assert len([op for op in operations if op[0] == "GET"]) >= 10
    client = WebClient(server.url)
    for method, path in operations:
        # When a visitor without a session calls it
        answer = client.request(method, path, {"csrf": "x"} if method == "POST" else None)
        # Then a page redirects to the login page (coming back after), an action is refused
        if method == "GET":
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login?next="), path
        else:
            assert answer.status_code == 403, (path, answer.text)
    assert not runtime.queue_stats()[QUEUE]["paused"]


def test_login_sets_a_session_cookie_that_holds_no_token(server: Server) -> None:
    # Given the login page
    client = WebClient(server.url)
    nonce = csrf_in(client.get("/login").text)
    # When a wrong token is given, then alice's
    wrong = client.post("/login", {"token": "not-a-token-at-all-x", "csrf": nonce, "next": "/"})
    answer = client.post("/login", {"token": ALICE, "csrf": nonce, "next": "/queues"})
    # Then the wrong one is a 401 page; alice's sets a Secure, HttpOnly, SameSite=Strict cookie
    # without her token in it, and returns her where she was going
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert answer.status_code == 303
    assert answer.headers["location"] == "/queues"
    cookie = answer.headers["set-cookie"]
    assert "triage_session=alice." in cookie
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"))
    assert ALICE not in cookie
    assert client.get("/queues").status_code == 200


def test_login_refuses_a_form_without_its_nonce_or_from_another_site(server: Server) -> None:
    client = WebClient(server.url)
    client.get("/login")
    assert client.post("/login", {"token": ALICE, "csrf": "guess"}).status_code == 403
    nonce = csrf_in(client.get("/login").text)
    cross = client.post("/login", {"token": ALICE, "csrf": nonce}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert "triage_session" not in client.cookies


def test_a_login_redirect_never_leaves_the_site(server: Server) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        client = WebClient(server.url)
        nonce = csrf_in(client.get("/login").text)
        answer = client.post("/login", {"token": ALICE, "csrf": nonce, "next": target})
        assert answer.headers["location"] == "/", target


def test_every_action_checks_the_csrf_token_and_the_origin(server: Server) -> None:
    # Given alice logged in, and bob logged in elsewhere (his CSRF token is his session's)
    alice, bob = logged_in(server), logged_in(server, BOB)
    bobs_csrf = csrf_in(bob.get("/queues").text)
    posts = [path for method, path in dashboard_operations() if method == "POST" and path != "/logout"]
    assert "/queues/t_dlq/pause" in posts
    assert "/dead-letters/requeue" in posts
    for path in posts:
        # When alice's browser posts without a CSRF token, with bob's, or with hers from another origin
        missing = alice.post(path, {})
        foreign = alice.post(path, {"csrf": bobs_csrf})
        cross = alice.post(path, {"csrf": csrf_in(alice.get("/queues").text)}, headers={"Origin": "https://x.io"})
        # Then each is refused and nothing changes
        assert (missing.status_code, foreign.status_code, cross.status_code) == (403, 403, 403), path
    assert not runtime.queue_stats()[QUEUE]["paused"]
    # And with her own token from her own page, the same action is taken
    ok = alice.post("/queues/t_dlq/pause", {"csrf": csrf_in(alice.get("/queues").text)})
    assert ok.status_code == 303
    assert runtime.queue_stats()[QUEUE]["paused"]


def test_actions_are_audited_with_the_token_name(r: redis.Redis) -> None:
    runtime.broker.registry.record_queues({QUEUE: "default"})
    with serving(**ENV) as server:
        # When alice pauses from the dashboard and bob resumes through the admin API
        alice = logged_in(server)
        alice.post("/queues/t_dlq/pause", {"csrf": csrf_in(alice.get("/queues").text)})
        assert server.call("POST", f"{ADMIN_PREFIX}/queue/{QUEUE}/resume", BOB)[0] == 200
    # Then the web process's audit log says who did what
    assert "triage.audit: who=alice action=login target=dashboard outcome=ok" in server.output
    assert "triage.audit: who=alice action=pause target=queue=t_dlq outcome=paused" in server.output
    assert "triage.audit: who=bob action=resume target=queue=t_dlq outcome=resumed" in server.output


def test_read_only_offers_no_action_and_refuses_every_one(r: redis.Redis) -> None:
    # Given a read-only dashboard with dead letters to act on
    make_dead(t_dlq_export, 2)
    with serving(**ENV, TRIAGE_DASHBOARD_READONLY="1") as server:
        alice = logged_in(server)
        # When alice looks at the queues and dead letters, then posts an action with a valid token
        queues, dead = alice.get("/queues").text, alice.get("/dead-letters").text
        paused = alice.post("/queues/t_dlq/pause", {"csrf": csrf_in(queues)})
    # Then no action is offered, and the post is refused
    assert "Pause t_dlq" not in queues
    assert 'name="ids"' not in dead
    assert "Review" not in dead
    assert paused.status_code == 403
    assert "read-only" in paused.text
    assert not runtime.queue_stats()[QUEUE]["paused"]


def test_arguments_are_hidden_until_asked_and_the_view_is_audited(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 1, tenant="secret-org-4711")
    entry = Admin(Settings()).dead_letters.page()[0][0]
    url = f"/dead-letters/entry/{entry.id}?queue={QUEUE}"
    with serving(**ENV) as server:
        alice = logged_in(server)
        # When alice opens the entry, then asks for its arguments
        hidden, shown = alice.get(url).text, alice.get(url + "&reveal=1").text
    # Then the arguments are on the second page only, and that view is logged
    assert "secret-org-4711" not in hidden.split("<h2>Arguments</h2>")[1].split("<h2>")[0]
    assert "Hidden: 2 positional" in hidden
    assert "secret-org-4711" in shown
    assert f"who=alice action=show-arguments target=dead-letter={entry.id}" in server.output


def test_pages_carry_a_strict_content_security_policy(server: Server) -> None:
    alice = logged_in(server)
    for path in ("/", "/queues", "/dead-letters", "/breakers", "/tenants", "/workers", "/schedule"):
        answer = alice.get(path)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy, path
        assert "frame-ancestors 'none'" in policy, path
        assert '<script src="/static/dashboard.js"' in answer.text
        assert "http://" not in answer.text.replace("http://www.w3.org", ""), path  # nothing from elsewhere


def hidden_fields(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)


def test_a_bulk_requeue_takes_what_was_confirmed_and_no_more(server: Server) -> None:
    # Given 5 dead letters, and the confirmation page of "requeue all matching queue=t_dlq"
    make_dead(t_dlq_export, 5)
    alice = logged_in(server)
    page = alice.get(f"/dead-letters/confirm?action=requeue&scope=matching&queue={QUEUE}&rate=1000/s")
    assert page.status_code == 200
    assert "<h1>Requeue 5 dead letters</h1>" in page.text
    # When 3 more are dead-lettered after the count was shown, and the operator confirms
    time.sleep(0.01)
    make_dead(t_dlq_export, 3)
    answer = alice.post("/dead-letters/requeue", dict(hidden_fields(page.text)))
    assert answer.status_code == 303
    job = answer.headers["location"]
    wait_for(lambda: "<h1>Requeue of dead letters: done</h1>" in alice.get(job).text, 20)
    # Then the 5 confirmed ones were requeued, and the 3 later ones wait for a decision
    assert '<dd data-field="done">5</dd>' in alice.get(job).text
    stats = runtime.queue_stats()[QUEUE]
    assert stats["requeued_total"] == 5
    assert stats["dead_letters_total"] == 3


def test_a_filter_that_cannot_be_used_says_why(server: Server) -> None:
    alice = logged_in(server)
    bad_since = alice.get("/dead-letters?since=soon")
    unknown = alice.get("/dead-letters?queue=nope")
    nothing = alice.get("/dead-letters/confirm?action=requeue")
    assert bad_since.status_code == 400
    assert "is not a duration" in bad_since.text
    assert unknown.status_code == 400
    assert "unknown queue &#39;nope&#39;" in unknown.text
    assert nothing.status_code == 400
    assert "no dead letter selected" in nothing.text


def test_logging_out_ends_the_session_for_good(server: Server) -> None:
    # Given alice's session, copied (as a stolen cookie would be)
    alice = logged_in(server)
    stolen = dict(alice.cookies)
    # When she logs out
    assert alice.post("/logout", {"csrf": csrf_in(alice.get("/").text)}).status_code == 303
    # Then the copied cookie no longer opens any page
    thief = WebClient(server.url)
    thief.cookies.update(stolen)
    assert thief.get("/").status_code == 303
    assert thief.get("/").headers["location"].startswith("/login")


def test_the_audit_log_cannot_be_forged_through_a_name(r: redis.Redis) -> None:
    with serving(**ENV) as server:
        alice = logged_in(server)
        forged = "/breakers/x%0Awho=bob%20action=purge/reset"
        assert alice.post(forged, {"csrf": csrf_in(alice.get("/").text)}).status_code == 404
    lines = [line for line in server.output.splitlines() if "triage.audit" in line]
    assert not any(line.startswith("who=bob") or " who=bob" in line.split("triage.audit:")[1][:9] for line in lines)
    assert any("breaker=x\\x0awho=bob action=purge" in line for line in lines)


def test_too_many_failed_logins_from_one_address_are_refused_but_never_the_right_token(server: Server) -> None:
    # Given an address that has sent 10 wrong tokens (all answered 401)
    client = WebClient(server.url)
    nonce = csrf_in(client.get("/login").text)
    answers = [client.post("/login", {"token": f"wrong-token-number-{n:04d}", "csrf": nonce}) for n in range(11)]
    # Then its next wrong token is refused, with when to try again
    assert [answer.status_code for answer in answers] == [401] * 10 + [429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    # But the right token still logs in, at once
    assert client.post("/login", {"token": ALICE, "csrf": nonce, "next": "/"}).status_code == 303
    assert client.get("/").status_code == 200


def test_an_attacker_behind_the_same_untrusted_router_cannot_lock_the_operator_out(r: redis.Redis) -> None:
    # Given a web process that believes no proxy header (FORWARDED_ALLOW_IPS empty: the router is
    # not trusted), so every client has the router's address, here 127.0.0.1
    with serving(**ENV, FORWARDED_ALLOW_IPS="") as server:
        attacker = WebClient(server.url)
        nonce = csrf_in(attacker.get("/login").text)
        # When an attacker sends 12 wrong tokens, each "from" another X-Forwarded-For
        answers = [
            attacker.post("/login", {"token": f"guess-{n:04d}", "csrf": nonce}, {"X-Forwarded-For": f"198.51.100.{n}"})
            for n in range(12)
        ]
        # Then the header is not believed: they count against the one address, and are refused
        assert [answer.status_code for answer in answers][-2:] == [429, 429]
        # And an operator from that same address logs in with the right token
        operator = logged_in(server, BOB)
        assert operator.get("/queues").status_code == 200


def test_a_rotating_forwarded_for_from_a_trusted_proxy_meets_the_overall_limit(server: Server) -> None:
    # Given the default: the proxy on this machine (127.0.0.1) is believed, each X-Forwarded-For
    # is a client address of its own
    client = WebClient(server.url)
    nonce = csrf_in(client.get("/login").text)

    def guess(n: int, address: str) -> int:
        form = {"token": f"guess-number-{n:05d}", "csrf": nonce}
        return client.post("/login", form, {"X-Forwarded-For": address}).status_code

    # When one address sends 11 wrong tokens, it is refused; another address is not
    assert [guess(n, "203.0.113.1") for n in range(11)] == [401] * 10 + [429]
    assert guess(11, "203.0.113.2") == 401
    # When wrong tokens come from a new address each, past the overall budget (100 at once, 11
    # spent above, then one more every 3 s)
    rotating = [guess(n, f"10.{n // 250}.{n % 250}.1") for n in range(93)]
    # Then the budget's rest is answered, and past it they are refused all the same: rotating the
    # header buys no more guesses (but the one every 3 s)
    assert rotating[:89] == [401] * 89
    assert rotating[89:].count(429) >= 3
    # And the right token still logs in, from any of those addresses
    answer = client.post("/login", {"token": BOB, "csrf": nonce}, {"X-Forwarded-For": "10.0.5.1"})
    assert answer.status_code == 303


def test_two_logins_are_two_sessions_and_logging_out_of_one_leaves_the_other(server: Server) -> None:
    # Given alice logged in twice (two browsers)
    first, second = logged_in(server), logged_in(server)
    assert first.cookies["triage_session"] != second.cookies["triage_session"]
    # When the first logs out
    assert first.post("/logout", {"csrf": csrf_in(first.get("/").text)}).status_code == 303
    # Then the first is logged out, and the second is still logged in
    assert first.get("/").status_code == 303
    assert second.get("/").status_code == 200


def test_ending_one_of_two_sessions_of_the_same_second_leaves_the_other(r: redis.Redis) -> None:
    # Given two sessions of alice's made at the very same instant (two logins in one second)
    tokens = Tokens({"alice": ALICE})
    site = Site(tokens, readonly=False, client=r, namespace=Settings().namespace, throttle=LoginThrottle())
    now = time.time()
    one, other = tokens.session("alice", now=now), tokens.session("alice", now=now)
    assert one.split(".")[1] == other.split(".")[1]
    # When the first is ended (logout)
    site.end(one)
    # Then it is ended, and the other is not
    assert site.ended(one)
    assert not site.ended(other)
    # And it is ended by its nonce, not by its text: the same nonce under another spelling is ended too
    name, expiry, nonce, signature = one.split(".")
    assert site.ended(f"{name}.{expiry}.{nonce}.{signature.upper()}")


def test_a_padded_copy_of_a_logged_out_session_is_refused(server: Server) -> None:
    # Given alice's session, copied as it is and with a zero before its expiry (as a thief would)
    alice = logged_in(server)
    stolen = alice.cookies["triage_session"]
    name, expiry, rest = stolen.split(".", 2)
    padded = f"{name}.0{expiry}.{rest}"
    tokens = Tokens({"alice": ALICE})
    # When she logs out
    assert alice.post("/logout", {"csrf": csrf_in(alice.get("/").text)}).status_code == 303
    for session in (stolen, padded):
        thief = WebClient(server.url)
        thief.cookies["triage_session"] = session
        # Then neither opens a page (303 to login) nor takes an action (403), even with its CSRF token
        page = thief.get("/queues")
        assert page.status_code == 303, session
        assert page.headers["location"].startswith("/login"), session
        action = thief.post(f"/queues/{QUEUE}/pause", {"csrf": tokens.csrf(session)})
        assert action.status_code == 403, session
    assert not runtime.queue_stats()[QUEUE]["paused"]


def test_a_cookie_with_a_superscript_digit_goes_to_login_not_a_500(server: Server) -> None:
    # Given a crafted session cookie whose expiry ends in "²", sent as raw latin-1 bytes
    for path in ("/", "/queues", "/login"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            # When it asks for a dashboard page
            connection.request("GET", path, headers={"Cookie": "triage_session=admin.1796723175\u00b2.n.sig"})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        # Then it is a visitor without a session: sent to log in (the login page itself: shown)
        if path == "/login":
            assert response.status == 200, path
        else:
            assert response.status == 303, path
            assert (response.getheader("location") or "").startswith("/login"), path


def test_a_forwarded_for_that_is_not_an_address_cannot_forge_the_audit_log(r: redis.Redis) -> None:
    # Given a web process that believes every X-Forwarded-For (FORWARDED_ALLOW_IPS=*, behind a router)
    with serving(**ENV, FORWARDED_ALLOW_IPS="*") as server:
        client = WebClient(server.url)
        nonce = csrf_in(client.get("/login").text)
        # When a wrong token comes "from" a text that is not an address, then from a real address
        forged = {"X-Forwarded-For": "1.2.3.4 outcome=ok who=admin"}
        assert client.post("/login", {"token": "wrong-token-0001", "csrf": nonce}, forged).status_code == 401
        real = {"X-Forwarded-For": "203.0.113.7"}
        assert client.post("/login", {"token": "wrong-token-0002", "csrf": nonce}, real).status_code == 401
    # Then the audit line names no such address (nor the fields it carried), and the real one is kept
    lines = [line.split("triage.audit: ", 1)[1] for line in server.output.splitlines() if "action=login" in line]
    assert "who=- action=login target=dashboard from=- outcome=refused: wrong token" in lines, lines
    assert "who=- action=login target=dashboard from=203.0.113.7 outcome=refused: wrong token" in lines, lines
    assert not any("1.2.3.4" in line or "who=admin" in line for line in lines), lines


def test_an_absurd_duration_is_a_400_not_a_crash(server: Server) -> None:
    alice = logged_in(server)
    answer = alice.get("/dead-letters?since=" + "9" * 400 + "d")
    assert answer.status_code == 400
    assert "is not a duration" in answer.text


def test_ids_already_gone_count_as_taken_by_someone_else(server: Server) -> None:
    # Given 3 dead letters ticked on a page, one of which another operator purges meanwhile
    make_dead(t_dlq_export, 3)
    ids = [entry.id for entry in Admin(Settings()).dead_letters.page()[0]]
    alice = logged_in(server)
    page = alice.get("/dead-letters/confirm?action=requeue&" + "&".join(f"ids={i}" for i in ids))
    assert "<h1>Requeue 3 dead letters</h1>" in page.text
    assert server.call("POST", f"{ADMIN_PREFIX}/queue/dead-letters/purge", BOB, {"ids": [ids[0]]})[0] == 200
    # When alice confirms
    answer = alice.post("/dead-letters/requeue", {**dict(hidden_fields(page.text)), "ids": ids})
    job = answer.headers["location"]
    wait_for(lambda: "<h1>Requeue of dead letters: done</h1>" in alice.get(job).text, 20)
    # Then the two still there are requeued, and the third is counted as gone
    text = alice.get(job).text
    assert '<dd data-field="done">2</dd>' in text
    assert '<dd data-field="gone">1</dd>' in text


def test_without_a_token_the_printed_link_logs_in_and_only_local_same_origin_requests_act(r: redis.Redis) -> None:
    runtime.broker.registry.record_queues({QUEUE: "default"})
    with serving() as server:  # no token: loopback only, a token minted for this run
        token = server.local_token
        # Given the login link it printed, opened by the operator's browser
        local = WebClient(server.url)
        assert local.get("/queues").status_code == 303  # no page without it
        opened = local.get(f"/login?token={token}&next=/queues")
        # Then the browser has a session, and the token has left the address bar
        assert opened.status_code == 303
        assert opened.headers["location"] == "/queues"
        assert token not in opened.headers["set-cookie"]
        # And a page opens, and its form acts
        assert local.get("/queues").status_code == 200
        confirm = local.get(f"/queues/{QUEUE}/pause")
        assert local.post(f"/queues/{QUEUE}/pause", {"csrf": csrf_in(confirm.text)}).status_code == 303
        # A link with another token logs nobody in
        assert WebClient(server.url).get("/login?token=not-the-token-of-this-run").status_code == 401
        # A page of another site rebinding its name to 127.0.0.1 gets nothing
        assert local.get("/queues", headers={"Host": "evil.example"}).status_code == 421
        # The admin API takes the minted token, and nothing else
        assert server.call("GET", f"{ADMIN_PREFIX}/queue/stats")[0] == 401
        assert server.call("GET", f"{ADMIN_PREFIX}/queue/stats", token)[0] == 200
        # A request from another origin, or through a proxy, cannot act, token or not
        resume = f"{ADMIN_PREFIX}/queue/{QUEUE}/resume"
        bearer = {"Authorization": f"Bearer {token}"}
        for refused in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"X-Forwarded-For": "203.0.113.9"},
            {"Forwarded": "for=203.0.113.9"},
            {"X-Real-IP": "203.0.113.9"},
        ):
            assert WebClient(server.url).post(resume, {}, {**bearer, **refused}).status_code == 403, refused
        assert runtime.queue_stats()[QUEUE]["paused"]
        assert WebClient(server.url).post(resume, {}, bearer).status_code == 200
