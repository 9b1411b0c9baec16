"""The web process started without TRIAGE_ADMIN_TOKEN (loopback only, a token minted for the run),
against two attacks: a page on another port of the same host that sends the operator's own
browser (real headless Chromium, logged in) through a 307 redirect to the admin API and to a
dashboard action, and a remote client reaching it through a real nginx in front that rewrites
Host to 127.0.0.1. Neither pauses a queue, opens a breaker or reads a dead letter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from actors import runtime
from tests.browser import artifacts_dir, open_browser, require_chromium
from tests.helpers import wait_for
from tests.integration.test_dead_letters import QUEUE, make_dead, t_dlq_export
from tests.proxy import nginx_in_front, require_nginx
from tests.web_helpers import WebClient, serving
from triage.admin.web import ADMIN_PREFIX

AUTO_SUBMIT = """<!doctype html><html lang="en"><head><title>A page of another site</title></head><body>
<form id="f" method="post" action="/go"><input name="x" value="1"></form>
<script>document.getElementById("f").submit()</script></body></html>"""


@contextmanager
def redirecting_site(target: str) -> Iterator[str]:
    """A site on another port of 127.0.0.1 whose page posts a form to itself, answered with a 307
    to `target` (the browser then posts the same form there, with Origin: null); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = AUTO_SUBMIT.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()
        site.server_close()


def test_a_page_on_another_port_cannot_act_through_a_redirect(r: redis.Redis) -> None:
    require_chromium()
    runtime.broker.registry.record_queues({QUEUE: "default"})
    runtime.broker.declare_queue(QUEUE)
    with serving() as server, open_browser(artifacts_dir("local-mode-redirect")) as browser:
        # Given the operator's browser, logged in to the dashboard through the printed link
        browser.visit(f"{server.url}/login?token={server.local_token}")
        assert browser.driver.current_url == server.url + "/"
        for target in (f"{ADMIN_PREFIX}/queue/{QUEUE}/pause", f"/queues/{QUEUE}/pause"):
            # When it opens a page of another port of 127.0.0.1 that redirects a form to the action
            with redirecting_site(server.url + target) as evil:
                browser.visit(evil)
                wait_for(lambda: browser.driver.current_url.startswith(server.url), 10)
            # Then the browser did arrive there, and the queue is not paused
            assert browser.driver.current_url == server.url + target
            assert not runtime.queue_stats()[QUEUE]["paused"], target


def test_a_remote_client_through_a_proxy_cannot_act_or_read(r: redis.Redis) -> None:
    require_nginx()
    runtime.broker.registry.record_queues({QUEUE: "default"})
    make_dead(t_dlq_export, 1)
    with serving() as server:
        # Given nginx in front of the no-token web process, rewriting Host to 127.0.0.1 (so that
        # the Host check passes) and adding no X-Forwarded-For, and another proxy that adds it
        bare = "      proxy_set_header Host 127.0.0.1;\n"
        forwarding = bare + "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        with nginx_in_front(server.port, bare) as port, nginx_in_front(server.port, forwarding) as forwarded:
            for proxy in (port, forwarded):
                remote = WebClient(f"http://127.0.0.1:{proxy}")
                # When a client reaching it through the proxy pauses a queue, opens a breaker,
                # reads the dead letters, opens the dashboard
                pause = remote.post(f"{ADMIN_PREFIX}/queue/{QUEUE}/pause", {})
                breaker = remote.post(f"{ADMIN_PREFIX}/breakers/sms/open", {})
                letters = remote.get(f"{ADMIN_PREFIX}/queue/dead-letters")
                page = remote.get("/dead-letters")
                # Then nothing is done and nothing shown
                assert pause.status_code in (401, 403), pause.text
                assert breaker.status_code in (401, 403), breaker.text
                assert letters.status_code in (401, 403), letters.text
                assert "t_dlq_export" not in letters.text
                assert page.status_code in (303, 403)
                assert "t_dlq_export" not in page.text
            # And through the proxy that says who the client is, even the login link is refused
            link = WebClient(f"http://127.0.0.1:{forwarded}").get(f"/login?token={server.local_token}")
            assert link.status_code == 403
    assert not runtime.queue_stats()[QUEUE]["paused"]
