"""`move_on_after` and `fail_after` whose deadlines do not make the event loop spin.

Decisions:
- Measured (2026-12-07): under uvloop, every anyio cancel scope whose deadline
  passes keeps the event loop busy for up to a millisecond first. uvloop's
  clock (`loop.time()`) counts whole milliseconds and its timers round their
  delay to one; anyio's deadline is `now + delay`, rarely a whole millisecond,
  so the timer fires a fraction of a millisecond before it, anyio sees the
  deadline not yet reached and sets a timer for the rest, which rounds to 0 ms
  and fires at once, again and again until the clock ticks. 200 timed-out
  waits of 2 ms: 61,842 such callbacks and 428 µs of CPU per wait, against
  2 callbacks and 93 µs with the deadline below. The daemon times out waits
  on every path (a sink's cursor interval, retry backoff, replay pacing, a
  replay held back for live traffic): with a replay beside live traffic this
  was about a fifth of the loop.
- The deadline is put on the next whole millisecond, less a microsecond: the
  timer then fires exactly when the clock reaches it, and the deadline has
  passed. A wait lasts at most a millisecond longer than asked, never less,
  so rate limits stay exact. Under plain asyncio (a finer clock) the same
  deadline is as correct, just as late.
- The package uses these instead of anyio's (a test checks that nothing in it
  calls `anyio.move_on_after` or `anyio.fail_after`).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import anyio

SLACK = 1e-6  # seconds below the whole millisecond: well within a float's precision


def deadline_after(delay: float) -> float:
    """The loop-clock deadline `delay` seconds from now, on a whole millisecond less SLACK."""
    now = anyio.current_time()
    return max(now, math.ceil((now + max(0.0, delay)) * 1000) / 1000 - SLACK)


def move_on_after(delay: float | None) -> anyio.CancelScope:
    """`anyio.move_on_after`: a scope cancelled after `delay` seconds (None: never)."""
    return anyio.move_on_at(None if delay is None else deadline_after(delay))


def fail_after(delay: float | None) -> AbstractContextManager[anyio.CancelScope]:
    """`anyio.fail_after`: the same, raising TimeoutError when the deadline passes."""
    return anyio.fail_at(None if delay is None else deadline_after(delay))
