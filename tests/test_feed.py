"""The log feed in-process on a real LMDB store: the batch index, reads at the head done
once for every reader, wake-ups only for readers a batch may match, readers behind the
tail under the read budget, gaps, ranges, and the budget's order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from eventstreamd.model import EventFilterSpec, StoredEvent
from eventstreamd.sinks.feed import Batch, LogFeed, LogReader, ReadBudget, Step, may_match
from eventstreamd.sinks.filters import EventFilter
from eventstreamd.storage.lmdb_store import LmdbStore
from tests.helpers.store import new_event, opened
from tests.helpers.wait import eventually

EVERYTHING = EventFilter.of(None)


def names(*event_names: str) -> EventFilter:
    return EventFilter.of(EventFilterSpec(tuple(event_names), None))


def entities(*entity_names: str) -> EventFilter:
    return EventFilter.of(EventFilterSpec(None, tuple(entity_names)))


def stored(seq: int, name: str) -> StoredEvent:
    return StoredEvent(seq, f"e{seq}", "t", name, 1000 + seq, b"{}")


class CountingStore:
    """Counts `read_events` calls of a real store (and can make them fail)."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.reads = 0
        self.fail: Exception | None = None
        self._read = store.read_events
        store.read_events = self._counted  # type: ignore[method-assign]

    async def _counted(self, from_seq: int, limit: int, max_bytes: int = 1 << 23,
                       ) -> list[StoredEvent]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return await self._read(from_seq, limit, max_bytes)


@asynccontextmanager
async def running(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[LmdbStore, LogFeed]]:
    async with opened(tmp_path / "data") as store, anyio.create_task_group() as tg:
        feed = LogFeed(store, **options)
        tg.start_soon(feed.run)
        yield store, feed
        tg.cancel_scope.cancel()


async def publish(store: LmdbStore, count: int, name: str = "order.created",
                  start: int = 0, size: int = 10) -> None:
    await store.append([new_event(f"{name}-{start + i}", {"i": start + i, "pad": "x" * size},
                                  name=name) for i in range(count)])


async def take(reader: LogReader, count: int, *, within: float = 10.0) -> list[StoredEvent]:
    """Steps until `count` events came; each step finished as its owner would."""
    got: list[StoredEvent] = []
    with anyio.fail_after(within):
        while len(got) < count:
            step = await reader.next()
            if step is None:
                continue
            got += step.events
            reader.finish(step)
    return got


async def parked_readers(feed: LogFeed, readers: list[LogReader],
                         results: dict[int, list[StoredEvent]], tg: Any,
                         want: Callable[[int], int]) -> Callable[[], Awaitable[None]]:
    """Start a task per reader that takes `want(index)` events; wait until all are parked."""
    for index, reader in enumerate(readers):
        async def run(index: int = index, reader: LogReader = reader) -> None:
            results[index] = await take(reader, want(index), within=30)
        tg.start_soon(run)

    async def all_parked() -> None:
        await eventually(lambda: feed.parked, lambda n: n == len(readers),
                         what="every reader parked at the head")
    return all_parked


# ------------------------------------------------------------------ the index


def test_a_batch_index_holds_its_names_and_entities() -> None:
    batch = Batch.of(5, [stored(5, "order.created"), stored(6, "order.paid"),
                         stored(7, "return.processed")])
    assert batch.names == {"order.created", "order.paid", "return.processed"}
    assert batch.entities == {"order", "return"}
    assert (batch.start, batch.end, batch.first_seq, batch.last_ingested) == (5, 8, 5, 1007)
    assert [e.seq for e in batch.from_position(6)] == [6, 7]
    assert may_match(EVERYTHING, batch)
    assert may_match(names("order.paid"), batch)
    assert not may_match(names("order.shipped"), batch)
    assert may_match(entities("return"), batch)
    assert not may_match(entities("invoice"), batch)
    assert may_match(EventFilter.of(EventFilterSpec(("x.y",), ("order",))), batch)
    assert not may_match(EventFilter.of(EventFilterSpec((), ())), batch)
    gap = Batch.gap(1, 5)
    assert gap.first_seq == 5 and not gap.events and not may_match(names("order.paid"), gap)


# ---------------------------------------------------------- reads at the head


