"""The delivery window: which events are out, and how far the cursor may safely move.

Decisions:
- An event stays in the window from dispatch until a *durable* cursor write has
  moved past it, not merely until it was delivered. The window's size
  (`max_in_flight`) therefore bounds both the requests in flight and the events
  a crash can deliver twice: the stored cursor is never more than one window
  behind what was delivered.
- The safe cursor is the sequence number of the oldest unfinished event, or the
  read position when nothing is unfinished (filtered-out events finish at once
  and never enter the window).
- One slow or retrying event holds the window: the integration runs ahead of
  it by at most `size - 1` events, as promised.
"""

from __future__ import annotations

import anyio


class DeliveryWindow:
    def __init__(self, start_seq: int, size: int) -> None:
        self.size = size
        self.read_position = start_seq  # next sequence number to read from the log
        self.durable_cursor = start_seq  # last cursor committed to the store
        self._open: dict[int, bool] = {}  # seq -> finished, in dispatch (= seq) order
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.size

    @property
    def in_flight(self) -> int:
        return sum(1 for finished in self._open.values() if not finished)

    def dispatch(self, seq: int) -> None:
        self._open[seq] = False
        self.read_position = seq + 1

    def skip_to(self, seq: int) -> None:
        """Events before `seq` need no delivery (filtered out, or pruned)."""
        self.read_position = max(self.read_position, seq)
        self._notify()

    def finish(self, seq: int) -> None:
        if seq in self._open:
            self._open[seq] = True
            self._notify()

    def safe_cursor(self) -> int:
        for seq, finished in self._open.items():
            if not finished:
                return seq
        return self.read_position

    def committed(self, cursor: int) -> None:
        """A cursor write of `cursor` is durable: release the events before it."""
        self.durable_cursor = max(self.durable_cursor, cursor)
        for seq in [s for s in self._open if s < cursor]:
            del self._open[seq]
        self._notify()

    @property
    def dirty(self) -> bool:
        return self.safe_cursor() > self.durable_cursor

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def wake(self) -> None:
        self._notify()
