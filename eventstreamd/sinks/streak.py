"""Auto-stop: how long every delivery attempt to an integration has failed, kept durably.

Decisions:
- A streak starts at the first failed attempt (no 2xx and no 400: an error
  status, a timeout, no connection) after a success, and ends at the next
  2xx or 400, whichever worker made it. When it has lasted
  `stop_after_failing` (the integration's, else `webhook.stop_after_failing`;
  0 = never), the pipeline gives up (`SinkContext.give_up`) and the daemon
  stops the integration, its cursor kept: Outpost's users lose the events of
  a destination it disables; ours are all delivered after `_start`.
- Its start is persisted in the sink's state (a fenced write, like every
  sink write), so it survives sink restarts, daemon restarts and, on
  JetStream, a handover to another daemon: two writes per streak (when it
  starts, when it ends), never one per attempt. One writer task saves the
  latest value, so a streak that starts and ends at once cannot leave a
  stale start behind.
- A streak never reaches back before the integration's last start
  (`Integration.started_at_ms`): `_start` after an auto-stop gives the
  receiver the whole period again.
- The clock is injectable (the tests' fake clock), wall time in ms because
  the start is compared across processes and hosts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from ..logs import kv
from ..storage.base import StoreFull
from ..timeutil import ms_to_iso
from .base import SinkContext

log = logging.getLogger("eventstreamd.delivery")

FULL_RETRY = 1.0  # seconds before saving again while the store is full


class StreakState(msgspec.Struct, frozen=True):
    """The webhook sink's saved state (`SinkContext.save_state`)."""

    failing_since_ms: int | None = None


class FailureStreak:
    def __init__(self, limit: float, started_at_ms: int | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit_ms = int(limit * 1000)  # 0: never give up
        self._floor = started_at_ms or 0
        self._clock = clock
        self.since_ms: int | None = None
        self._saved: int | None = None
        self._dirty = anyio.Event()

    def load(self, raw: dict[str, object] | None, integration_id: str) -> None:
        """The streak a previous run of the sink saved, unless it began before the
        integration's last start."""
        if not raw:
            return
        try:
            state = msgspec.convert(raw, StreakState)
        except msgspec.ValidationError as exc:
            log.warning("saved webhook state unreadable; starting without a failure streak",
                        extra=kv(integration=integration_id, error=str(exc)))
            return
        self._saved = state.failing_since_ms
        if state.failing_since_ms is not None and state.failing_since_ms >= self._floor:
            self.since_ms = state.failing_since_ms
        elif self._saved is not None:
            self._dirty.set()  # a streak from before the last start: clear it

    def failed(self) -> bool:
        """An attempt failed; True when the streak has now lasted the limit."""
        now = int(self._clock() * 1000)
        if self.since_ms is None:
            self.since_ms = now
            self._dirty.set()
        return bool(self.limit_ms) and now - self.since_ms >= self.limit_ms

    def succeeded(self) -> None:
        """An attempt got a 2xx or a 400: the receiver answers."""
        if self.since_ms is not None:
            self.since_ms = None
            self._dirty.set()

    def describe(self) -> str:
        """How long, since when (for the auto-stop's log entry)."""
        since = self.since_ms or 0
        lasted = (int(self._clock() * 1000) - since) / 1000
        return f"{_duration(lasted)} (since {ms_to_iso(since)})"


    async def keep_saved(self, ctx: SinkContext) -> None:
        """Save the streak's start whenever it changes (runs for the pipeline's lifetime)."""
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            value = self.since_ms
            if value == self._saved:
                continue
            try:
                if not await ctx.save_state(msgspec.to_builtins(StreakState(value))):
                    return  # the integration is no longer ours: the sink is stopping
            except StoreFull:
                self._dirty.set()
                await anyio.sleep(FULL_RETRY)
                continue
            self._saved = value

    async def flush(self, ctx: SinkContext) -> None:
        """Save a change not saved yet (when the pipeline closes)."""
        value = self.since_ms
        if value != self._saved:
            with contextlib.suppress(StoreFull):
                if await ctx.save_state(msgspec.to_builtins(StreakState(value))):
                    self._saved = value


def _duration(seconds: float) -> str:
    """`12.5s`, `42m`, `6.5h`, `5d`: a period as a person reads it."""
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("m", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{seconds:.1f}".removesuffix(".0") + "s"
