"""The throttle of wrong tokens: the dashboard's logins and the admin API's bearer tokens are
counted together (one throttle per web process, built by `web.create_app`), per client address
and overall, and slowed once over either limit; a right token is never refused because of them.

Guarantees:
- Only wrong attempts are counted and only wrong attempts are refused: the login route and the
  API's bearer check test the token first, so an operator behind the same router as an attacker
  (every client of an untrusted router shares its address) still gets in at once.
- Per address (the client address uvicorn reports: the peer, or the X-Forwarded-For entry it
  was told to believe with `FORWARDED_ALLOW_IPS`): `per_address` failures at once, then one
  more every `window / per_address` seconds (a GCRA, the token bucket as one timestamp).
- Overall: `overall` failures at once from all addresses together, then one every
  `window / overall` seconds, so that rotating addresses (or a rotating X-Forwarded-For
  believed from a router) buys no more guesses than that.
- A refused attempt is not counted (an attacker cannot push its own limit, or a shared
  address's, ever further away); `failed` returns how long until a wrong attempt would be
  counted again, which the routes send as Retry-After (429).
- `refused` is `failed` plus the delay of a refusal: over the limits, a wrong attempt is
  answered after `delay` seconds, unless `most_delayed` refusals are already waiting (then at
  once: waiting refusals are bounded too). The delay slows one client trying tokens one after
  another; many at once are bounded only by the server's throughput, which long random tokens
  make enough.
- Bounded memory and O(1) work per failure: at most `addresses` addresses are remembered
  (least recently failed forgotten first: forgetting one only forgives it early, the overall
  limit still holds). Per web process, in memory: a restart forgets, several processes each count.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable


class LoginThrottle:
    """Wrong tokens (failed logins and bearer checks), per client address and overall.

    Parameters:
      per_address: failures one address may make before its wrong attempts are refused.
      overall: failures all addresses together may make before every wrong attempt is refused.
      window: seconds in which each budget refills completely.
      addresses: how many addresses are remembered (least recently failed forgotten first).
      clock: a monotonic clock in seconds (tests pass their own).
      delay: seconds a refused attempt waits for its answer (`refused`).
      most_delayed: how many refused attempts may wait at once (the others are answered at once).
    """

    def __init__(
        self,
        *,
        per_address: int = 10,
        overall: int = 100,
        window: float = 300.0,
        addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        delay: float = 1.0,
        most_delayed: int = 16,
    ) -> None:
        if min(per_address, overall, addresses) < 1 or not window > 0:
            raise ValueError("per_address, overall and addresses must be at least 1, and window positive")
        if not delay >= 0 or most_delayed < 0:
            raise ValueError("delay and most_delayed must not be negative")
        self.window, self.addresses, self.clock = window, addresses, clock
        self.delay, self.most_delayed, self._delayed = delay, most_delayed, 0
        self._address_step, self._overall_step = window / per_address, window / overall
        self._full_at: collections.OrderedDict[str, float] = collections.OrderedDict()  # GCRA per address
        self._overall_full_at = 0.0
        self._lock = threading.Lock()

    def failed(self, address: str) -> float:
        """Count a wrong token from `address`: 0.0 if it is within both limits (counted), else the
        seconds until a wrong attempt from there would be (not counted)."""
        with self._lock:
            now = self.clock()
            mine = max(self._full_at.get(address, now), now) + self._address_step
            overall = max(self._overall_full_at, now) + self._overall_step
            wait = max(mine - now - self.window, overall - now - self.window, 0.0)
            if wait > 0:
                return wait
            self._overall_full_at = overall
            self._full_at[address] = mine
            self._full_at.move_to_end(address)
            if len(self._full_at) > self.addresses:
                self._full_at.popitem(last=False)
            return 0.0

    async def refused(self, address: str) -> float:
        """`failed(address)`; over the limits, answered `delay` seconds later (at once if
        `most_delayed` refusals already wait). Call it on the event loop only."""
        wait = self.failed(address)
        if wait and self._delayed < self.most_delayed:
            self._delayed += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self._delayed -= 1
        return wait

    def remembered(self) -> int:
        """How many addresses are remembered now (at most `addresses`)."""
        return len(self._full_at)


def retry_after(seconds: float) -> str:
    """A Retry-After header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
