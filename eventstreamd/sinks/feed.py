"""The log feed: one reader at the head of the log for every sink of the daemon.

Decisions:
- One `LogFeed` per daemon (the supervisor builds it and hands it to every
  sink loop). It keeps the newest part of the log in memory as a *tail* of
  batches, bounded by `delivery.tail_cache` bytes (at least the newest batch
  is kept). A batch holds the decoded `StoredEvent` objects, shared by every
  sink that reads it (never copied per sink), and a small index: the set of
  event names and of entities in it, and the ingest time of its last event.
- Reads at the head happen once, in one reader task (`run`), and only while
  some reader waits at the head (is *parked*): with no one waiting, nothing
  is read or decoded. A commit moves the store's head; the reader task reads
  the new events (at most `READ_BATCH` events / `READ_BYTES`), appends the
  batch and wakes the parked readers whose filter can match it.
- Filters are matched against a batch's index, not its events: a reader whose
  filter shares no name or entity with a batch skips the whole batch in O(1),
  never per event; a matching reader filters per event as before.
- No O(N) wake-ups per commit: a parked reader is indexed by the names and
  entities of its filter (readers that take everything, or need to see every
  batch's time because their range ends at a time, are kept apart). Appending
  a batch wakes only the readers its index can match; the others stay parked
  and, when they next look, jump over every batch appended since they parked
  (none could match, or they would have been woken), so a filtered-out
  integration costs a set intersection per batch and nothing per event.
- A reader parks only at (or beyond) the tail's end. When nobody is parked the
  tail may be stale; a reader arriving beyond its end then re-anchors it at
  its own position (the old tail is dropped), so the feed always follows where
  its readers wait rather than reading events nobody asked for.
- Readers behind the tail (after a restart, or slow enough to fall out of it)
  read on their own from the store, under ONE read budget for the daemon
  (`delivery.read_budget`, `ReadBudget`): a read reserves its bytes before it
  reads, keeps them until its batch has been handed on, and waiters are served
  in order of arrival (no starvation). Memory for reading is therefore bounded
  by `tail_cache + read_budget`, not by the number of integrations.
- An empty read while the head is at or past the position means either that
  retention removed every event from there on (the feed records a *gap* batch
  without events up to the oldest event left, so readers report how many were
  pruned) or that a replica has not caught up with the head yet (wait a
  little and read again). A gap wakes every parked reader, so each reports
  the pruned events as it did when it read on its own.
- A failed read at the head (the store unreachable longer than it waits) is
  handed to every parked reader, which raises it in its own task: its sink
  crashes and is restarted with backoff, as when it read on its own.
- A log replaced under the daemon (the store's `log_epoch` moves: a JetStream
  stream deleted and created anew) makes the tail worthless and every
  reader's position suspect: the feed drops the tail and wakes every parked
  reader, and a reader whose epoch is not the store's returns a step that
  says so (`Step.replaced`); its owner starts again and checks its cursor
  against the new log (sinks/loop.py).
- `LogReader` is one reader of the log: a position, a filter, optionally an end
  (an ingest time, as a temporary integration's `ends_at`, and/or a sequence
  number). It yields the matching events batch by batch (`next`) and never
  writes anything: cursor persistence and delivery are its owner's (the sink
  loop's) business, so a second reader of the same integration (a replay)
  can reuse it with its own position, filter and range.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from ..logs import kv
from ..model import StoredEvent
from ..storage.base import Store
from ..timeouts import move_on_after
from .filters import EventFilter

log = logging.getLogger("eventstreamd.feed")

READ_BATCH = 256
READ_BYTES = 4 * 1024 * 1024  # a batch stops at this much stored data, too
EMPTY_READ_PAUSE = 0.05  # seconds; a replica behind the head (see the module docstring)
FAILED_READ_PAUSE = 1.0  # seconds before the head is read again after a failed read
COMPLETION_MARGIN_MS = 5_000  # see LogReader.range_closed
# What a batch costs in memory beyond its events' bodies: the event objects with their
# id, tenant and name strings, and the batch with its index (measured, rounded up).
EVENT_OVERHEAD = 400
BATCH_OVERHEAD = 1024
SKIPS_PER_CHECKPOINT = 64  # batches a reader skips before letting other tasks run


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """Consecutive events read from `start`, up to `end` (exclusive), with their index."""

    start: int
    end: int
    events: list[StoredEvent]
    names: frozenset[str]
    entities: frozenset[str]
    last_ingested: int  # ms; the newest event's ingest time (0 without events)
    size: int  # bytes it is accounted for

    @classmethod
    def of(cls, start: int, events: list[StoredEvent]) -> Batch:
        names = frozenset(e.name for e in events)
        return cls(start, events[-1].seq + 1, events, names,
                   frozenset(n.split(".", 1)[0] for n in names), events[-1].ingested_at,
                   BATCH_OVERHEAD + sum(len(e.body) + EVENT_OVERHEAD for e in events))

    @classmethod
    def gap(cls, start: int, end: int) -> Batch:
        """Events `start`..`end - 1` were removed by retention before anyone read them."""
        return cls(start, end, [], frozenset(), frozenset(), 0, BATCH_OVERHEAD)

    @property
    def first_seq(self) -> int:
        """The first event's seq (`end` when there is none)."""
        return self.events[0].seq if self.events else self.end

    def from_position(self, position: int) -> list[StoredEvent]:
        """Its events at or after `position`."""
        events = self.events
        if not events or position <= events[0].seq:
            return events
        return events[bisect.bisect_left(events, position, key=_seq):]