async def test_readers_at_the_head_share_one_read_per_batch(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        counting = CountingStore(store)
        readers = [LogReader(feed, 1, EVERYTHING) for _ in range(20)]
        results: dict[int, list[StoredEvent]] = {}
        async with anyio.create_task_group() as tg:
            all_parked = await parked_readers(feed, readers, results, tg, lambda i: 30)
            await all_parked()
            for start in range(0, 30, 10):
                await publish(store, 10, start=start)
                # The next commit only once this one has reached every reader, so the
                # reads happen one per commit (a commit alone cannot split a read).
                def passed(head: int = store.head) -> bool:
                    return min(r.live_position for r in readers) > head

                await eventually(passed)
        assert counting.reads == feed.stats.reads == 3  # one per commit, for all 20
        assert feed.stats.private_reads == 0
        first = results[0]
        assert [e.seq for e in first] == list(range(1, 31))
        for got in results.values():  # the same objects, never copied per reader
            assert all(a is b for a, b in zip(got, first, strict=True))


async def test_only_readers_a_batch_may_match_are_woken(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        quiet = [LogReader(feed, 1, names("return.processed")) for _ in range(100)]
        by_entity = LogReader(feed, 1, entities("order"))
        by_name = LogReader(feed, 1, names("order.created"))
        results: dict[int, list[StoredEvent]] = {}
        async with anyio.create_task_group() as tg:
            all_parked = await parked_readers(
                feed, [by_entity, by_name, *quiet], results, tg,
                lambda i: 5 if i < 2 else 1)
            await all_parked()
            for i in range(5):
                await publish(store, 1, start=i)
                await eventually(
                    lambda: min(by_entity.live_position, by_name.live_position),
                    lambda p: p > store.head)
            assert feed.stats.wakeups == 10  # 2 matching readers x 5 commits, nobody else
            # The quiet ones never ran, yet they have passed every batch.
            assert all(r.live_position == 6 for r in quiet)
            assert all(r.position == 1 for r in quiet)
            await publish(store, 1, name="return.processed", start=5)
        assert [e.seq for e in results[2]] == [6]  # straight to the one it matches
        assert feed.stats.wakeups == 10 + 100


async def test_a_filtered_out_reader_skips_whole_batches(tmp_path: Path) -> None:
    """A reader walking the tail skips batches its filter cannot match without looking at
    their events; it stops at the first batch that may match."""
    async with running(tmp_path) as (store, feed):
        first = LogReader(feed, 1, EVERYTHING)
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, first, 40)
            await eventually(lambda: feed.parked, lambda n: n == 1)
            for start in range(0, 30, 10):
                await publish(store, 10, name="order.created", start=start)
                await eventually(lambda: first.live_position, lambda p: p > store.head)
            await publish(store, 10, name="return.processed", start=30)
        batches = len(feed._batches)
        assert batches >= 4
        late = LogReader(feed, 1, names("return.processed"))
        step = await late.next()
        assert step is not None and [e.seq for e in step.events] == list(range(31, 41))
        assert feed.stats.private_reads == 0


# ---------------------------------------------------------- behind the tail


async def test_a_reader_behind_the_tail_reads_on_its_own_within_the_budget(
        tmp_path: Path) -> None:
    async with running(tmp_path, tail_bytes=1, read_budget=64 * 1024,
                       read_batch=8) as (store, feed):
        head_reader = LogReader(feed, 1, EVERYTHING)
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, head_reader, 80)
            await eventually(lambda: feed.parked, lambda n: n == 1)
            for start in range(0, 80, 8):
                await publish(store, 8, start=start, size=1000)
                await eventually(lambda: head_reader.live_position, lambda p: p > store.head)
        assert len(feed._batches) == 1 and feed.tail_start == 73  # only the newest kept
        behind = LogReader(feed, 1, EVERYTHING)
        got: list[StoredEvent] = []
        while len(got) < 80:
            step = await behind.next()
            assert step is not None
            if step.reservation is not None:  # held until handed on
                assert feed.budget.available < feed.budget.total
            got += step.events
            behind.finish(step)
            assert feed.budget.available == feed.budget.total
        assert [e.seq for e in got] == list(range(1, 81))
        assert feed.stats.private_reads >= 9


async def test_read_budget_serves_in_order_of_arrival() -> None:
    budget = ReadBudget(100)
    held = await budget.reserve(80)
    granted: list[str] = []

    async def want(name: str, amount: int) -> None:
        reservation = await budget.reserve(amount)
        granted.append(name)
        reservation.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(want, "large", 60)
        await anyio.sleep(0.01)
        tg.start_soon(want, "small", 10)  # would fit now, but must not overtake
        await anyio.sleep(0.05)
        assert granted == []
        held.release()
    assert granted == ["large", "small"]
    assert budget.available == 100
    big = await budget.reserve(1000)  # more than there is: the whole budget
    assert big.amount == 100
    big.resize(150)  # a read that came out larger: taken at once
    assert budget.available == -50
    big.release()
    assert budget.available == 100


