"""The dashboard's plumbing: templates, the session cookie, the CSRF check, security headers.

Guarantees:
- Pages are rendered from the package's Jinja templates with autoescaping on: no value from
  Redis or a request reaches the page unescaped.
- A request without a genuine, unexpired session is sent to `/login` (a page: 303) or refused
  (an action: 403). Without a configured token, the token the process minted logs in, from the
  login link it printed (`/login?token=...`: the session is set, and the token leaves the URL).
- Logging in checks the token before the throttle (`throttle.py`, the one the admin API's bearer
  check counts in too): a right token always logs in; a wrong one over the limits is answered
  429 with Retry-After, after a delay of a second.
- The session cookie is HttpOnly, Secure, SameSite=Strict, Path=/; it holds the holder's name,
  an expiry, a random nonce and a signature, never the token (`auth.Tokens.session`).
- Every POST must carry the CSRF token of its session (a hidden field of every form) and, when
  the browser sends an Origin, come from this site's own origin (its Host, or the
  X-Forwarded-Host a proxy sets); else 403.
- Logging out ends that one session for good (another login of the same token, even in the same
  second, is another session): its nonce (signed, unique to the login) is kept in Redis
  (`{ns:admin}:ended`) until the session would have expired, and a session whose nonce is
  there is no session, however its cookie is spelt.
- A cookie that is not a session (any bytes) is a visitor without one, never an error.
- A client address (the audit log's `from=`, the throttle's key) is an IP address or "-".
- Every page and redirect it renders carries a Content-Security-Policy allowing this origin only
  (no inline script, no CDN), and is not cached, framed or sent with a referrer elsewhere.
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from ..auth import Tokens, audit, client_address_of, is_loopback, request_host, session_parts
from .charts import bars
from .data import seconds, when
from .throttle import LoginThrottle, retry_after

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


class Site:
    """Rendering and access for the dashboard; `tokens` decide who may see and act; `throttle`
    counts wrong logins (the web process's one, shared with the admin API)."""

    def __init__(
        self, tokens: Tokens, *, readonly: bool, client: redis.Redis, namespace: str, throttle: LoginThrottle
    ) -> None:
        self.tokens, self.readonly, self.client, self.throttle = tokens, readonly, client, throttle
        self.ended_key = f"{{{namespace}:admin}}:ended"
        self.env = Environment(
            loader=PackageLoader("triage.admin.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(bars=bars, seconds=seconds, when=when, readonly=readonly)

    def visitor(self, request: Request) -> Visitor | None:
        session = request.cookies.get(COOKIE)
        who = self.tokens.session_holder(session)
        if who is not None and session is not None and not self.ended(session):
            return Visitor(who, session)
        return None

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """The page for a logged-in visitor, else a redirect to the login page."""
        visitor = self.visitor(request)
        if visitor is None:
            return self.to_login(request)
        return self.render(template, status, visitor=visitor, csrf=self.tokens.csrf(visitor.session), **context)

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
        if visitor is None:
            raise HTTPException(403, "log in first: this action needs a session")
        if not self.tokens.csrf_ok(visitor.session, form.get("csrf", "")):
            raise HTTPException(403, "the form's CSRF token is missing or not this session's: reload the page")
        if self.readonly:
            raise HTTPException(403, "this dashboard is read-only (TRIAGE_DASHBOARD_READONLY)")
        return visitor.who

    def ended(self, session: str) -> bool:
        """Whether `session` was logged out, by its nonce (Redis unreachable: not known to be,
        and every page that needs Redis says it is unreachable)."""
        parts = session_parts(session)
        if parts is None:
            return True
        try:
            return self.client.zscore(self.ended_key, parts[2]) is not None
        except UNAVAILABLE:
            return False

    def end(self, session: str) -> None:
        """End `session` for good (logout): its nonce, whatever its cookie's spelling."""
        parts = session_parts(session)
        if parts is None:
            raise ValueError("not a session: only a genuine session can be ended")
        _, expiry, nonce, _ = parts
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.ended_key, {nonce: expiry})
        pipe.zremrangebyscore(self.ended_key, "-inf", time.time())
        pipe.execute()

    def login_page(self, request: Request, status: int = 200, *, nonce: str, target: str) -> Response:
        """The login form (its hidden nonce `nonce`); `status` 401 or 429 says why the last try failed."""
        error = {200: "", 401: "That token is not valid."}.get(status, "Too many failed logins: try again later.")
        return self.render(
            "login.html", status, nonce=nonce, next=target, error=error, visitor=None,
            insecure=plain_http_elsewhere(request), minted=self.tokens.minted,
        )  # fmt: skip

    def logged_in(self, request: Request, who: str, target: str) -> Response:
        """A new session for `who`, and a 303 to `target` (a path of this site)."""
        audit(who, "login", "dashboard", "ok")
        answer = self.headers(RedirectResponse(target, 303))
        self.set_session(answer, self.tokens.session(who))
        answer.delete_cookie(LOGIN_COOKIE, path="/login")
        return answer

    async def wrong_token(self, request: Request, page: Callable[[int], Response]) -> Response:
        """The answer to a wrong token: `page(401)` while within the throttle's limits, else,
        after its delay (a second), `page(429)` with Retry-After; audited either way."""
        address = client_address(request)
        wait = await self.throttle.refused(address)
        outcome = "refused: too many failed logins" if wait else "refused: wrong token"
        audit("-", "login", f"dashboard from={address}", outcome)
        if not wait:
            return page(401)
        answer = page(429)
        answer.headers["Retry-After"] = retry_after(wait)
        return answer

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


def plain_http_elsewhere(request: Request) -> bool:
    """Whether the page came over plain http to an address that is not this machine's (where a
    browser drops the Secure session cookie): not through a TLS proxy, not to localhost."""
    if request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https":
        return False
    return not is_loopback(request_host(request.headers.get("host")))


def client_address(request: Request) -> str:
    """The client's IP address as uvicorn reports it, or "-" (none, or not an IP address)."""
    return client_address_of(request.client.host if request.client else None)


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
