"""The webhook delivery window: which events are out, and how far the cursor may safely move.

Decisions:
- Two bounds, kept apart: events held (handed to the pipeline and not yet
  finished: `webhook.max_in_flight`, the requests in flight, unless the
  pipeline holds more to choose from, as ordered lanes do), and events
  delivered but not yet behind a durable cursor (`delivery.cursor_every`).
  An event stays in the window from dispatch until a *durable* cursor write has
  moved past it, so the second bound is what a crash can deliver twice; the
  cursor is saved every `delivery.cursor_every` finished events or
  `delivery.cursor_interval` (sinks/loop.py), so fsyncs stay off the delivery
  path.
- The safe cursor is the sequence number of the oldest unfinished event, or the
  read position when nothing is unfinished (filtered-out events never enter
  the window).
- One slow or retrying event holds the cursor: the integration runs ahead of it
  by at most `cursor_every - 1` events, as promised.
- Per event the window does O(1) work: dispatch order is sequence order, so
  the unfinished prefix is found by advancing a pointer, never by a scan.
"""

from __future__ import annotations

from collections import deque


class DeliveryWindow:
    def __init__(self, in_flight_limit: int, unsaved_limit: int | None = None,
                 hold_limit: int | None = None) -> None:
        self.size = in_flight_limit  # workers and requests in flight
        self.unsaved_limit = max(in_flight_limit, unsaved_limit or in_flight_limit)
        # Events held unfinished: the requests in flight, or more for a pipeline that
        # chooses among them (never more than may be unsaved).
        self.hold_limit = max(in_flight_limit, min(hold_limit or in_flight_limit,
                                                   self.unsaved_limit))
        self._dispatched: deque[int] = deque()  # seqs not yet behind a durable cursor
        self._done: set[int] = set()  # finished seqs among them, beyond the safe prefix
        self._safe = 0  # how many leading entries of _dispatched are finished
        self._in_flight = 0  # held: dispatched and not finished

    def __len__(self) -> int:
        return len(self._dispatched)

    @property
    def full(self) -> bool:
        return (self._in_flight >= self.hold_limit
                or len(self._dispatched) >= self.unsaved_limit)

    @property
    def waits_for_cursor(self) -> bool:
        """Full because of the events not yet behind a durable cursor (not the requests)."""
        return len(self._dispatched) >= self.unsaved_limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def dispatch(self, seq: int) -> None:
        self._dispatched.append(seq)
        self._in_flight += 1

    def finish(self, seq: int) -> None:
        self._done.add(seq)
        self._in_flight -= 1

    def safe_cursor(self, read_position: int) -> int:
        dispatched, done = self._dispatched, self._done
        while self._safe < len(dispatched) and dispatched[self._safe] in done:
            done.discard(dispatched[self._safe])
            self._safe += 1
        return dispatched[self._safe] if self._safe < len(dispatched) else read_position

    def committed(self, cursor: int) -> None:
        """A cursor write of `cursor` is durable: release the events before it."""
        dispatched = self._dispatched
        while self._safe and dispatched and dispatched[0] < cursor:
            dispatched.popleft()
            self._safe -= 1
