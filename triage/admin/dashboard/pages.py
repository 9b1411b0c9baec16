"""The dashboard's read views: overview, queues, dead letters, one dead letter, a job's
progress, breakers, tenants, workers, schedule, and the login page.

Guarantees: each view reads Redis once per request (nothing cached); a filter that cannot be
read (a bad duration, an unknown queue) is shown on the page with what was wrong (400/404),
never a server error; Redis unreachable gives a 503 page that says so.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ..auth import LOCAL, audit
from ..breakers import BreakerOps
from ..dlq_model import Filter, filter_from
from ..ops import Admin, UnknownQueue
from ..schedule import schedule_rows
from .data import live_workers, overview_cards, top_tenants
from .jobs import Jobs
from .site import LOGIN_COOKIE, Site, local_path

PAGE_SIZE = 50
# A dead letter's message options shown before its arguments are asked for: the broker's and
# the policies' own, which never hold argument values.
SHOWN_OPTIONS = frozenset(
    {"priority", "tenant", "retries", "max_retries", "eta", "triage_deliveries", "redis_message_id", "tick"}
    | {"dedup_mode", "dedup_ttl", "time_limit", "max_deliveries", "duplicate_of"}
)


class BadFilter(ValueError):
    """A filter of the dead-letter views that cannot be used (the message says why)."""


def filter_of(admin: Admin, values: Mapping[str, str]) -> Filter:
    """The dead-letter filter of a query or form (`dlq_model.filter_from`), its queue a known one."""
    try:
        where = filter_from(values)
        if where.queue is not None:
            admin.known(where.queue)
    except (ValueError, UnknownQueue) as exc:
        raise BadFilter(str(exc)) from None
    return where


def notices(request: Request, kind: str, verbs: tuple[str, ...], known: Mapping[str, Any]) -> list[str]:
    """What an action just did, as its redirect says (`?paused=critical`): only of things that
    exist, in fixed words (a crafted link cannot put its own text on the page)."""
    return [f"{kind} {name} {verb}." for verb in verbs if (name := request.query_params.get(verb)) in known]


def install_pages(
    app: FastAPI,
    site: Site,
    *,
    admin: Admin,
    jobs: Jobs,
    sla: Mapping[str, float],
    actors: Callable[[], Mapping[str, Any]] | None,
) -> None:
    view = functools.partial(site.view, app)

    @view("/")
    def overview(request: Request) -> Response:
        return site.page(request, "overview.html", cards=overview_cards(admin, sla), page="overview")

    @view("/fragments/overview")
    def cards_fragment(request: Request) -> Response:
        return site.page(request, "_cards.html", cards=overview_cards(admin, sla))

    @view("/queues")
    def queues(request: Request) -> Response:
        stats = admin.stats()
        done = notices(request, "Queue", ("paused", "resumed"), stats)
        return site.page(request, "queues.html", stats=stats, done=done, page="queues")

    @view("/dead-letters")
    def dead_letters(request: Request) -> Response:
        values = dict(request.query_params)
        context: dict[str, Any] = {"values": values, "page": "dead-letters", "error": "", "groups": [], "entries": []}
        try:
            where = filter_of(admin, values)
        except BadFilter as exc:
            return site.page(request, "dead_letters.html", 400, **{**context, "error": str(exc)})
        cursor = values.get("cursor") or None
        if where.tenant is None:  # the groups do not record tenants
            context["groups"] = admin.dead_letters.summary(where)
        entries, following = admin.dead_letters.page(where, limit=PAGE_SIZE, cursor=cursor)
        context.update(entries=entries, next=following, recent=jobs.recent(5), filtered=not where.is_empty())
        return site.page(request, "dead_letters.html", **context)

    @view("/dead-letters/entry/{entry_id}")
    def dead_letter(request: Request, entry_id: str) -> Response:
        queue = request.query_params.get("queue") or None
        reveal = request.query_params.get("reveal") == "1"
        if queue is not None and queue not in admin.queues():
            return site.page(request, "error.html", 404, title="Unknown queue", detail=queue)
        entry = admin.dead_letters.show(entry_id, queue)
        if entry is None:
            return site.page(request, "error.html", 404, title="No such dead letter", detail=entry_id)
        visitor = site.visitor(request)
        if reveal and visitor is not None:
            audit(visitor.who, "show-arguments", f"dead-letter={entry_id} queue={entry.queue}", "shown")
        message = dict(entry.message or {})
        arguments = {"args": message.pop("args", []), "kwargs": message.pop("kwargs", {})}
        options = message.pop("options", None) or {}
        if not reveal:  # options other than the broker's own may carry arguments (a dedup key, a pipeline's next)
            hidden = sorted(name for name in options if name not in SHOWN_OPTIONS)
            options = {name: value for name, value in options.items() if name in SHOWN_OPTIONS}
        return site.page(
            request,
            "dead_letter.html",
            entry=entry,
            message={**message, "options": options},
            hidden_options=[] if reveal else hidden,
            arguments=arguments if reveal else None,
            argument_count=(len(arguments["args"]), len(arguments["kwargs"])),
            page="dead-letters",
        )

    @view("/jobs/{job_id}")
    def job(request: Request, job_id: str) -> Response:
        found = jobs.get(job_id) if job_id.isalnum() else None
        if found is None:
            return site.page(request, "error.html", 404, title="No such job", detail=job_id)
        return site.page(request, "job.html", job=found, page="dead-letters")

    @view("/breakers")
    def breakers(request: Request) -> Response:
        status = BreakerOps(admin).status()
        done = notices(request, "Breaker", ("reset", "opened"), status)
        return site.page(request, "breakers.html", breakers=status, done=done, page="breakers")

    @view("/tenants")
    def tenants(request: Request) -> Response:
        return site.page(request, "tenants.html", listing=top_tenants(admin), page="tenants")

    @view("/workers")
    def workers(request: Request) -> Response:
        return site.page(request, "workers.html", workers=live_workers(admin), page="workers")

    @view("/schedule")
    def schedule(request: Request) -> Response:
        rows: dict[str, dict[str, Any]] = {}
        problem = "" if actors is not None else "The web process was started without the app: no schedule to show."
        if actors is not None:
            try:
                found = actors()
            except Exception as exc:  # the app failed to import: say so, keep serving the rest
                problem = f"The app's actors could not be loaded: {type(exc).__name__}: {exc}"
            else:
                rows = schedule_rows(dict(found), admin.broker.client, admin.settings.namespace)
        return site.page(request, "schedule.html", rows=rows, problem=problem, page="schedule")

    @app.get("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        target = local_path(request.query_params.get("next"))
        link_token = request.query_params.get("token")
        if link_token is not None and site.tokens.minted:  # the login link `triage serve` printed
            if site.tokens.who(link_token) is not None:
                return site.logged_in(request, LOCAL, target)  # the token leaves the URL with the 303
            return await site.wrong_token(request, lambda status: login_form(request, target, status))
        if site.visitor(request) is not None:
            return site.headers(RedirectResponse(target, 303))
        return login_form(request, target, 200)

    def login_form(request: Request, target: str, status: int) -> Response:
        """The login page, with a fresh form nonce (its cookie is set with it); `status` above 200
        says why the previous try failed."""
        nonce = secrets.token_urlsafe(24)
        answer = site.login_page(request, status, nonce=nonce, target=target)
        answer.set_cookie(LOGIN_COOKIE, nonce, httponly=True, secure=True, samesite="strict", path="/login")
        return answer
