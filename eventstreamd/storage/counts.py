"""Counting a range of the log by event name without reading the whole range.

A replay's dry run answers how many events of a time range pass a filter. The
range comes from the time index (`Store.seq_at_or_after`, O(log n)); without
a filter the count is the range's length (sequence numbers are contiguous,
retention only removes a prefix). With one, the store keeps per-name counts
for *buckets* of `BUCKET` consecutive sequence numbers, so a count sums a few
small maps per bucket and reads events only at the range's two edges (at
most two partial buckets). On LMDB a range that reaches the head counts the
head's bucket from its counts as well (they hold exactly what it has so far),
so a dry run "until now" reads at most its start edge.

Decisions:
- Bucket b holds seqs `b * BUCKET + 1` .. `(b + 1) * BUCKET`: every bucket
  has exactly `BUCKET` seqs, so "complete" is a count, not a guess.
- LMDB keeps the counts in its own database, written by the append that
  writes the events (the same transaction), so they are never behind the
  log; retention drops the counts of buckets it removed whole. A data dir
  written before the counts existed is counted from the first bucket that
  started after the upgrade (`counted_from`); older ranges are read (names
  only, never bodies) until retention removes them.
- JetStream keeps them in memory (`BucketCache`): a daemon notes the names of
  its own appends as they are acknowledged, so a daemon that is the only
  publisher has every bucket complete for free; a bucket it cannot vouch for
  (events another daemon appended, or from before its start) is read once
  when a count needs it, and kept. Events are immutable, so a complete bucket
  never goes stale; the cache is bounded (`MAX_CACHED_BUCKETS`, oldest out)
  and emptied when the log is replaced.
- The filter is the caller's: a count takes a predicate over names
  (`matches`), asked once per distinct name (`NameMatcher`), so storage does
  not know what an event filter is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

BUCKET = 4096
MAX_CACHED_BUCKETS = 16_384  # 67M events' worth; about 1 KiB each with a few names

Matches = Callable[[str], bool]


def bucket_of(seq: int) -> int:
    return (seq - 1) // BUCKET


def bucket_start(bucket: int) -> int:
    return bucket * BUCKET + 1


def split(start: int, end: int) -> tuple[list[tuple[int, int]], range]:
    """`start` .. `end - 1` as its partial edges (ranges to read) and the buckets it
    holds whole."""
    if start >= end:
        return [], range(0)
    first_full = bucket_of(start) if bucket_start(bucket_of(start)) == start \
        else bucket_of(start) + 1
    last_full = bucket_of(end) - 1  # the bucket holding `end` is not whole in the range
    if last_full < first_full:
        return [(start, end)], range(0)
    edges = []
    if start < bucket_start(first_full):
        edges.append((start, bucket_start(first_full)))
    if bucket_start(last_full + 1) < end:
        edges.append((bucket_start(last_full + 1), end))
    return edges, range(first_full, last_full + 1)


class NameMatcher:
    """`matches` asked once per name."""

    def __init__(self, matches: Matches) -> None:
        self._matches = matches
        self._seen: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        verdict = self._seen.get(name)
        if verdict is None:
            verdict = self._seen[name] = self._matches(name)
        return verdict

    def count(self, counts: dict[str, int]) -> int:
        return sum(n for name, n in counts.items() if self(name))


def tally(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass(slots=True)
class _Bucket:
    counts: dict[str, int] = field(default_factory=dict)
    covered: int = 0  # how many of its seqs the counts hold
    read: bool = False  # counted by reading it whole: appends noted later are in already

    @property
    def complete(self) -> bool:
        return self.covered >= BUCKET


class BucketCache:
    """Per-bucket name counts a daemon keeps in memory (see the module docstring)."""

    def __init__(self, limit: int = MAX_CACHED_BUCKETS) -> None:
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()
        self._limit = limit

    def clear(self) -> None:
        self._buckets.clear()

    def note(self, first_seq: int, names: list[str]) -> None:
        """Events `first_seq`, `first_seq + 1`, ... were appended with these names."""
        position = 0
        while position < len(names):
            seq = first_seq + position
            bucket = bucket_of(seq)
            take = min(len(names) - position, bucket_start(bucket + 1) - seq)
            entry = self._entry(bucket)
            if not entry.read and not entry.complete:
                for name in names[position:position + take]:
                    entry.counts[name] = entry.counts.get(name, 0) + 1
                entry.covered += take
            position += take

    def complete(self, bucket: int) -> dict[str, int] | None:
        entry = self._buckets.get(bucket)
        return entry.counts if entry is not None and entry.complete else None

    def put(self, bucket: int, counts: dict[str, int]) -> None:
        """The bucket's counts, from reading it whole."""
        self._buckets[bucket] = _Bucket(counts, BUCKET, read=True)
        self._bound()

    def _entry(self, bucket: int) -> _Bucket:
        entry = self._buckets.get(bucket)
        if entry is None:
            entry = self._buckets[bucket] = _Bucket()
            self._bound()
        return entry

    def _bound(self) -> None:
        while len(self._buckets) > self._limit:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
