"""`max_rate`: at most so many deliveries per second to one integration, paced smoothly.

Decisions:
- One `RateLimiter` per integration (`SinkEnv.rates`), shared by every
  pipeline delivering for it, so live traffic and a replay together stay
  within the integration's rate; a replay with a rate of its own reserves on
  its own limiter too and waits for the later of the two slots.
- A slot schedule, not a bucket that fills while idle: each caller reserves
  the next free slot (`1 / rate` seconds after the previous one, or now if
  that is past) and waits until it. The burst is one request, so the rate is
  exact over any few seconds (60 requests at 20/s take 2.95 s, never less),
  and concurrent workers are spaced out rather than released together.
  Slots are absolute times, so wake-up delays never accumulate into drift.
- Every attempt takes a slot, retries included: the limit protects the
  receiver, which sees each attempt. A receiver's 429 and `Retry-After` are
  honoured on top (the event's own backoff), as without a limit.
- A slot reserved by a caller that then stops is not given back: the rate
  may fall below the limit then, never above it.
- The clock is `time.monotonic` and injectable, so tests check the schedule
  without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._interval = 0.0  # seconds between slots; 0: unlimited
        self._next = 0.0  # the next free slot, by the clock

    @property
    def rate(self) -> float | None:
        return 1.0 / self._interval if self._interval else None

    def configure(self, rate: float | None) -> None:
        """Deliveries per second from now on; None (or 0) lifts the limit."""
        self._interval = 1.0 / rate if rate else 0.0

    def reserve(self) -> float:
        """Take the next slot: how many seconds until it (0: go now)."""
        if not self._interval:
            return 0.0
        now = self._clock()
        slot = self._next if self._next > now else now
        self._next = slot + self._interval
        return slot - now
