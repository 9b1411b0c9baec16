"""`triage.breaker(name)`: a named circuit breaker around outbound calls in actor code.

    with triage.breaker("telegram"):
        bot.send_message(chat_id, text)

    @triage.breaker("bank")
    def transfer(...): ...

Guarantees: each call asks the breaker first: closed, it runs and its result is recorded
(see `triage.middleware.breakers` for what counts as a failure); open, `CircuitOpen` is
raised at once, before the call, with `retry_after` seconds until the next probe; half-open,
only the breaker's probe count of calls runs, fleet-wide. Inside an actor gated by
`circuit=` on the same breaker, the call runs under the message's permit (the message's
outcome is what is recorded). The guard is transparent: the call's own exception goes
through (a failure that trips the breaker is still that failure). The name is looked up when the
first call runs (not at decoration, so declaring a decorated function needs no Redis and no
installed runtime); an undeclared name raises `UnknownBreaker`. One guard may be used by many
threads at once (each call keeps its own permit).
"""

from __future__ import annotations

import threading
from contextlib import ContextDecorator
from types import TracebackType

from triage.broker.breaker_state import Permit
from triage.middleware.circuit import Breaker, held
from triage.runtime import current


class BreakerGuard(ContextDecorator):
    def __init__(self, name: str) -> None:
        self.name = name
        self._calls = threading.local()

    def _stack(self) -> list[tuple[Breaker, Permit] | None]:
        stack: list[tuple[Breaker, Permit] | None] | None = getattr(self._calls, "stack", None)
        if stack is None:
            stack = self._calls.stack = []
        return stack

    def __enter__(self) -> BreakerGuard:
        breaker = current().breakers[self.name]
        if self.name in held():  # the message's own `circuit=` permit covers this call
            self._stack().append(None)
        else:
            self._stack().append((breaker, breaker.permit()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        call = self._stack().pop()
        if call is not None:
            breaker, permit = call
            breaker.finish(permit, exc)

    def __repr__(self) -> str:
        return f"<triage.breaker {self.name!r}>"


def breaker(name: str) -> BreakerGuard:
    """The breaker `name` as a context manager and a decorator."""
    return BreakerGuard(name)
