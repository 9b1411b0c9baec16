"""The dashboard's plumbing: templates, the session cookie, the CSRF check, security headers.

Guarantees:
- Pages are rendered from the package's Jinja templates with autoescaping on: no value from
  Redis or a request reaches the page unescaped.
- With tokens configured, a request without a genuine, unexpired session is sent to `/login`
  (a page: 303) or refused (an action: 403). Without tokens (loopback only), a session for
  "local" is issued on the first page, so that actions still carry a CSRF token.
- The session cookie is HttpOnly, Secure, SameSite=Strict, Path=/; it holds the holder's name,
  an expiry and a signature, never the token (`auth.Tokens.session`).
- Every POST must carry the CSRF token of its session (a hidden field of every form) and, when
  the browser sends an Origin, come from this site's own origin (its Host, or the
  X-Forwarded-Host a proxy sets); else 403.
- Logging out ends the session for good: its digest is kept in Redis (`{ns:admin}:ended`)
  until the session would have expired, and a session found there is no session.
- Every page and redirect it renders carries a Content-Security-Policy allowing this origin only
  (no inline script, no CDN), and is not cached, framed or sent with a referrer elsewhere.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from ..auth import LOCAL, Tokens, is_loopback, request_host
from .charts import bars
from .data import seconds, when

UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
COOKIE = "triage_session"
LOGIN_COOKIE = "triage_login"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Visitor:
    who: str
    session: str
    new: bool  # issued with this answer (no tokens configured): set the cookie


class Site:
    """Rendering and access for the dashboard; `tokens` decide who may see and act."""

    def __init__(self, tokens: Tokens, *, readonly: bool, client: redis.Redis, namespace: str) -> None:
        self.tokens, self.readonly, self.client = tokens, readonly, client
        self.ended_key = f"{{{namespace}:admin}}:ended"
        self.env = Environment(
            loader=PackageLoader("triage.admin.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(bars=bars, seconds=seconds, when=when, readonly=readonly, login_required=tokens.enabled)

    def visitor(self, request: Request) -> Visitor | None:
        session = request.cookies.get(COOKIE)
        who = self.tokens.session_holder(session)
        if who is not None and session is not None and not self.ended(session):
            return Visitor(who, session, new=False)
        if not self.tokens.enabled:
            return Visitor(LOCAL, self.tokens.session(LOCAL), new=True)
        return None

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """The page for a logged-in visitor, else a redirect to the login page."""
        visitor = self.visitor(request)
        if visitor is None:
            return self.to_login(request)
        answer = self.render(template, status, visitor=visitor, csrf=self.tokens.csrf(visitor.session), **context)
        if visitor.new:
            self.set_session(answer, visitor.session)
        return answer

    def view(self, app: FastAPI, path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Register a GET page at `path`: without a session, the login page; input it cannot use
        (ValueError: 400, LookupError: 404) and Redis unreachable (503) as pages that say why."""

        def register(handler: Callable[..., Response]) -> Callable[..., Response]:
            @functools.wraps(handler)
            def guarded(*args: Any, **kwargs: Any) -> Response:
                request: Request = kwargs["request"]
                if self.visitor(request) is None:
                    return self.to_login(request)
                try:
                    return handler(*args, **kwargs)
                except UNAVAILABLE as exc:
                    detail = f"Redis cannot be reached ({type(exc).__name__}): try again in a moment."
                    return self.page(request, "error.html", 503, title="Redis unavailable", detail=detail)
                except LookupError as exc:
                    return self.page(request, "error.html", 404, title="Not found", detail=str(exc))
                except ValueError as exc:
                    return self.page(request, "error.html", 400, title="Cannot show that", detail=str(exc))

            app.add_api_route(path, guarded, methods=["GET"], include_in_schema=False)
            return guarded

        return register

    def to_login(self, request: Request) -> Response:
        """303 to the login page, which returns here after."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.headers(RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), 303))

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        return self.headers(HTMLResponse(self.env.get_template(template).render(**context), status_code=status))

    def acting(self, request: Request, form: Mapping[str, str]) -> str:
        """Who posts `form`, once the session, the CSRF token and the origin are checked (else 403)."""
        self.same_origin(request)
        visitor = self.visitor(request)
        if visitor is None or visitor.new:
            raise HTTPException(403, "log in first: this action needs a session")
        if not self.tokens.csrf_ok(visitor.session, form.get("csrf", "")):
            raise HTTPException(403, "the form's CSRF token is missing or not this session's: reload the page")
        if self.readonly:
            raise HTTPException(403, "this dashboard is read-only (TRIAGE_DASHBOARD_READONLY)")
        return visitor.who

    def ended(self, session: str) -> bool:
        """Whether `session` was logged out (Redis unreachable: not known to be, and every page
        that needs Redis says it is unreachable)."""
        if not self.tokens.enabled:
            return False
        try:
            return self.client.zscore(self.ended_key, _digest(session)) is not None
        except UNAVAILABLE:
            return False

    def end(self, session: str) -> None:
        """End `session` for good (logout)."""
        expiry = int(session.rsplit(".", 2)[1])
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.ended_key, {_digest(session): expiry})
        pipe.zremrangebyscore(self.ended_key, "-inf", time.time())
        pipe.execute()

    @staticmethod
    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return  # no Origin: a same-origin GET-turned-POST by an old browser; the CSRF token decides
        hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
        if urllib.parse.urlsplit(origin).netloc not in hosts:
            raise HTTPException(403, "cross-site form post refused")

    @staticmethod
    def set_session(answer: Response, session: str) -> None:
        answer.set_cookie(COOKIE, session, httponly=True, secure=True, samesite="strict", path="/")

    @staticmethod
    def headers(answer: Response) -> Response:
        answer.headers.update(HEADERS)
        return answer


class LoginThrottle:
    """Failed logins per client address: after `failures` within `window` seconds, that address
    is refused until the oldest of them is `window` old (per web process)."""

    def __init__(self, failures: int = 10, window: float = 300.0) -> None:
        self.failures, self.window = failures, window
        self._failed: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str) -> bool:
        with self._lock:
            recent = self._recent(address)
            return len(recent) >= self.failures

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(time.monotonic())
            if len(self._failed) > 10_000:  # many addresses: forget those with nothing recent
                for stale in [a for a, times in self._failed.items() if not times]:
                    del self._failed[stale]

    def _recent(self, address: str) -> collections.deque[float]:
        times = self._failed.setdefault(address, collections.deque())
        while times and time.monotonic() - times[0] > self.window:
            times.popleft()
        return times


def plain_http_elsewhere(request: Request) -> bool:
    """Whether the page came over plain http to an address that is not this machine's (where a
    browser drops the Secure session cookie): not through a TLS proxy, not to localhost."""
    if request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https":
        return False
    return not is_loopback(request_host(request.headers.get("host")))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form body (the last value of a repeated field; `ids` are read by `ids_of`)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = urllib.parse.parse_qsl(body, keep_blank_values=True)
    form = dict(fields)
    form["ids"] = "\n".join(value for name, value in fields if name == "ids")
    return form


def ids_of(form: Mapping[str, str]) -> list[str]:
    return [value for value in form.get("ids", "").split("\n") if value]


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site (no scheme, no host), else `/`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urllib.parse.urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"
