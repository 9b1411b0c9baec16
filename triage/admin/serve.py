"""`triage serve`: the web process (fleet metrics, health, the admin API, the dashboard).

Guarantees:
- Without an admin token it refuses any address but a loopback one (exit 2): the admin API
  and the dashboard act on every queue. It then mints a token for this run and prints it once,
  as a login link (`http://127.0.0.1:8000/login?token=...`, as Jupyter does): the link logs the
  browser in, and the admin API takes the token as a bearer token.
- Request bodies over `TRIAGE_WEB_MAX_BODY_BYTES` (1 MiB) are refused with 413 unread.
- uvicorn believes X-Forwarded-For / X-Forwarded-Proto from `FORWARDED_ALLOW_IPS` only
  (default: this machine): the client address the login throttle counts by.
- Operator reads and actions need no application code; only the dashboard's schedule screen
  imports the app (`--app`), the first time it is shown, so a broken actor module costs that
  screen only, which then says why.
- The `triage` loggers (the audit log of every action among them) write to standard error at
  INFO, beside uvicorn's own lines.
- Started while Redis is unreachable, it serves at once (`/healthz` 200, `/readyz` 503 until
  Redis answers, as every answer is computed at request time), and a thread of its own tries
  Redis with a capped back-off (0.5 s doubling to 5 s, `triage.broker.startup`), logging one
  line per attempt that names where Redis is (no password, no traceback), and one line when
  it answers.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import click

from triage import runtime
from triage.broker.startup import until_redis_answers

from .auth import Tokens, is_loopback
from .cli_common import admin_or_exit, fail


def app_actors(app: str) -> Callable[[], Mapping[str, Any]]:
    """A loader of the app's actors (name -> actor): imported once, on first call; an import
    that raises is raised to the caller and tried again at the next call."""
    loaded: dict[str, Mapping[str, Any]] = {}
    lock = threading.Lock()

    def load() -> Mapping[str, Any]:
        with lock:
            if "actors" not in loaded:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())  # as `dramatiq` does
                importlib.import_module(app)
                loaded["actors"] = runtime.current().broker.actors
            return loaded["actors"]

    return load


def serve_command(host: str | None, port: int | None, app: str) -> None:
    # Here, not at the top: the web process's own dependencies (FastAPI, uvicorn, Jinja) would add
    # 0.17 s to every other `triage` command (0.33 s to import the CLI, 0.50 s with them).
    import uvicorn

    from .web import create_app

    admin = admin_or_exit()
    settings = admin.settings
    host = host or settings.web_host
    port = port or settings.web_port
    tokens = Tokens.of(settings.admin_token, settings.admin_tokens)
    if not tokens.enabled and not is_loopback(host):
        fail(f"TRIAGE_ADMIN_TOKEN is not set: refusing to serve the admin API on {host} (only 127.0.0.1)", 2)
    if not tokens.enabled:
        tokens = Tokens.mint()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    triage_logger = logging.getLogger("triage")
    triage_logger.addHandler(handler)
    triage_logger.setLevel(logging.INFO)
    web = create_app(
        admin,
        token=tokens,
        readonly=settings.dashboard_readonly,
        actors=app_actors(app),
        max_body_bytes=settings.web_max_body_bytes,
    )
    client = admin.broker.client
    waiting = "the web process serves, /readyz answers 503 until then"
    threading.Thread(
        target=until_redis_answers, args=(client.ping, client), kwargs={"waiting": waiting}, daemon=True
    ).start()
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if tokens.local_token is not None:
        click.echo(
            "triage serve: no TRIAGE_ADMIN_TOKEN: a token was made for this run. Open the dashboard at\n"
            f"    {base}/login?token={tokens.local_token}\n"
            "  (the admin API takes it as Authorization: Bearer ...)",
            err=True,
        )
    else:
        click.echo(f"triage serve: dashboard at {base}/", err=True)
    uvicorn.run(
        web,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
