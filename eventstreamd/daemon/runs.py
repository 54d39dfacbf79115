"""What the supervisor's sinks and replays share: a sink loop run again after each crash
until it is stopped, and the backoff between crashes.

A crash restarts the loop after `crash_delay` (1 s doubling to 60 s); the
cause shown is the exception that started it (`root_cause`: task groups wrap
a crash in exception groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from ..sinks.loop import SinkLoop

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
