"""The dashboard's actions: log in and out; pause and resume a queue; reset or open a breaker;
requeue or purge dead letters (one, the selection, or all matching the filter) at a rate.

Guarantees:
- Each action is two steps: a GET that shows what will happen (for dead letters, how many,
  counted then) with a form, and the POST of that form, checked by `Site.acting` (session,
  CSRF token, origin, read-only). A refused POST changes nothing and answers 403 with why.
- The POST goes through `actions.Actions` (audited with the token's name); bulk dead-letter
  actions run as a job (`jobs.py`) whose progress page the operator is sent to.
- A failed login is a 401 page that does not say whether a token exists under another name
  (429, a second later, once over the login throttle; a right token always logs in).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from ..actions import Actions, describe_selection
from ..auth import audit
from ..breakers import MAX_OPEN_SECONDS, BreakerOps, parse_duration
from ..dlq_model import Filter
from ..dlq_model import rate as parse_rate
from ..ops import Admin
from .jobs import Jobs, JobSpec
from .pages import BadFilter, filter_of
from .site import (
    COOKIE,
    LOGIN_COOKIE,
    UNAVAILABLE,
    Site,
    form_of,
    ids_of,
    local_path,
)

Form = Annotated[dict[str, str], Depends(form_of)]
QUEUE_ACTIONS = ("pause", "resume")
BREAKER_ACTIONS = ("reset", "open")
DEAD_LETTER_ACTIONS = ("requeue", "purge")
DONE = {"reset": "reset", "open": "opened"}  # what the breakers page then says was done


def install_actions(app: FastAPI, site: Site, *, admin: Admin, actions: Actions, jobs: Jobs) -> None:
    def refusals(handler: Callable[..., Response]) -> Callable[..., Response]:
        """A refused or failed action as a page (403 refused, 404 unknown, 400 bad input, 503 Redis)."""

        @functools.wraps(handler)
        def guarded(request: Request, *args: object, **kwargs: object) -> Response:
            try:
                return handler(request, *args, **kwargs)
            except HTTPException as exc:
                return site.render("error.html", exc.status_code, title="Refused", detail=exc.detail, visitor=None)
            except (LookupError, BadFilter, ValueError) as exc:
                status = 404 if isinstance(exc, LookupError) else 400
                return site.render("error.html", status, title="Cannot do that", detail=str(exc), visitor=None)
            except UNAVAILABLE as exc:
                detail = f"Redis cannot be reached ({type(exc).__name__}): nothing was done."
                return site.render("error.html", 503, title="Redis unavailable", detail=detail, visitor=None)

        return guarded

    # -- login -------------------------------------------------------------------------------

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, form: Form) -> Response:
        target = local_path(form.get("next"))
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        try:
            site.same_origin(request)
        except HTTPException as exc:
            return site.render("error.html", exc.status_code, title="Refused", detail=exc.detail, visitor=None)
        if not nonce or not hmac.compare_digest(form.get("csrf", "").encode(), nonce.encode()):
            detail = "Reload the login page (its form had expired, or this browser refused its cookie)."
            return site.render("error.html", 403, title="Refused", detail=detail, visitor=None)
        who = site.tokens.who(form.get("token", ""))  # first: a right token is never throttled
        if who is not None:
            return site.logged_in(request, who, target)
        return await site.wrong_token(request, functools.partial(site.login_page, request, nonce=nonce, target=target))

    @app.post("/logout", include_in_schema=False)
    @refusals
    def logout(request: Request, form: Form) -> Response:
        site.same_origin(request)
        visitor = site.visitor(request)
        if visitor is None or not site.tokens.csrf_ok(visitor.session, form.get("csrf", "")):
            raise HTTPException(403, "not logged in, or the form's CSRF token is not this session's")
        site.end(visitor.session)
        audit(visitor.who, "logout", "dashboard", "ok")
        answer = site.headers(RedirectResponse("/login", 303))
        answer.delete_cookie(COOKIE, path="/")
        return answer

    # -- queues ------------------------------------------------------------------------------

    @site.view(app, "/queues/{queue}/{action}")
    def confirm_queue(request: Request, queue: str, action: str) -> Response:
        if action not in QUEUE_ACTIONS or queue not in admin.queues():
            raise LookupError(f"no queue action {action} {queue}")
        effect = "stops delivering its messages (producers can still send)" if action == "pause" else "delivers again"
        return site.page(
            request, "confirm.html", title=f"{action.capitalize()} queue {queue}", effect=f"The queue {effect}.",
            action=f"/queues/{queue}/{action}", fields={}, button=f"{action.capitalize()} {queue}", back="/queues",
        )  # fmt: skip

    @app.post("/queues/{queue}/{action}", include_in_schema=False)
    @refusals
    def queue_action(request: Request, queue: str, action: str, form: Form) -> Response:
        who = site.acting(request, form)
        if action not in QUEUE_ACTIONS:
            raise LookupError(f"no queue action {action!r}")
        (actions.pause if action == "pause" else actions.resume)(who, admin.known(queue))
        return site.headers(RedirectResponse(f"/queues?{urlencode({action + 'd': queue})}", 303))

    # -- breakers ----------------------------------------------------------------------------

    @site.view(app, "/breakers/{name}/{action}")
    def confirm_breaker(request: Request, name: str, action: str) -> Response:
        if action not in BREAKER_ACTIONS or name not in BreakerOps(admin).names():
            raise LookupError(f"no breaker action {action} {name}")
        duration = request.query_params.get("for", "") if action == "open" else ""
        seconds = parse_duration(duration) if duration else 0.0  # ValueError: a 400 page that says why
        effect = (
            "Closes the breaker: calls go through again, and the queues it paused are resumed."
            if action == "reset"
            else f"Opens the breaker {'for ' + duration if seconds else 'until it is reset'}: calls are refused."
        )
        return site.page(
            request, "confirm.html", title=f"{action.capitalize()} breaker {name}", effect=effect,
            action=f"/breakers/{name}/{action}", fields={"seconds": f"{seconds:g}"},
            button=f"{action.capitalize()} {name}", back="/breakers",
        )  # fmt: skip

    @app.post("/breakers/{name}/{action}", include_in_schema=False)
    @refusals
    def breaker_action(request: Request, name: str, action: str, form: Form) -> Response:
        who = site.acting(request, form)
        if action == "reset":
            actions.breaker_reset(who, name)
        elif action == "open":
            seconds = float(form.get("seconds") or 0)
            if not 0 <= seconds <= MAX_OPEN_SECONDS:
                raise ValueError(f"seconds: between 0 and {MAX_OPEN_SECONDS}")
            actions.breaker_open(who, name, seconds)
        else:
            raise LookupError(f"no breaker action {action!r}")
        return site.headers(RedirectResponse(f"/breakers?{urlencode({DONE[action]: name})}", 303))

    # -- dead letters ------------------------------------------------------------------------

    @site.view(app, "/dead-letters/confirm")
    def confirm_dead_letters(request: Request) -> Response:
        values = dict(request.query_params)
        action = values.get("action", "")
        if action not in DEAD_LETTER_ACTIONS:
            raise ValueError("say what to do: requeue or purge")
        ids = request.query_params.getlist("ids") if values.get("scope") != "matching" else []
        if values.get("scope") != "matching" and not ids:
            raise ValueError("no dead letter selected: tick some, or choose all matching the filter")
        rate = rate_of(values.get("rate", "")) if action == "requeue" else None
        where = filter_of(admin, values) if not ids else Filter()  # ids name their entries wherever they are
        if ids:
            count, newest = len(admin.dead_letters.select(ids, False, where)), ""  # LookupError: a 404 page
        else:
            count, newest = counted(where)
        selection = describe_selection(ids, not ids, where)
        fields = {name: values.get(name, "") for name in ("queue", "actor", "tenant", "error", "reason")}
        fields.update(since_ms=str(where.since_ms or ""), newest=newest, expected=str(count))
        fields.update(rate=f"{rate:g}" if rate else "")
        pace = f" at most {rate:g} per second" if rate else " as fast as Redis takes them"
        return site.page(
            request, "confirm.html", title=f"{action.capitalize()} {count} dead letters",
            effect=(f"{action.capitalize()} {count} dead letter(s) ({selection})"
                    + (pace if action == "requeue" else "") + ": those counted now, no more."),
            action=f"/dead-letters/{action}", fields=fields, ids=ids, count=count,
            button=f"{action.capitalize()} {count}", back="/dead-letters",
        )  # fmt: skip

    def counted(where: Filter) -> tuple[int, str]:
        """How many dead letters match, and the newest one's cursor (what a job may take up to).
        Without a tenant filter, from the group index (no entry is read)."""
        page, _ = admin.dead_letters.page(where, limit=1)
        if not page:
            return 0, ""
        if where.tenant is None:
            return sum(group.count for group in admin.dead_letters.summary(where)), page[0].cursor
        return sum(1 for _ in admin.dead_letters.matching(where)), page[0].cursor

    @app.post("/dead-letters/{action}", include_in_schema=False)
    @refusals
    def dead_letter_action(request: Request, action: str, form: Form) -> Response:
        who = site.acting(request, form)
        if action not in DEAD_LETTER_ACTIONS:
            raise LookupError(f"no dead-letter action {action!r}")
        ids = ids_of(form)
        where = filter_of(admin, form) if not ids else Filter()
        rate = rate_of(form.get("rate", "")) if action == "requeue" else None
        expected = form.get("expected", "")
        if not ids and (not expected.isdigit() or not form.get("newest")):
            raise ValueError("confirm from the confirmation page: it says how many (expected, newest)")
        job_id = jobs.start(
            JobSpec(who, action, ids=ids, where=where, selection=describe_selection(ids, not ids, where),
                    newest=form.get("newest", ""), expected=int(expected or len(ids)), rate=rate)
        )  # fmt: skip
        return site.headers(RedirectResponse(f"/jobs/{job_id}", 303))


def rate_of(text: str) -> float | None:
    """A requeue rate as the form gives it (`50/s`, `600/m`, `50`; empty: no limit), at least 1 per second."""
    if not text.strip():
        return None
    rate = parse_rate(text.strip())
    if rate < 1:
        raise ValueError(f"rate: {text!r} is under 1 per second (the least a requeue goes at)")
    return rate
