"""`triage.breaker(name)`: a named circuit breaker around outbound calls in actor code.

    with triage.breaker("telegram"):
        bot.send_message(chat_id, text)

    @triage.breaker("bank")
    def transfer(...): ...

Guarantees: each call asks the breaker first: closed, it runs and its result is recorded
(see `triage.middleware.breakers` for what counts as a failure); open, `CircuitOpen` is
raised at once, before the call, with `retry_after` seconds until the next probe; half-open,
only the breaker's probe count of calls runs, fleet-wide. The name is looked up when the
first call runs (not at decoration, so declaring a decorated function needs no Redis and no
installed runtime); an undeclared name raises `UnknownBreaker`. One guard may be used by many
threads at once (each call keeps its own permit).
"""

from __future__ import annotations

import threading
from contextlib import ContextDecorator
from types import TracebackType

from triage.broker.breaker_state import Permit
from triage.middleware.breakers import Breaker
from triage.runtime import current


class BreakerGuard(ContextDecorator):
    def __init__(self, name: str) -> None:
        self.name = name
        self._calls = threading.local()

    def _stack(self) -> list[tuple[Breaker, Permit]]:
        stack: list[tuple[Breaker, Permit]] | None = getattr(self._calls, "stack", None)
        if stack is None:
            stack = self._calls.stack = []
        return stack

    def __enter__(self) -> BreakerGuard:
        breaker = current().breakers[self.name]
        self._stack().append((breaker, breaker.permit()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        breaker, permit = self._stack().pop()
        breaker.finish(permit, exc)

    def __repr__(self) -> str:
        return f"<triage.breaker {self.name!r}>"


def breaker(name: str) -> BreakerGuard:
    """The breaker `name` as a context manager and a decorator."""
    return BreakerGuard(name)
