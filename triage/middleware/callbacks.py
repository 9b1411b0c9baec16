"""Callbacks: Dramatiq's `on_success` / `on_failure`, except that a deferral is not a failure.

Guarantees: an actor that raises `triage.Defer` has not failed: its `on_failure` actor is
not sent a message (it runs again later, and the callbacks fire on that run). Everything
else is Dramatiq's `Callbacks`, unchanged.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Broker
from dramatiq.middleware import Callbacks as DramatiqCallbacks

from .retries import Defer


class Callbacks(DramatiqCallbacks):
    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if isinstance(exception, Defer):
            return
        super().after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]