async def test_a_cancelled_wait_for_the_budget_lets_the_next_one_in() -> None:
    budget = ReadBudget(100)
    held = await budget.reserve(50)
    granted: list[str] = []

    async def want(name: str, amount: int) -> None:
        (await budget.reserve(amount)).release()
        granted.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.1):
            async with anyio.create_task_group() as inner:
                inner.start_soon(want, "large", 80)  # waits, then gives up
                await anyio.sleep(0.02)
                tg.start_soon(want, "small", 40)  # queued behind it, though it would fit
                await anyio.sleep(0.02)
                assert granted == []
                await anyio.sleep(1)
    assert granted == ["small"]
    held.release()
    assert budget.available == 100


# ------------------------------------------------------------ gaps and ranges


async def test_pruned_events_come_as_a_count(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        await publish(store, 5)
        assert await store.prune(10**15) == 5  # everything
        reader = LogReader(feed, 1, names("return.processed"))  # even a filtered-out one
        step = await reader.next()
        assert step is not None and (step.pruned, step.end, step.events) == (5, 6, [])
        reader.finish(step)
        await publish(store, 2, name="return.processed", start=5)
        assert [e.seq for e in await take(reader, 2)] == [6, 7]


async def test_a_range_ends_at_a_seq_or_an_ingest_time(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        await publish(store, 10)
        by_seq = LogReader(feed, 3, EVERYTHING, end_seq=8)
        steps: list[Step] = []
        while not (steps and steps[-1].completed):
            step = await by_seq.next()
            assert step is not None
            steps.append(step)
            by_seq.finish(step)
        assert [e.seq for s in steps for e in s.events] == [3, 4, 5, 6, 7]
        assert by_seq.position == 8
        behind = LogReader(feed, 1, EVERYTHING, end_seq=3)  # behind the tail, at 3
        step = await behind.next()
        assert step is not None and step.completed and [e.seq for e in step.events] == [1, 2]
        assert feed.stats.private_reads == 1
        behind.finish(step)
        assert feed.budget.available == feed.budget.total
        [tenth] = await store.read_events(10, 1)
        await anyio.sleep(0.01)
        await publish(store, 3, start=10)  # ingested after the range's end
        by_time = LogReader(feed, 1, EVERYTHING, ends_ms=tenth.ingested_at)
        got: list[int] = []
        while True:
            step = await by_time.next()
            assert step is not None
            got += [e.seq for e in step.events]
            by_time.finish(step)
            if step.completed:
                break
        assert got == list(range(1, 11))


async def test_a_reader_ahead_of_a_stale_tail_moves_the_tail_to_itself(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        early = LogReader(feed, 1, EVERYTHING)
        await publish(store, 5)
        assert len(await take(early, 5)) == 5
        await publish(store, 20, start=5)  # nobody waits at the head: nothing is read
        await anyio.sleep(0.05)
        assert feed.tail_end == 6
        counting = CountingStore(store)
        ahead = LogReader(feed, 20, EVERYTHING)
        assert [e.seq for e in await take(ahead, 6)] == list(range(20, 26))
        assert feed.tail_start == 20 and counting.reads == 1  # events 6-19 never read


async def test_a_failed_read_at_the_head_reaches_the_waiting_readers(tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        counting = CountingStore(store)
        reader = LogReader(feed, 1, EVERYTHING)
        counting.fail = RuntimeError("the store went away")
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await reader.next()
            except RuntimeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await eventually(lambda: feed.parked, lambda n: n == 1)
            await publish(store, 1)
        assert [str(e) for e in errors] == ["the store went away"]
        assert feed.parked == 0
        counting.fail = None
        assert [e.seq for e in await take(reader, 1)] == [1]


async def test_an_interrupted_reader_stops_waiting_and_keeps_what_it_passed(
        tmp_path: Path) -> None:
    async with running(tmp_path) as (store, feed):
        reader = LogReader(feed, 1, names("return.processed"))
        outcome: list[Step | None] = []

        async def wait() -> None:
            outcome.append(await reader.next())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await eventually(lambda: feed.parked, lambda n: n == 1)
            await publish(store, 3)  # nothing it matches
            await eventually(lambda: reader.live_position, lambda p: p == 4)
            reader.interrupt()
        assert outcome == [None] and reader.position == 1
        reader.close()
        assert reader.position == 4 and feed.parked == 0
        assert await reader.next() is None  # interrupted for good
