"""The operators' dashboard, served by the web process at `/` (`install_dashboard`).

Screens: overview (a card per tier and queue against its SLA, refreshed every 2 s), queues
(pause, resume), dead letters (grouped, filtered, one by one, bulk requeue or purge of the
selection or of all matching at a chosen rate, with progress), breakers, tenants, workers,
schedule; a login page.

Guarantees:
- Server-rendered HTML; the read views work without JavaScript (the overview then reloads
  itself every 5 s); the one script and the stylesheet are served by this process (no CDN,
  no build step).
- Access as `site.py` says: the admin tokens, a session cookie, CSRF on every POST,
  read-only with `TRIAGE_DASHBOARD_READONLY=1` (no action offered, every action refused).
- Every action is confirmed on a page that says what it will do and to how many (for dead
  letters, counted when the page is shown), then goes through `actions.Actions`, the same
  code as the admin API and the CLI, and is written to the audit log with the token's name.
- A dead letter's arguments are not on its page until the operator asks (a logged view).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..actions import Actions
from ..auth import Tokens
from ..ops import Admin
from .actions import install_actions
from .jobs import Jobs
from .pages import install_pages
from .site import Site
from .throttle import LoginThrottle

STATIC = Path(__file__).parent / "static"


def install_dashboard(
    app: FastAPI,
    *,
    admin: Admin,
    actions: Actions,
    tokens: Tokens,
    readonly: bool,
    sla: Mapping[str, float],
    actors: Callable[[], Mapping[str, Any]] | None,
    throttle: LoginThrottle,
) -> None:
    """Add the dashboard's routes to `app` (none of them in the API's schema); `throttle` counts
    its wrong logins (the web process's, shared with the admin API's bearer check)."""
    site = Site(
        tokens, readonly=readonly, client=admin.broker.client, namespace=admin.settings.namespace, throttle=throttle
    )
    jobs = Jobs(actions)
    install_pages(app, site, admin=admin, jobs=jobs, sla=sla, actors=actors)
    install_actions(app, site, admin=admin, actions=actions, jobs=jobs)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
