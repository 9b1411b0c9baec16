"""A cap on request bodies for the web process: an ASGI middleware, outermost, so that it holds
for the admin API and the dashboard's forms alike.

Guarantees:
- A request whose Content-Length is over `max_bytes` is answered 413 at once: its body is not
  read, and nothing behind this middleware (authentication, parsing, the route) runs.
- A body without a Content-Length (chunked), or longer than it said, is counted as it is read:
  the chunk that goes over `max_bytes` is not handed on; the client gets 413, and the app behind
  sees the request end (its read raises `BodyTooLarge`, its answer is dropped). So the process
  holds at most `max_bytes` (plus one chunk) of any request, whoever sends it.
- A malformed Content-Length is a 400 that says so. Nothing else is changed: bodies within the
  cap, and requests that are not HTTP (lifespan), pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised to the app behind when the body it reads goes over the cap (413 already sent)."""


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, before anything reads them.

    Parameters:
      app: the ASGI app behind.
      max_bytes: the largest body served (`TRIAGE_WEB_MAX_BODY_BYTES`, 1 MiB by default).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, self._too_large())
            return
        seen = 0
        answered = False

        async def limited_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not answered:
                        answered = True
                        await _answer(send, 413, self._too_large())
                    raise BodyTooLarge(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:  # once the 413 is sent, the app's own answer is dropped
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not answered:
                raise  # the app's own failure; after the 413, what it raises is its reaction to the cut

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes (TRIAGE_WEB_MAX_BODY_BYTES)"


def _content_length(scope: Scope) -> int | None:
    """The request's Content-Length (-1: not a number; None: not given)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
