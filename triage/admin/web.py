"""The web process (`triage serve`): fleet metrics, health, and the admin HTTP API.

Routes (the admin API's schema is served at `/openapi.json`):
  GET  /metrics                                   fleet metrics from Redis (`fleet_metrics.py`), Prometheus text
  GET  /healthz                                   200 while the process is up
  GET  /readyz                                    200 when Redis answers a PING, else 503
  GET  /api/v1/admin/queue/stats                  every queue's `triage stats` fields, its SLA target, whether met
  GET  /api/v1/admin/queue/dead-letters           a page of dead letters, newest first (the CLI's filters)
  GET  /api/v1/admin/queue/dead-letters/summary   dead letters grouped by queue, actor, error type, reason
  GET  /api/v1/admin/queue/dead-letters/{id}      one dead letter, with its traceback and decoded message
  POST /api/v1/admin/queue/dead-letters/requeue   requeue by ids, filters or all (at most `limit` per call)
  POST /api/v1/admin/queue/dead-letters/purge     purge the same way
  POST /api/v1/admin/queue/{queue}/pause|resume   pause or resume a queue
  GET  /api/v1/admin/breakers                     every circuit breaker's state
  POST /api/v1/admin/breakers/{name}/reset|open   close one (resuming the queues it paused), or open it
  /  (and /login, /queues, /dead-letters, ...)     the dashboard (`dashboard/`), on the same tokens

Guarantees:
- Request bodies are capped (`body_limit.py`, outermost): over `max_body_bytes` is a 413 before
  any authentication, parsing or route runs, a streamed body cut at the cap.
- Admin endpoints and `/metrics` need `Authorization: Bearer <token>` (`TRIAGE_ADMIN_TOKEN`, or
  one of `TRIAGE_ADMIN_TOKENS`), compared in constant time: 401 without it, 403 with another;
  wrong ones are counted per client address and overall in the throttle the dashboard's login
  counts in (`dashboard/throttle.py`, one per process), and past its limits a wrong token is a
  429 with Retry-After, a second later; the right token is checked first and never refused
  (queue, breaker and tenant figures are
  not for the public internet; Prometheus sends the token, see triage/deploy/prometheus). With no
  token configured, a token is minted for the process (`Tokens.mint`; `triage serve` prints it
  as a login link) and is needed all the same; `triage serve` then refuses to bind anything but
  a loopback address. `/healthz`, `/readyz` and `/openapi.json` are public: they hold no data.
- With a minted token, a request must also name a loopback host (Host: localhost, 127.0.0.1,
  [::1]; else 421: a page of another site that rebinds its name to 127.0.0.1 gets nothing),
  carry no proxy header (X-Forwarded-For, Forwarded, X-Real-IP, X-Forwarded-Host: a proxy in
  front means callers that are not local: 403, set a token), and a request that changes
  something must come from this origin (an Origin that is "null" or not the Host, or a
  Sec-Fetch-Site other than same-origin or none: 403).
- Every answer is computed from Redis at request time (no application code, no cache); Redis
  unreachable (connection refused, timed out) gives 503 on `/readyz` and the admin API, and
  `triage_redis_up 0` on `/metrics`; any other Redis error is a 500 (a bug to see, not hide).
- Bad input is a 4xx that names the problem (422 for a malformed parameter or body, 400 for an
  action that names no dead letters or both ids and filters, 404 for an unknown queue, breaker
  or dead letter); no request makes a 500, and every answer is documented in the schema
  (fuzzed from it). Numbers are finite and in range (NaN and infinities are 422s whose body
  quotes them as text), `all` is a JSON boolean (not 1, not "yes"), and a filter is never
  empty: `tenant: ""` is refused rather than read as "no tenant" or as "no filter" (omit it).
- An action names what it acts on: dead-letter actions need ids, filters or `all` (never a
  default of everything), and act on at most `limit` entries per call (`more` says whether
  matching entries remain), so that one request stays short.
- Nothing here logs message arguments; only a dead letter's own page returns its message.
- Every action (POST) goes through `actions.Actions`, the dashboard's path too, and is written
  to the audit log with the name of the token that took it.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Annotated, Any, get_type_hints
from urllib.parse import urlsplit

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model

from triage.broker.breaker_state import CircuitStore
from triage.broker.periodic_state import last_successes
from triage.stats import QueueStats
from triage.tiers import sla_targets

from . import dlq_model
from .actions import Actions, describe_selection
from .auth import Tokens, is_loopback, request_host
from .body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from .breakers import MAX_OPEN_SECONDS, BreakerOps
from .dashboard import install_dashboard
from .dashboard.site import client_address
from .dashboard.throttle import LoginThrottle, retry_after
from .dlq_model import DURATION, NAME, DeadLetter, Filter, Group
from .fleet_metrics import FleetCollector
from .ops import Admin, UnknownQueue

ADMIN_PREFIX = "/api/v1/admin"
CURSOR = r"^\d{13}-[0-9A-Za-z_.:-]{1,200}$"
MAX_ACTION = 10_000


# The stats row as the API answers it: `triage stats` fields (read from the TypedDict, so the
# schema follows the broker's contract), plus the tier's SLA target and whether it is met.
QueueStatsAnswer = create_model(
    "QueueStatsAnswer",
    **{name: (hint, ...) for name, hint in get_type_hints(QueueStats).items()},  # type: ignore[call-overload]
    sla_seconds=(float, ...),
    sla_met=(bool, ...),
)


class StatsPage(BaseModel):
    queues: dict[str, QueueStatsAnswer]  # type: ignore[valid-type]


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter] = Field(description="Without tracebacks and messages (GET one for those).")
    next: str | None = Field(description="The cursor of the next page (null: no more).")


class Filters(BaseModel):
    """Which dead letters: every filter given must match (the CLI's --queue, --actor, ...)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt filter is an error, not "everything"

    queue: Annotated[str, Field(pattern=NAME)] | None = None
    actor: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    tenant: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    error: (
        Annotated[str, Field(min_length=1, max_length=200, description="An error type, e.g. ConnectionError")] | None
    ) = None
    reason: (
        Annotated[str, Field(min_length=1, max_length=200, description="exhausted, dead_on, crash-loop, ...")] | None
    ) = None
    since: (
        Annotated[str, Field(pattern=DURATION, description="Dead-lettered this recently: 30s, 15m, 1h, 7d")] | None
    ) = None


class PageQuery(Filters):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    cursor: Annotated[str, Field(pattern=CURSOR, description="`next` of the previous page")] | None = None


class SummaryQuery(Filters):
    tenant: None = Field(default=None, description="Not a summary filter: the groups do not record tenants.")


class Selection(Filters):
    """Which dead letters an action takes: `ids`, or the filters, or `all` (with `queue`: that queue's)."""

    ids: list[Annotated[str, Field(pattern=NAME)]] = Field(default_factory=list, max_length=MAX_ACTION)
    all: StrictBool = Field(default=False, description='A JSON boolean (not 1, not "yes").')
    limit: Annotated[int, Field(ge=1, le=MAX_ACTION)] = 1000


class RequeueRequest(Selection):
    rate: Annotated[float, Field(ge=1, le=dlq_model.MAX_RATE, allow_inf_nan=False)] | None = Field(
        default=None, description="At most this many per second."
    )


class ActionOut(BaseModel):
    matched: int
    done: int
    gone: int = Field(description="Taken by someone else first.")
    skipped: list[str] = Field(description="Entries that cannot be decoded (left in place).")
    more: bool = Field(description="Matching entries remain beyond `limit`: call again.")


class Problem(BaseModel):
    detail: str


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "A body that is not JSON, or an action that names no dead letters (or both ids and filters)",
        401: "No admin token (Authorization: Bearer <TRIAGE_ADMIN_TOKEN>)",
        403: "Wrong admin token",
        429: "Too many wrong admin tokens from this address (or from all): try again after Retry-After",
        404: "Unknown queue, breaker or dead letter",
        503: "Redis unavailable",
    }
    return {code: {"model": Problem, "description": texts[code]} for code in codes}


