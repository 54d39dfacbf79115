"""`max_rate`: at most so many deliveries per second to one integration, paced smoothly.

Decisions:
- One `RateLimiter` per integration (`SinkEnv.rates`), shared by every
  pipeline delivering for it, so live traffic and a replay together stay
  within the integration's rate; a replay with a rate of its own waits for
  a slot of its own limiter first, then for one of the integration's (two
  limiters in series: `Pace`).
- Live traffic takes precedence: a live attempt reserves the next slot,
  however far ahead; a replay only takes a slot that is free now (`spare`),
  else it waits until the next one might be and looks again. So a replay
  never holds a slot a live event could have had: a live event waits at
  most one interval behind a replay, and a replay of an integration whose
  live traffic uses the whole rate waits until it does not.
- A slot schedule, not a bucket that fills while idle: each caller reserves
  the next free slot (`1 / rate` seconds after the previous one, or now if
  that is past) and waits until it. The burst is one request, so the rate is
  exact over any few seconds (60 requests at 20/s take 2.95 s, never less),
  and concurrent workers are spaced out rather than released together.
  Slots are absolute times, so wake-up delays never accumulate into drift.
- Every attempt takes a slot, retries included: the limit protects the
  receiver, which sees each attempt. A receiver's 429 and `Retry-After` are
  honoured on top (the event's own backoff), as without a limit.
- Live traffic also takes precedence for the process's time: while the
  integration's live pipeline is sending (an attempt within `LIVE_RECENT`),
  a replay beside it keeps at most `BESIDE_LIVE` requests in flight
  (`LiveActivity`, held back in the webhook pipeline); without live
  traffic it runs at the full `max_in_flight`. Measured (bench `replay`): an
  unpaced replay at 8 in flight made every live event wait behind rounds of
  replay work in the event loop, several milliseconds each.
- Live traffic anywhere in the daemon also takes precedence for the event
  loop itself (`LoopShare`): while any live pipeline is sending, every
  replay's attempts are paced at a rate that adapts to keep the event loop
  thread busy at most `LOOP_TARGET` of the time (its CPU time against the
  clock, measured every `LOOP_PERIOD`: the rate falls by a quarter when the
  loop is busier, rises by a tenth when it is not). Measured (bench
  `replay`): two replay requests in flight kept the loop thread at 100%,
  and a live event then waited at every hand-over to a thread (the LMDB
  commit) for the interpreter's lock, up to 5 ms each: live p50 went from
  1.5 to 22.7 ms and p99 from 3.7 to 72 ms. A loop with spare time hands the
  lock over at once. Without live traffic a replay runs unpaced.
  `LOOP_TARGET` was 0.7 until the daemon's timeouts stopped spinning
  (`timeouts.py`): the spin had counted as busy time, and once it was gone a
  0.7 share filled with replay work (1,000-1,200 replayed/s beside live
  traffic instead of 450-620) and live p99 went to 1.87× and 2.27× the p99
  alone; at 0.6, 1.42× with 658/s, at 0.5 1.42× with 214/s (one run each).
- A slot reserved by a caller that then stops is not given back: the rate
  may fall below the limit then, never above it.
- The clock is `time.monotonic` and injectable, so tests check the schedule
  without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


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

    def spare(self) -> float:
        """A slot for a caller that gives way (a replay): taken if one is free now (0),
        else how long until one may be; the caller asks again then."""
        if not self._interval:
            return 0.0
        now = self._clock()
        if self._next > now:
            return self._next - now
        self._next = now + self._interval
        return 0.0


Sleep = Callable[[float], Awaitable[bool]]  # sleeps; True when the sink is stopping

LIVE_RECENT = 1.0  # seconds: live traffic runs while its last attempt is this recent
BESIDE_LIVE = 2  # a replay's requests in flight at once while live traffic runs
LOOP_TARGET = 0.6  # the event loop thread's busy share replays beside live traffic aim at
LOOP_PERIOD = 0.05  # seconds between two looks at how busy the loop thread is
REPLAY_RATE_START = 1_000.0  # replayed attempts per second when live traffic starts
REPLAY_RATE_MIN = 20.0  # a replay beside a saturated loop still moves, slowly
REPLAY_RATE_MAX = 50_000.0
RATE_DOWN, RATE_UP = 0.75, 1.1


class LiveActivity:
    """When live deliveries last sent a request (an integration's, or the daemon's:
    `also` is noted with it), for the replays beside them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 also: LiveActivity | None = None) -> None:
        self._clock = clock
        self._last = float("-inf")
        self._also = also

    def note(self) -> None:
        self._last = self._clock()
        if self._also is not None:
            self._also.note()

    def running(self) -> bool:
        return self._clock() - self._last < LIVE_RECENT


class LoopShare:
    """How fast the daemon's replays may send while live traffic runs (see the module
    docstring): one per daemon, asked by every replay attempt, always from the event
    loop's thread (`cpu` is that thread's CPU time)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self.live = LiveActivity(clock)
        self._clock, self._cpu = clock, cpu
        self._limiter = RateLimiter(clock)
        self.rate = REPLAY_RATE_START
        self._limiter.configure(self.rate)
        self._since, self._cpu_since = clock(), cpu()
        self.busy = 0.0  # the loop thread's busy share in the last period

    def reserve(self) -> float:
        """Seconds until a replay's next attempt may go (0 without live traffic)."""
        live = self.live.running()
        self._look(live)
        return self._limiter.reserve() if live else 0.0

    def _look(self, live: bool) -> None:
        now = self._clock()
        elapsed = now - self._since
        if elapsed < LOOP_PERIOD:
            return
        cpu = self._cpu()
        self.busy = (cpu - self._cpu_since) / elapsed
        self._since, self._cpu_since = now, cpu
        if not live or elapsed > 4 * LOOP_PERIOD:
            # Unpaced, or nobody asked for a while: no sample of replays at this rate
            # (the rate learned beside live traffic is kept for the next time).
            return
        factor = RATE_DOWN if self.busy > LOOP_TARGET else RATE_UP
        self.rate = min(REPLAY_RATE_MAX, max(REPLAY_RATE_MIN, self.rate * factor))
        self._limiter.configure(self.rate)


class Pace:
    """What one pipeline's attempts wait for before they go: a limiter of its own (a
    replay's `max_rate`), the daemon's share of the loop for replays (`loop`), then the
    integration's shared one, reserving ahead (live) or giving way (`gives_way`: a
    replay)."""

    def __init__(self, shared: RateLimiter | None, *, gives_way: bool = False,
                 own: RateLimiter | None = None, loop: LoopShare | None = None) -> None:
        self.shared = shared
        self.gives_way = gives_way
        self.own = own
        self.loop = loop

    async def wait(self, sleep: Sleep) -> bool:
        """True when the attempt may go now; False when the sink stops meanwhile."""
        for limiter in (self.own, self.loop):
            if limiter is not None:
                wait = limiter.reserve()
                if wait > 0 and await sleep(wait):
                    return False
        shared = self.shared
        if shared is None:
            return True
        if not self.gives_way:
            wait = shared.reserve()
            return not (wait > 0 and await sleep(wait))
        while (wait := shared.spare()) > 0:
            if await sleep(wait):
                return False
        return True
