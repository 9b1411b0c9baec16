"""Starting before Redis: a process whose first Redis work fails waits and tries again.

Guarantees:
- `until_redis_answers(call, client, waiting=...)` runs `call` (a process's first Redis work: a
  worker's registration, a PING) until it returns. While Redis cannot be reached (refused, timed
  out, still loading its data, refusing the credentials, a cluster slot without a primary) it
  tries again after 0.5 s, then 1, 2, 4, and every 5 s from then on (`BACKOFF`, tenacity's
  capped exponential wait).
- One log line per failed attempt (WARNING), no traceback: where Redis is (`where(client)`,
  host and port taken from the client's connection settings, so never a password), what is
  waiting, the error on one line, the attempt's number and when the next one comes. One INFO
  line when Redis answers after a failure; nothing at all when it answers at once.
- `stop` (an event: a shutdown asked for meanwhile) ends the wait at once, even mid-pause;
  the call then returns False and `call` is not run again.
Failure mode: any other error (Redis refuses a command or a script) is raised at once: it is a
bug or a misconfiguration, not an outage, and waiting would hide it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

from .errors import CONNECTION_ERRORS

logger = logging.getLogger(__name__)

BACKOFF = wait_exponential(multiplier=0.5, max=5)  # 0.5 s, 1, 2, 4, then 5 s between attempts


def where(client: Any) -> str:
    """Where the client looks for Redis, with no credential: `host:port`, `unix:/path`, the
    Sentinel service and its sentinels, or the cluster's startup nodes."""
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        return "cluster " + ",".join(sorted(nodes.startup_nodes))
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service is not None:
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]  # type: ignore[union-attr]
        return f"sentinel service {service} via " + ",".join(f"{s.get('host')}:{s.get('port')}" for s in sentinels)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def until_redis_answers(
    call: Callable[[], object], client: Any, *, waiting: str, stop: threading.Event | None = None
) -> bool:
    """Run `call` until Redis answers it (see above): True once it has, False if `stop` was set first.
    `waiting` says what waits meanwhile, for the log ("worker not registered, nothing consumed")."""
    stop = stop or threading.Event()
    location = where(client)

    def log_attempt(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = BACKOFF(state)
        logger.warning(
            "Redis at %s does not answer (%s): %s; attempt %d, next in %.1f s.",
            location,
            _one_line(error),
            waiting,
            state.attempt_number,
            pause,
        )

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a stop ends the pause at once

    retrying = Retrying(
        retry=retry_if_exception_type(CONNECTION_ERRORS),
        wait=BACKOFF,
        stop=stop_when_event_set(stop),
        sleep=pause,
        before_sleep=log_attempt,
        retry_error_callback=lambda state: None,  # stopped: no RetryError, the loop just ends
    )
    answered = False
    for attempt in retrying:
        with attempt:
            if stop.is_set():
                break
            call()
            answered = True
            if attempt.retry_state.attempt_number > 1:
                logger.info("Redis at %s answers.", location)
    return answered


def _one_line(error: BaseException | None) -> str:
    text = " ".join(str(error).split()) if error is not None else ""
    return text or type(error).__name__
