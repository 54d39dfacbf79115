"""Replays: an integration's second reader of the log, beside the live one.

A replay delivers the events of a sequence range again (those its filter
passes) through a pipeline of its own, built by the integration's sink type
(`SinkType.build_replay`): the same machinery as live delivery, its own
window and workers. This module is what the sink loop needs to run one
(`SinkLoop` with `replay_reading` and `ReplayBook`); the supervisor runs it
under the integration's lease and fence, only while the live sink runs.

Decisions:
- Its cursor and `delivered` count are saved together (`ReplayProgress`),
  fenced like every sink write. `delivered` counts the events of the range
  before the cursor that were handed on (delivered, or rejected and kept as
  rejected events): the loop tells the book which events it handed on per
  step (`handed`), the book keeps their sequence numbers until a durable
  cursor passes them (told before handing them on, and what the pipeline did
  not take is taken back), so the count saved with a cursor is exact; after a
  crash the replay resumes at that cursor with that count, and events past
  it are sent again (at least once, like live deliveries) without being
  counted twice. Memory: one int per event not yet behind a durable cursor
  (the pipeline's window, or an S3 replay's open and pending files).
- `live_delivered` is the count up to where the replay stands now (status).
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque

from ..model import Fence, Replay, ReplayProgress, StoredEvent
from ..storage.base import Store
from .filters import EventFilter
from .progress import Reading


def replay_reading(replay: Replay) -> Reading:
    return Reading(EventFilter.of(replay.filter), first=replay.start_seq,
                   end_seq=replay.end_seq)


class ReplayBook:
    """A replay's cursor, count and pipeline state (`progress.Progress`)."""

    def __init__(self, store: Store, integration_id: str, replay_id: str) -> None:
        self.store = store
        self.integration_id = integration_id
        self.replay_id = replay_id
        self.durable = ReplayProgress(0, 0)  # the last progress saved
        self._unsaved: deque[array[int]] = deque()  # seqs handed on, per step, in order

    async def load_cursor(self) -> int | None:
        found = await self.store.get_replay_progress(self.integration_id, self.replay_id)
        if found is None:
            return None
        self.durable = found
        return found.cursor

    def delivered_before(self, cursor: int) -> int:
        """The count that goes with `cursor`: the saved one plus the events handed on
        since that lie before it."""
        total = self.durable.delivered
        for seqs in self._unsaved:
            if seqs[-1] < cursor:
                total += len(seqs)
            else:
                total += bisect.bisect_left(seqs, cursor)
                break
        return total

    async def save_cursor(self, fence: Fence, cursor: int) -> bool:
        progress = ReplayProgress(cursor, self.delivered_before(cursor))
        return await self.store.set_replay_progress(fence, self.replay_id, progress)

    def committed(self, cursor: int) -> None:
        delivered = self.delivered_before(cursor)
        unsaved = self._unsaved
        while unsaved and unsaved[0][-1] < cursor:
            unsaved.popleft()
        if unsaved:
            first = unsaved[0]
            cut = bisect.bisect_left(first, cursor)
            if cut:
                unsaved[0] = first[cut:]
        self.durable = ReplayProgress(cursor, delivered)

    def handed(self, events: list[StoredEvent]) -> None:
        if events:
            self._unsaved.append(array("q", (event.seq for event in events)))

    def taken_back(self, seq: int) -> None:
        unsaved = self._unsaved
        while unsaved and unsaved[-1][0] >= seq:
            unsaved.pop()
        if unsaved and unsaved[-1][-1] >= seq:
            last = unsaved[-1]
            unsaved[-1] = last[:bisect.bisect_left(last, seq)]

    async def load_state(self) -> dict[str, object] | None:
        return await self.store.get_replay_state(self.integration_id, self.replay_id)

    async def save_state(self, fence: Fence, state: dict[str, object]) -> bool:
        return await self.store.put_replay_state(fence, self.replay_id, state)
