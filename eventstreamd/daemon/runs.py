"""What the supervisor's sinks and replays share: a sink loop run again after each crash
until it is stopped, and the backoff between crashes.

A crash restarts the loop after `crash_delay` (1 s doubling to 60 s); the
cause shown is the exception that started it (`root_cause`: task groups wrap
a crash in exception groups). `LoopRun.crashed` counts it, records it
in the sink's figures and the integration's log (a log write that fails is
not a second crash), and `LoopRun.pause` waits out the delay unless a stop
comes first.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import anyio

from ..model import Integration, LogEntry
from ..sinks.base import SinkStats
from ..sinks.loop import SinkLoop
from ..storage.base import Store
from ..timeouts import move_on_after
from ..timeutil import now_iso

CRASH_BACKOFF_INITIAL = 1.0
CRASH_BACKOFF_MAX = 60.0


def crash_delay(crashes: int) -> float:
    """Seconds before the start after the `crashes`-th crash in a row."""
    return float(min(CRASH_BACKOFF_MAX, CRASH_BACKOFF_INITIAL * 2.0 ** (crashes - 1)))


def root_cause(exc: BaseException) -> BaseException:
    """The exception that started it."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@dataclass(eq=False, kw_only=True)
class LoopRun:
    """A sink loop (the live one, or a replay's) started again until it is stopped."""

    stop_event: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    loop: SinkLoop | None = None  # the current run's
    crashes: int = 0

    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def request_stop(self) -> None:
        self.stop_event.set()
        if self.loop is not None:
            self.loop.request_stop()

    async def crashed(self, exc: BaseException, *, what: str, action: str,
                      integration: Integration, store: Store, stats: SinkStats,
                      now: float) -> float:
        """Count and record a crash of `what` (its log entry's `action`); the seconds
        before the loop starts again."""
        self.crashes += 1
        delay = crash_delay(self.crashes)
        cause = root_cause(exc)
        reason = (f"{what} crashed ({type(cause).__name__}: {cause}); "
                  f"restarting in {delay:g}s.")
        stats.record_failure(reason, now)
        with contextlib.suppress(Exception):
            fence = self.loop.fence if self.loop is not None else integration.fence()
            await store.add_log(fence, LogEntry(now_iso(), action, reason))
        return delay

    async def pause(self, delay: float) -> None:
        """Until the restart after a crash, or a stop."""
        with move_on_after(delay):
            await self.stop_event.wait()
