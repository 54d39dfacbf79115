"""Where a reader of the log keeps its position, and which part of the log it reads.

The sink loop (`loop.py`) is the same machinery for every reader of an
integration: the live one and its replays. What differs is said here:

- `Reading`: the filter, where to start without a saved cursor (after the
  head for a new live sink, the first seq of a replay's range) and where
  reading ends (a temporary integration's `ends_at` by ingest time, a
  replay's range by sequence number).
- `Progress`: where the cursor and the pipeline's own state are kept, each
  write fenced. `LiveProgress` is the integration's cursor and sink state;
  `sinks/replay.py` keeps a replay's, with the count of events it finished
  saved beside its cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..model import Fence, StoredEvent
from ..storage.base import Store
from .filters import EventFilter


@dataclass(frozen=True)
class Reading:
    filter: EventFilter
    first: int | None = None  # where to start without a saved cursor; None: after the head
    ends_ms: int | None = None  # nothing ingested after this (a temporary integration)
    end_seq: int | None = None  # nothing from this seq on (a replay's range)


class Progress(Protocol):
    async def load_cursor(self) -> int | None: ...

    async def save_cursor(self, fence: Fence, cursor: int) -> bool:
        """Fenced; False when the fence no longer holds."""
        ...

    def committed(self, cursor: int) -> None:
        """A save of `cursor` is durable."""
        ...

    def handed(self, events: list[StoredEvent]) -> None:
        """These events of the reading are being handed on (or set aside): they count
        once the cursor passes them."""
        ...

    def taken_back(self, seq: int) -> None:
        """The events handed from `seq` on were not taken (read again later)."""
        ...

    async def load_state(self) -> dict[str, object] | None: ...

    async def save_state(self, fence: Fence, state: dict[str, object]) -> bool: ...


class LiveProgress:
    """The integration's own cursor and sink state."""

    def __init__(self, store: Store, integration_id: str) -> None:
        self.store = store
        self.integration_id = integration_id

    async def load_cursor(self) -> int | None:
        return await self.store.get_cursor(self.integration_id)

    async def save_cursor(self, fence: Fence, cursor: int) -> bool:
        return await self.store.set_cursor(fence, cursor)

    def committed(self, cursor: int) -> None:
        return None

    def handed(self, events: list[StoredEvent]) -> None:
        return None

    def taken_back(self, seq: int) -> None:
        return None

    async def load_state(self) -> dict[str, object] | None:
        return await self.store.get_sink_state(self.integration_id)

    async def save_state(self, fence: Fence, state: dict[str, object]) -> bool:
        return await self.store.put_sink_state(fence, state)