class QueueState(BaseModel):
    queue: str
    paused: bool


class BreakerOut(BaseModel):
    breaker: str
    state: str
    resumed: list[str] = Field(default_factory=list)


class OpenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: Annotated[float, Field(ge=0, le=MAX_OPEN_SECONDS, allow_inf_nan=False)] = Field(
        default=0, description="0: until reset."
    )


def create_app(
    admin: Admin,
    *,
    token: str | Tokens | None,
    readonly: bool = False,
    actors: Callable[[], Mapping[str, Any]] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The ASGI app over `admin`'s Redis; `token` (one, or `Tokens` by name) guards the admin
    endpoints and the dashboard (None: a token minted here, `app.state.tokens.local_token`);
    `readonly`: the dashboard offers no action; `actors`: the app's actors, for the dashboard's
    schedule (loaded when first shown); `max_body_bytes`: the largest request body read."""
    tokens = token if isinstance(token, Tokens) else Tokens.of(token)
    if not tokens.enabled:
        tokens = Tokens.mint()
    acts = Actions(admin)
    sla = sla_targets(admin.settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        FleetCollector(
            stats=admin.stats,
            sla_seconds=lambda tier: sla.get(tier, sla["default"]),
            live_workers=admin.broker.registry.live_workers,
            breakers=CircuitStore(client=admin.broker.client, namespace=admin.settings.namespace),
            periodic=lambda: last_successes(admin.broker.client, admin.settings.namespace),
        )
    )
    bearer = HTTPBearer(auto_error=False, description="TRIAGE_ADMIN_TOKEN")
    throttle = LoginThrottle()  # wrong tokens of this process: the API's and the dashboard's logins

    async def authorized(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> str:
        """The name of the caller's token ("local" for the minted one); a wrong one is counted in
        the throttle (the right one is checked first: never refused)."""
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                401, "admin endpoints need Authorization: Bearer <TRIAGE_ADMIN_TOKEN>", {"WWW-Authenticate": "Bearer"}
            )
        who = tokens.who(credentials.credentials)
        if who is not None:
            return who
        if wait := await throttle.refused(client_address(request)):
            raise HTTPException(429, "too many wrong admin tokens: try again later", {"Retry-After": retry_after(wait)})
        raise HTTPException(403, "wrong admin token")

    Who = Annotated[str, Depends(authorized)]

    def single_valued(request: Request) -> None:
        names = [name for name, _ in request.query_params.multi_items()]
        if repeated := sorted({name for name in names if names.count(name) > 1}):
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", name), "msg": "given more than once", "input": None}
                 for name in repeated]
            )  # fmt: skip

    app = FastAPI(title="Triage admin API", version="1", docs_url=None, redoc_url=None)
    app.state.tokens = tokens
    if tokens.minted:
        app.middleware("http")(_local_callers_only)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # added last: the outermost
    api = APIRouter(
        prefix=ADMIN_PREFIX,
        dependencies=[Depends(authorized), Depends(single_valued)],
        responses=_documented(400, 401, 403, 429, 503),
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422, with the offending input made JSON (NaN and infinities as text)."""
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    # Only an unreachable Redis is a 503; any other Redis error (a script's) is a bug, a 500.
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(OSError)
    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": f"Redis unavailable ({type(exc).__name__})"}, status_code=503)

    @app.get("/metrics", response_class=Response, include_in_schema=False, dependencies=[Depends(authorized)])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Redis does not answer"}})
    def readyz() -> Response:
        try:
            admin.broker.client.ping()
        except (redis.RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "redis": "ok"})

    @api.get("/queue/stats")
    def queue_stats() -> StatsPage:
        queues: dict[str, Any] = {}
        for name, row in admin.stats().items():
            target = sla.get(row["tier"], sla["default"])
            met = row["oldest_waiting_seconds"] <= target
            queues[name] = QueueStatsAnswer(**row, sla_seconds=target, sla_met=met)
        return StatsPage(queues=queues)

    def where(filters: Filters) -> Filter:
        if filters.queue is not None:
            known(filters.queue)
        values = filters.model_dump(include={"queue", "actor", "tenant", "error", "reason"})
        return Filter(**values, since_ms=dlq_model.since(filters.since) if filters.since else None)

    def known(queue: str) -> str:
        try:
            return admin.known(queue)
        except UnknownQueue as exc:
            raise HTTPException(404, str(exc)) from None

    @api.get("/queue/dead-letters", responses=_documented(404))
    def dead_letters(query: Annotated[PageQuery, Query()]) -> DeadLetterPage:
        page, following = admin.dead_letters.page(where(query), limit=query.limit, cursor=query.cursor)
        return DeadLetterPage(dead_letters=[_out(entry) for entry in page], next=following)

    @api.get("/queue/dead-letters/summary", responses=_documented(404))
    def dead_letter_summary(query: Annotated[SummaryQuery, Query()]) -> list[Group]:
        return admin.dead_letters.summary(where(query))

    def selected(body: Selection) -> tuple[list[DeadLetter], bool]:
        try:
            entries = admin.dead_letters.select(body.ids, body.all, where(body), limit=body.limit + 1)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        return entries[: body.limit], len(entries) > body.limit

    @api.post("/queue/dead-letters/requeue", responses=_documented(404))
    def requeue(body: RequeueRequest, who: Who) -> ActionOut:
        entries, more = selected(body)
        result = acts.requeue(who, entries, selection=selection_of(body), rate=body.rate)
        return ActionOut(**vars(result), more=more)

    @api.post("/queue/dead-letters/purge", responses=_documented(404))
    def purge(body: Selection, who: Who) -> ActionOut:
        entries, more = selected(body)
        result = acts.purge(who, entries, selection=selection_of(body))
        return ActionOut(**vars(result), more=more)

    def selection_of(body: Selection) -> str:
        return describe_selection(body.ids, body.all, where(body))

    # After requeue and purge: a route's path is matched before its method.
    @api.get("/queue/dead-letters/{entry_id}", responses=_documented(404))
    def dead_letter(
        entry_id: Annotated[str, Path(pattern=NAME)], queue: Annotated[str | None, Query(pattern=NAME)] = None
    ) -> DeadLetter:
        entry = admin.dead_letters.show(entry_id, known(queue) if queue else None)
        if entry is None:
            raise HTTPException(404, f"no dead letter {entry_id!r}")
        return _out(entry, whole=True)

    @api.post("/queue/{queue}/pause", responses=_documented(404))
    def pause(queue: Annotated[str, Path(pattern=NAME)], who: Who) -> QueueState:
        acts.pause(who, known(queue))
        return QueueState(queue=queue, paused=True)

    @api.post("/queue/{queue}/resume", responses=_documented(404))
    def resume(queue: Annotated[str, Path(pattern=NAME)], who: Who) -> QueueState:
        acts.resume(who, known(queue))
        return QueueState(queue=queue, paused=False)

    def breakers_of() -> BreakerOps:
        return BreakerOps(admin)

    @api.get("/breakers")
    def breakers() -> dict[str, dict[str, Any]]:
        return breakers_of().status()

    @api.post("/breakers/{name}/reset", responses=_documented(404))
    def breaker_reset(name: Annotated[str, Path(pattern=NAME)], who: Who) -> BreakerOut:
        try:
            resumed = acts.breaker_reset(who, name)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        return BreakerOut(breaker=name, state="closed", resumed=resumed)

    @api.post("/breakers/{name}/open", responses=_documented(404))
    def breaker_open(name: Annotated[str, Path(pattern=NAME)], who: Who, body: OpenRequest | None = None) -> BreakerOut:
        try:
            state = acts.breaker_open(who, name, (body or OpenRequest()).seconds)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        return BreakerOut(breaker=name, state=state)

    app.include_router(api)
    install_dashboard(
        app, admin=admin, actions=acts, tokens=tokens, readonly=readonly, sla=sla, actors=actors, throttle=throttle
    )
    return app


PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host")


async def _local_callers_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """With a minted token: only requests to a loopback host, through no proxy, and no change
    from another origin."""
    host = request_host(request.headers.get("host"))
    if not is_loopback(host):
        return JSONResponse({"detail": f"without an admin token, only localhost is served (Host: {host!r})"}, 421)
    if proxied := [name for name in PROXY_HEADERS if name in request.headers]:
        detail = f"without an admin token, nothing is served through a proxy ({proxied[0]}): set TRIAGE_ADMIN_TOKEN"
        return JSONResponse({"detail": detail}, 403)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("origin")
        fetch_site = request.headers.get("sec-fetch-site", "same-origin").lower()
        foreign = origin is not None and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host"))
        if foreign or fetch_site not in ("same-origin", "none"):
            return JSONResponse({"detail": "a request from another origin cannot act here"}, 403)
    return await call_next(request)


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float as its text: JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def _out(entry: DeadLetter, *, whole: bool = False) -> DeadLetter:
    """The entry as answered: a page's entries without traceback and message (one entry's page has them)."""
    return entry if whole else replace(entry, traceback="", message=None)
