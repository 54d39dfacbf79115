"""Long loops on the event loop, cut into slices so other requests run between them.

Decisions:
- A status snapshot or a `/metrics` scrape walks every integration on the event
  loop. With a thousand integrations that is 25 ms in one stretch (measured in
  the bench `many-integrations`: 17 ms for the snapshot's rows, 8 ms copying
  the sinks' counters), and a `/healthz` or a publish arriving meanwhile waits
  for all of it. `in_slices` hands the loop back every `SLICE` items, so the
  longest wait is one slice.
- What changes between two slices may show in the next one: a snapshot is a
  picture of figures that move anyway ("roughly", status.py), and a scrape's
  series are each read once; no figure is read twice or mixed from two moments.
- A checkpoint, not a sleep: without other work waiting it costs about a
  microsecond, so a small daemon pays nothing for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import anyio.lowlevel

T = TypeVar("T")

SLICE = 100  # items between two hand-backs: a few hundred microseconds of work


async def in_slices(items: Iterable[T], size: int = SLICE) -> AsyncIterator[T]:
    """`items`, handing the event loop back after every `size` of them."""
    for index, item in enumerate(items):
        if index and not index % size:
            await anyio.lowlevel.checkpoint()
        yield item
