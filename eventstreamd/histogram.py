"""One histogram type for every distribution the daemon counts (delivery latency, events
per publish request); /metrics renders them all the same way (daemon/metrics.py).

Decisions:
- Per-bucket counts in a list, found by a bisect: an increment per
  observation, cheaper than a locked client-library histogram on the
  delivery and ingest paths; rendering makes them cumulative.
- The buckets are fixed when the histogram is made; the last count is the
  +Inf bucket.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class Histogram:
    bounds: tuple[float, ...]  # upper bounds of the buckets, ascending; +Inf follows
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, count: int = 1) -> None:
        """`count` observations of `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def copy(self) -> Histogram:
        """A copy that the owner's further observations leave alone (rendered elsewhere)."""
        return Histogram(self.bounds, list(self.counts), self.sum)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out