def _seq(event: StoredEvent) -> int:
    return event.seq


def may_match(event_filter: EventFilter, batch: Batch) -> bool:
    """Whether any event of `batch` can pass `event_filter`, from the batch's index."""
    if event_filter.passes_everything:
        return True
    names, entities = event_filter.names, event_filter.entities
    if names is not None and not names.isdisjoint(batch.names):
        return True
    return entities is not None and not entities.isdisjoint(batch.entities)


# ------------------------------------------------------------------ the budget


class Reservation:
    """Bytes of the read budget held by one read until its batch has been handed on."""

    __slots__ = ("_budget", "amount")

    def __init__(self, budget: ReadBudget, amount: int) -> None:
        self._budget = budget
        self.amount = amount

    def resize(self, amount: int) -> None:
        """Hold `amount` instead: what the read turned out to be. More than reserved is
        taken at once (one event may be larger than a read's bound)."""
        self._budget._give_back(self.amount - amount)
        self.amount = amount

    def release(self) -> None:
        self.resize(0)


class ReadBudget:
    """A byte semaphore shared by every read behind the tail, served first come, first
    served: a large request is never overtaken by smaller ones, so nobody starves."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.available = self.total
        self._waiters: deque[tuple[int, anyio.Event]] = deque()

    async def reserve(self, amount: int) -> Reservation:
        amount = max(1, min(amount, self.total))
        if not self._waiters and self.available >= amount:
            self.available -= amount
            return Reservation(self, amount)
        entry = (amount, anyio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # granted while being cancelled: hand it back
                self._give_back(amount)
            else:
                self._waiters.remove(entry)
                self._grant()  # a smaller request behind this one may fit now
            raise
        return Reservation(self, amount)

    def _give_back(self, amount: int) -> None:
        self.available += amount
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.available >= waiters[0][0]:
            amount, granted = waiters.popleft()
            self.available -= amount
            granted.set()


# -------------------------------------------------------------------- the feed


@dataclass(eq=False)
class _Parked:
    """A reader waiting at the head for a batch its filter can match."""

    reader: LogReader
    position: int  # where it waits (the tail's end, or beyond it)
    every_batch: bool  # woken by every batch, not only by those its filter may match
    wake: anyio.Event = field(default_factory=anyio.Event)
    # Where it resumes once woken: the start of the first batch appended that may match
    # (or the tail's end when a read failed); None while it waits.
    resume_at: int | None = None
    error: BaseException | None = None
    parked: bool = True


@dataclass
class FeedStats:
    """Counters: how often the head was read, and how many parked readers were woken."""

    reads: int = 0  # store reads at the head
    private_reads: int = 0  # store reads by readers behind the tail
    wakeups: int = 0  # parked readers woken by an appended batch


class LogFeed:
    def __init__(self, store: Store, *, tail_bytes: int = 32 * 1024 * 1024,
                 read_budget: int = 64 * 1024 * 1024, read_batch: int = READ_BATCH,
                 read_bytes: int = READ_BYTES) -> None:
        self.store = store
        self.tail_bytes = tail_bytes
        self.budget = ReadBudget(read_budget)
        self.read_batch = read_batch
        self.read_bytes = read_bytes
        self.stats = FeedStats()
        self._batches: deque[Batch] = deque()
        self._starts: list[int] = []  # the batches' starts, for positions inside a batch
        self._by_start: dict[int, Batch] = {}
        self.tail_start: int | None = None  # None: not anchored yet
        self.tail_end = 0
        self.size = 0
        # Parked readers, indexed by what can wake them.
        self._by_name: dict[str, set[_Parked]] = {}
        self._by_entity: dict[str, set[_Parked]] = {}
        self._every: set[_Parked] = set()
        self.parked = 0
        self._wanted = anyio.Event()
        self._moved: dict[object, anyio.Event] = {}
        self._epoch = store.log_epoch

    # ------------------------------------------------------------------ the tail

    def batch_at(self, position: int) -> Batch | None:
        """The tail's batch holding `position`, if the tail holds it."""
        batch = self._by_start.get(position)
        if batch is not None:
            return batch
        if self.tail_start is None or not self.tail_start <= position < self.tail_end:
            return None
        index = bisect.bisect_right(self._starts, position) - 1
        return self._batches[index] if index >= 0 else None

    def ingested_at(self, position: int) -> int | None:
        """When the first event at or after `position` was ingested (ms), if the tail holds
        it (status's age of the oldest undelivered event, without a store read)."""
        batch = self.batch_at(position)
        events = batch.from_position(position) if batch is not None else None
        return events[0].ingested_at if events else None

    def _append(self, batch: Batch) -> None:
        if batch.start != self.tail_end or self.tail_start is None:
            return  # re-anchored while this was read: not the tail's any more
        self._batches.append(batch)
        self._starts.append(batch.start)
        self._by_start[batch.start] = batch
        self.tail_end = batch.end
        self.size += batch.size
        while self.size > self.tail_bytes and len(self._batches) > 1:
            old = self._batches.popleft()
            del self._starts[0]
            del self._by_start[old.start]
            self.size -= old.size
            self.tail_start = self._batches[0].start
        self._wake_for(batch)
        moved, self._moved = self._moved, {}
        for event in moved.values():
            event.set()

    def _anchor(self, position: int) -> None:
        """Start the tail afresh at `position` (nobody is parked at the old one)."""
        self._batches.clear()
        self._starts.clear()
        self._by_start.clear()
        self.size = 0
        self.tail_start = self.tail_end = position

    def notify_moved(self, owner: object, event: anyio.Event) -> None:
        """Set `event` when the next batch is appended (once; one event per owner)."""
        self._moved[owner] = event

    def forget_moved(self, owner: object) -> None:
        self._moved.pop(owner, None)

    # ---------------------------------------------------------------- parking

    def _park(self, parked: _Parked) -> None:
        if parked.every_batch:
            self._every.add(parked)
        else:
            f = parked.reader.filter
            for name in f.names or ():
                self._by_name.setdefault(name, set()).add(parked)
            for entity in f.entities or ():
                self._by_entity.setdefault(entity, set()).add(parked)
        self.parked += 1
        self._wanted.set()

    def _unpark(self, parked: _Parked) -> None:
        if not parked.parked:
            return
        parked.parked = False
        if parked.every_batch:
            self._every.discard(parked)
        else:
            f = parked.reader.filter
            for index, keys in ((self._by_name, f.names), (self._by_entity, f.entities)):
                for key in keys or ():
                    waiting = index.get(key)
                    if waiting is not None:
                        waiting.discard(parked)
                        if not waiting:
                            del index[key]
        self.parked -= 1
        if not self.parked:
            self._wanted = anyio.Event()

    def _wake_for(self, batch: Batch) -> None:
        if not batch.events:  # a gap: every reader reports the pruned events
            woken = self._everyone()
        else:
            woken = set(self._every)
            for index, keys in ((self._by_name, batch.names),
                                (self._by_entity, batch.entities)):
                for key in keys:
                    waiting = index.get(key)
                    if waiting:
                        woken |= waiting
        for parked in woken:
            parked.resume_at = batch.start
            self._unpark(parked)
            parked.wake.set()
        self.stats.wakeups += len(woken)

    def _everyone(self) -> set[_Parked]:
        everyone = set(self._every)
        for index in (self._by_name, self._by_entity):
            for waiting in index.values():
                everyone |= waiting
        return everyone

    def _log_replaced(self) -> None:
        """The store's log was replaced (its `log_epoch` moved): the tail belonged to the
        old one, and every parked reader's position was counted in it. They are woken to
        say so (their owners start again, checking their cursor against the new log)."""
        self._epoch = self.store.log_epoch
        log.warning("the event log was replaced; every waiting reader starts again",
                    extra=kv(head=self.store.head, tail_end=self.tail_end))
        self._batches.clear()
        self._starts.clear()
        self._by_start.clear()
        self.size = 0
        self.tail_start = None  # the next reader at the head anchors it anew
        self.tail_end = 0
        for parked in self._everyone():
            self._unpark(parked)
            parked.wake.set()

    def _fail_parked(self, error: BaseException) -> None:
        for parked in self._everyone():
            parked.error = error
            parked.resume_at = self.tail_end  # what it passed so far, whatever comes later
            self._unpark(parked)
            parked.wake.set()

    # ------------------------------------------------------------------ reading

    async def run(self) -> None:
        """The reader at the head: reads while some reader is parked, and only then."""
        store = self.store
        while True:
            if not self.parked:
                await self._wanted.wait()
                continue
            if store.log_epoch != self._epoch:
                self._log_replaced()
                continue
            position = self.tail_end
            if store.head < position:
                await store.wait_for_head(position - 1)
                continue
            try:
                batch = await self.read_at(position, self.read_batch, self.read_bytes)
            except Exception as exc:
                log.warning("reading the log at the head failed", extra=kv(
                    position=position, error=f"{type(exc).__name__}: {exc}"))
                self._fail_parked(exc)
                await anyio.sleep(FAILED_READ_PAUSE)
                continue
            self.stats.reads += 1
            if batch is not None:
                self._append(batch)
            # An LMDB read need not suspend: let the woken sinks (and everything else)
            # run between two batches while the feed catches up with the head.
            await anyio.lowlevel.checkpoint()

    async def read_at(self, position: int, limit: int, max_bytes: int) -> Batch | None:
        """A batch read from the store at `position`; None when there is nothing to read
        yet (or a replica has not caught up: after a short pause)."""
        store = self.store
        events = await store.read_events(position, limit, max_bytes)
        if events:
            return Batch.of(position, events)
        if store.head < position:
            return None
        first = await store.first_seq()
        if first > position:
            return Batch.gap(position, first)
        await anyio.sleep(EMPTY_READ_PAUSE)
        return None


