"""The webhook delivery window: which events are out, and how far the cursor may safely move.

Decisions:
- An event stays in the window from dispatch until a *durable* cursor write has
  moved past it, not merely until it was delivered. The window's size
  (`max_in_flight`) therefore bounds both the requests in flight and the events
  a crash can deliver twice: the stored cursor is never more than one window
  behind what was delivered.
- The safe cursor is the sequence number of the oldest unfinished event, or the
  read position when nothing is unfinished (filtered-out events never enter
  the window).
- One slow or retrying event holds the window: the integration runs ahead of
  it by at most `size - 1` events, as promised.
"""

from __future__ import annotations


class DeliveryWindow:
    def __init__(self, size: int) -> None:
        self.size = size
        self._open: dict[int, bool] = {}  # seq -> finished, in dispatch (= seq) order

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

    def finish(self, seq: int) -> None:
        if seq in self._open:
            self._open[seq] = True

    def safe_cursor(self, read_position: int) -> int:
        for seq, finished in self._open.items():
            if not finished:
                return seq
        return read_position

    def committed(self, cursor: int) -> None:
        """A cursor write of `cursor` is durable: release the events before it."""
        for seq in [s for s in self._open if s < cursor]:
            del self._open[seq]
