"""The web process (`triage serve`): fleet metrics, health, and the admin HTTP API.

Routes:
  GET /metrics                     fleet metrics from Redis (`fleet_metrics.py`), Prometheus text format
  GET /healthz                     200 while the process is up
  GET /readyz                      200 when Redis answers a PING, else 503
  GET /api/v1/admin/queue/stats    every queue's `triage stats` fields, with its SLA target and whether it is met

Guarantees:
- Admin endpoints (`/api/v1/admin/...`) need `Authorization: Bearer <TRIAGE_ADMIN_TOKEN>`,
  compared in constant time: 401 without it, 403 with another. With no token configured they
  are open, and `triage serve` refuses to bind anything but a loopback address.
- Every answer is computed from Redis alone at request time (no application code, no cache);
  Redis unreachable gives 503 on `/readyz` and the admin API, and `triage_redis_up 0` on `/metrics`.
- Nothing here logs or returns message arguments.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from triage.broker.breaker_state import CircuitStore
from triage.tiers import sla_targets

from .fleet_metrics import FleetCollector
from .ops import Admin

ADMIN_PREFIX = "/api/v1/admin/"
Endpoint = Callable[[Request], Response]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(admin: Admin, *, token: str | None) -> Starlette:
    """The ASGI app over `admin`'s Redis; `token` guards the admin endpoints (None: open)."""
    sla = sla_targets(admin.settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        FleetCollector(
            stats=admin.stats,
            sla_seconds=lambda tier: sla.get(tier, sla["default"]),
            live_workers=admin.broker.registry.live_workers,
            breakers=CircuitStore(client=admin.broker.client, namespace=admin.settings.namespace),
        )
    )

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def readyz(request: Request) -> Response:
        try:
            admin.broker.client.ping()
        except (redis.RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "redis": "ok"})

    def queue_stats(request: Request) -> Response:
        queues: dict[str, Any] = {}
        for name, row in admin.stats().items():
            target = sla.get(row["tier"], sla["default"])
            queues[name] = {**row, "sla_seconds": target, "sla_met": row["oldest_waiting_seconds"] <= target}
        return JSONResponse({"queues": queues})

    def guarded(endpoint: Endpoint, *, admin_api: bool = False) -> Endpoint:
        def answer(request: Request) -> Response:
            if admin_api and (denied := _denied(request.headers.get("authorization"), token)) is not None:
                return denied
            try:
                return endpoint(request)
            except (redis.RedisError, OSError) as exc:
                return JSONResponse({"error": f"Redis unavailable ({type(exc).__name__})"}, status_code=503)

        return answer

    return Starlette(
        routes=[
            Route("/metrics", guarded(metrics)),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(ADMIN_PREFIX + "queue/stats", guarded(queue_stats, admin_api=True)),
        ]
    )


def _denied(header: str | None, token: str | None) -> Response | None:
    """None if the request may use the admin API, else the 401/403 answer."""
    if token is None:
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return JSONResponse(
            {"error": "admin endpoints need Authorization: Bearer <TRIAGE_ADMIN_TOKEN>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return JSONResponse({"error": "wrong admin token"}, status_code=403)
    return None
