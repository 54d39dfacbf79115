"""Which of the events a webhook pipeline holds may be sent now: plain FIFO, or ordered lanes.

Decisions:
- Without `ordered` every event may go as soon as a worker is free
  (`Unordered`: a FIFO, the same O(1) hand-over as always).
- With `ordered`, events are sorted into lanes (`Lanes`): at most one event
  of a lane is out at a time, and a lane's events go in sequence order.
  Without `ordering_key` there is one lane (strict order: one request at a
  time); with it, the lane is the value at that dot path in the payload
  (`OrderingKey`), so different values go in parallel, up to
  `webhook.max_in_flight`.
- An event whose payload has no value at the key (the path is missing, or
  leads to `null`) goes into one shared lane of key-less events: they keep
  their order among themselves. (A lane of their own each would promise
  nothing about them; one shared lane never breaks an order a user may rely
  on.) Values are compared as JSON: `1` and `"1"` are different lanes.
- This is only a constraint on what the pipeline hands out; the window
  (`window.py`) still decides how many events are held and how far the
  cursor may move (the contiguous done prefix), so crash bounds and fences
  are those of unordered delivery. A retryable failure keeps its event out
  (it is being retried), so its lane waits; a 400 or an undeliverable event
  finishes it (set aside) and the lane moves on.
- After a crash or a handover, delivery resumes at the durable cursor and
  the lanes are rebuilt from the events read in sequence order, so within
  every lane the first deliveries stay in order (events already delivered
  past the cursor are sent again, in order, with the same Idempotency-Key).
- Among events that may go, the one with the lowest sequence number goes
  first (a heap), so the cursor is freed as early as possible.
- Cost: FIFO mode does nothing per event beyond the deque; strict mode a
  heap push and pop; keyed mode also decodes the event's body once (orjson)
  to read the key.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable
from typing import Any, Protocol

import orjson

from ..model import StoredEvent

NO_KEY = b""  # the lane of events without a value at the ordering key (JSON is never empty)


class Handout(Protocol):
    def add(self, event: StoredEvent) -> None: ...

    def take(self) -> StoredEvent | None:
        """The next event that may be sent now, or None."""
        ...

    def done(self, event: StoredEvent) -> bool:
        """`event` (taken) is finished; True when that let another event go (the worker
        that finished it takes the next: no other worker needs waking)."""
        ...

    def __len__(self) -> int:
        """Events added and not yet taken."""
        ...


class Unordered:
    """Every event may go at once, in arrival order."""

    def __init__(self) -> None:
        self._queue: deque[StoredEvent] = deque()

    def add(self, event: StoredEvent) -> None:
        self._queue.append(event)

    def take(self) -> StoredEvent | None:
        return self._queue.popleft() if self._queue else None

    def done(self, event: StoredEvent) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._queue)


class OrderingKey:
    """The lane of an event: the JSON of the value at a dot path in its payload."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._steps = tuple(path.split("."))

    def __call__(self, event: StoredEvent) -> Hashable:
        try:
            value: Any = orjson.loads(event.body)["payload"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return NO_KEY
        for step in self._steps:
            if not isinstance(value, dict):
                return NO_KEY
            value = value.get(step)
        if value is None:
            return NO_KEY
        return orjson.dumps(value)


def _one_lane(event: StoredEvent) -> Hashable:
    return NO_KEY


class Lanes:
    """One event out per lane; each lane in sequence order (see the module docstring)."""

    def __init__(self, key: OrderingKey | None = None) -> None:
        self._key = key if key is not None else _one_lane
        self._lanes: dict[Hashable, deque[StoredEvent]] = {}  # head: out, or ready
        self._lane_of: dict[int, Hashable] = {}  # seq -> lane, for the events held
        self._ready: list[tuple[int, StoredEvent]] = []  # heads not yet taken, by seq
        self._waiting = 0  # added, not yet taken

    def add(self, event: StoredEvent) -> None:
        lane = self._key(event)
        self._lane_of[event.seq] = lane
        self._waiting += 1
        queue = self._lanes.get(lane)
        if queue is None:
            self._lanes[lane] = deque((event,))
            heapq.heappush(self._ready, (event.seq, event))
        else:
            queue.append(event)

    def take(self) -> StoredEvent | None:
        if not self._ready:
            return None
        self._waiting -= 1
        return heapq.heappop(self._ready)[1]

    def done(self, event: StoredEvent) -> bool:
        lane = self._lane_of.pop(event.seq)
        queue = self._lanes[lane]
        queue.popleft()
        if not queue:
            del self._lanes[lane]
            return False
        following = queue[0]
        heapq.heappush(self._ready, (following.seq, following))
        return True

    def __len__(self) -> int:
        return self._waiting

    @property
    def lanes(self) -> int:
        """Lanes with events held (for tests and status)."""
        return len(self._lanes)