# ------------------------------------------------------------------ a reader


@dataclass(eq=False, slots=True)
class Step:
    """What a reader hands its owner: the matching events from its position on, in order,
    and where it stands once they are all taken."""

    events: list[StoredEvent]
    end: int
    pruned: int = 0  # events retention removed before these (to report)
    completed: bool = False  # the reader's range ends at `end`
    replaced: bool = False  # the log was replaced: `end` was counted in the old one
    reservation: Reservation | None = None  # budget held until the events are handed on


class LogReader:
    """One reader of the log through the feed (see the module docstring)."""

    def __init__(self, feed: LogFeed, position: int, event_filter: EventFilter, *,
                 ends_ms: int | None = None, end_seq: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.feed = feed
        self.position = position  # next seq to read: everything before is handed out
        self.filter = event_filter
        self.ends_ms = ends_ms  # events ingested after this are not for this reader
        self.end_seq = end_seq  # nor events from this seq on
        self._clock = clock
        self._parked: _Parked | None = None
        self._interrupted = False
        self._epoch = feed.store.log_epoch  # the log its position is counted in

    @property
    def live_position(self) -> int:
        """Where the reader stands now: parked, it has already passed every batch appended
        since it parked that could not match."""
        parked = self._parked
        if parked is None:
            return self.position
        return self._resolved(parked)

    def _resolved(self, parked: _Parked) -> int:
        moved_to = parked.resume_at if parked.resume_at is not None else self.feed.tail_end
        return max(parked.position, moved_to)

    def interrupt(self) -> None:
        """Stop waiting (the owner is stopping): `next` returns None from now on."""
        self._interrupted = True
        if self._parked is not None:
            self._parked.wake.set()

    def close(self) -> None:
        """Leave the feed, taking along what parking has passed."""
        if self._parked is not None:
            self._parked.error = None  # the owner is done: a failed read is no news
        self._leave()

    def finish(self, step: Step, stopped_at: int | None = None) -> None:
        """The step's events were handed on (up to `stopped_at`, the seq of the first not
        taken, when cut short): move on and release the step's budget."""
        self.position = step.end if stopped_at is None else stopped_at
        if step.reservation is not None:
            step.reservation.release()
            step.reservation = None

    def _leave(self) -> None:
        parked, self._parked = self._parked, None
        if parked is None:
            return
        self.feed._unpark(parked)
        self.position = self._resolved(parked)
        if parked.error is not None:
            raise parked.error

    async def next(self, until: float | None = None) -> Step | None:
        """The next matching events; None when nothing came before `until` (the clock's
        time; None waits for events) or the reader was interrupted."""
        feed = self.feed
        skipped = 0
        while True:
            self._leave()
            position = self.position
            if feed.store.log_epoch != self._epoch:
                return Step([], position, replaced=True)  # the owner starts again
            if self.end_seq is not None and position >= self.end_seq:
                return Step([], position, completed=True)
            batch = feed.batch_at(position)
            reservation = None
            if batch is None:
                if self._at_head(position):
                    wait_until = until
                    if self.ends_ms is not None and feed.store.head < position:
                        if await self.range_closed():
                            return Step([], position, completed=True)
                        # Then the range closes by the clock, whatever comes.
                        closes = (self.ends_ms + COMPLETION_MARGIN_MS) / 1000 + 0.01
                        wait_until = closes if until is None else min(until, closes)
                    if await self._wait(position, wait_until):
                        continue
                    return None
                reservation = await feed.budget.reserve(feed.read_bytes)
                try:
                    limit = feed.read_batch
                    if self.end_seq is not None:  # nothing beyond the range
                        limit = min(limit, self.end_seq - position)
                    batch = await feed.read_at(position, limit, reservation.amount)
                    feed.stats.private_reads += 1
                except BaseException:
                    reservation.release()
                    raise
                if batch is None:
                    reservation.release()
                    continue
                reservation.resize(batch.size)
            step = self._take(batch, position)
            if reservation is not None:
                if step is not None and step.events:
                    step.reservation = reservation
                else:
                    reservation.release()
            if step is not None:
                return step
            skipped += 1
            if reservation is not None or skipped % SKIPS_PER_CHECKPOINT == 0:
                # A read from LMDB need not suspend: without this a reader skipping a
                # long backlog would hold the event loop for all of it.
                await anyio.lowlevel.checkpoint()

    def _at_head(self, position: int) -> bool:
        """Whether the reader waits for the feed here rather than reading on its own."""
        feed = self.feed
        if feed.tail_start is None or (position > feed.tail_end and not feed.parked):
            feed._anchor(position)  # nobody waits at the old tail: follow this reader
            return True
        if position >= feed.tail_end:
            return position == feed.tail_end or feed.store.head < position
        return False  # behind the tail: read on its own

    async def _wait(self, position: int, until: float | None) -> bool:
        """Park at the head until a batch that may match is appended: True when woken for
        one, False when `until` passed or the reader was interrupted (it stays parked)."""
        if self._interrupted:
            return False
        parked = _Parked(self, position, self.filter.passes_everything
                         or self.ends_ms is not None or self.end_seq is not None)
        self._parked = parked
        self.feed._park(parked)
        delay = None if until is None else max(0.0, until - self._clock())
        with move_on_after(delay):
            await parked.wake.wait()
        return not parked.parked and not self._interrupted

    def _take(self, batch: Batch, position: int) -> Step | None:
        """The step `batch` makes for this reader at `position`; None to skip it silently."""
        pruned = max(0, batch.first_seq - position)
        end, completed = batch.end, False
        if self.end_seq is not None and end >= self.end_seq:
            end, completed = self.end_seq, True
        if self.ends_ms is not None and batch.last_ingested > self.ends_ms:
            completed = True
        if not may_match(self.filter, batch):
            if pruned or completed:
                return Step([], end, pruned, completed)
            self.position = end
            return None
        events = batch.from_position(position)
        if completed:
            ends_ms, end_seq = self.ends_ms, self.end_seq
            events = [e for e in events
                      if (ends_ms is None or e.ingested_at <= ends_ms)
                      and (end_seq is None or e.seq < end_seq)]
        if not self.filter.passes_everything:
            matches = self.filter.matches
            events = [e for e in events if matches(e)]
        elif events is batch.events:
            events = list(events)  # the owner may keep or cut its list; the tail's stays
        if not events and not pruned and not completed:
            self.position = end
            return None
        return Step(events, end, pruned, completed)

    async def range_closed(self) -> bool:
        """No event ingested at or before `ends_ms` can still appear in the log.

        Ingest times are stamped in commit order, so a commit stamped after
        `ends_ms` closes the range; so does `ends_ms` being older than any commit
        could take (an event stamped just before it may still be fsyncing).
        """
        assert self.ends_ms is not None
        return (await self.feed.store.last_ingested_ms() > self.ends_ms
                or self._clock() * 1000 > self.ends_ms + COMPLETION_MARGIN_MS)
