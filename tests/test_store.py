"""The LMDB store in-process, through the `Store` interface: group commit, bounded reads, time
lookup, retention, fencing, atomic transitions, bounded lists, a full map, format migration."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import anyio
import pytest

from eventstreamd.daemon.retention import prune_once
from eventstreamd.model import Change, ChangeView, Integration, LogEntry, NewEvent, RejectedEvent
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.sinks.webhook import WebhookTarget
from eventstreamd.storage import lmdb_store
from eventstreamd.storage.base import (
    IntegrationExists,
    IntegrationLimitReached,
    IntegrationMissing,
    StoreFormatError,
    StoreFull,
)
from eventstreamd.storage.counts import BUCKET
from eventstreamd.storage.lmdb_store import LmdbStore, now_ms
from eventstreamd.storage.records import FORMAT, u64
from tests.helpers.store import decoded, held, new_event, seed_format1


def ev(i: int, size: int = 10) -> NewEvent:
    return new_event(f"id-{i}", {"i": i, "pad": "x" * size}, tenant="t1")


def hook(integration_id: str = "a", incarnation: str = "inc-1") -> Integration:
    return Integration(id=integration_id, type="permanent", status="running",
                       target=WebhookTarget("http://127.0.0.1:9/x"), incarnation=incarnation,
                       created_at="2024-01-01T00:00:00.000Z")


LOG = LogEntry("2024-01-01T00:00:00.000Z", "integration_created", "test")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LmdbStore]:
    async with held(LmdbStore(tmp_path / "data", map_size=64 * 1024 * 1024, log_entries=3,
                              rejected_events=2, targets=SINK_TYPES)) as s:
        yield s


async def test_data_dir_is_private(store: LmdbStore) -> None:
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.data_dir / "lmdb").st_mode) == 0o700


async def test_append_assigns_contiguous_sequences(store: LmdbStore) -> None:
    assert await store.append([ev(0), ev(1)]) == (1, 2)
    assert await store.append([ev(2)]) == (3, 3)
    assert store.head == 3
    events = await store.read_events(1, 10)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].id == "id-0" and decoded(events[0])["payload"]["i"] == 0
    assert events[0].tenant == "t1" and events[0].entity == "order"
    assert events[0].body == ev(0).body  # the delivery body, byte for byte


async def test_concurrent_publishers_share_commits(store: LmdbStore) -> None:
    before = store.writer.stats.commits
    results = await asyncio.gather(*(store.append([ev(i)]) for i in range(200)))
    commits = store.writer.stats.commits - before
    assert sorted(r[0] for r in results) == list(range(1, 201))
    # 200 waiting appends must share transactions; one commit each would be 200.
    assert commits < 50, commits


async def test_reads_are_bounded_batches(store: LmdbStore) -> None:
    await store.append([ev(i) for i in range(1000)])
    seen, position, batches = [], 1, 0
    while batches < 100:
        batch = await store.read_events(position, 128)
        if not batch:
            break
        assert len(batch) <= 128
        seen += [e.seq for e in batch]
        position = batch[-1].seq + 1
        batches += 1
    assert seen == list(range(1, 1001)) and batches == 8
    # ... by bytes too, but never fewer than one event.
    assert len(await store.read_events(1, 1000, max_bytes=1)) == 1


async def test_time_lookup(store: LmdbStore) -> None:
    marks = []
    for i in range(5):
        marks.append(now_ms())
        await store.append([ev(10 * i + j) for j in range(10)])
        await anyio.sleep(0.005)
    for i, mark in enumerate(marks):
        seq = await store.seq_at_or_after(mark)
        assert (await store.read_events(seq, 1))[0].ingested_at >= mark
        assert seq <= 10 * i + 1  # never skips an event ingested at/after the mark
    assert await store.seq_at_or_after(0) == 1
    assert await store.seq_at_or_after(now_ms() + 60_000) == store.head + 1


async def test_wait_for_head(store: LmdbStore) -> None:
    async def later() -> None:
        await anyio.sleep(0.05)
        await store.append([ev(1)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        assert await store.wait_for_head(0, max_wait=10) == 1
    assert await store.wait_for_head(5, max_wait=0.01) == 1  # times out, returns head


async def test_retention_prunes_in_chunks(store: LmdbStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_store, "PRUNE_CHUNK", 1000)
    await store.append([ev(i) for i in range(2500)])
    await anyio.sleep(0.3)
    await store.append([ev(9999)])
    old_head = store.head
    before = store.writer.stats.commits
    # Retention of 150ms: the first 2500 are older, the newest is not.
    assert await prune_once(store, retention_s=0.15) == 2500
    assert store.writer.stats.commits - before >= 3  # chunked, not one huge transaction
    stats = await store.stats()
    assert (stats.first_seq, stats.events, stats.head) == (old_head, 1, old_head)
    assert await store.append([ev(1)]) == (old_head + 1, old_head + 1)  # seqs never reused


async def test_logs_and_rejected_keep_newest(store: LmdbStore) -> None:
    await store.create_integration(hook(), cursor=1, limit=10, log=LOG)
    fence = hook().fence()
    for i in range(5):
        assert await store.add_log(fence, LogEntry("t", "act", f"r{i}"))
    assert [e.reason for e in await store.list_logs("a", 10)] == ["r4", "r3", "r2"]
    assert [e.reason for e in await store.list_logs("a", 2)] == ["r4", "r3"]

    def rejected(i: int) -> RejectedEvent:
        return RejectedEvent(id=f"{i:036d}", created_at="t", seq=i, event_id="e",
                             reason="400", body=b"{}")

    for i in range(3):
        assert await store.add_rejected(fence, rejected(i), LogEntry("t", "event_rejected", "x"))
    assert await store.count_rejected("a") == 2 and await store.count_rejected("b") == 0
    assert [e.seq for e in await store.list_rejected("a")] == [2, 1]
    assert (await store.list_logs("a", 1))[0].action == "rejected_event_dropped"
    # The same id again replaces rather than duplicates.
    assert await store.add_rejected(fence, rejected(1), LogEntry("t", "event_rejected", "x"))
    assert [e.seq for e in await store.list_rejected("a")] == [1, 2]
    assert await store.delete_rejected("a", f"{2:036d}")
    assert [e.seq for e in await store.list_rejected("a")] == [1]
    assert not await store.delete_rejected("a", f"{2:036d}")


async def test_writes_are_fenced_by_incarnation(store: LmdbStore) -> None:
    old = hook(incarnation="old")
    await store.create_integration(old, cursor=1, limit=10, log=LOG)
    assert await store.set_cursor(old.fence(), 5)
    assert await store.delete_integration("a")
    new = hook(incarnation="new")
    await store.create_integration(new, cursor=1, limit=10, log=LOG)
    # Whatever the sink of the deleted integration still writes lands nowhere.
    assert not await store.set_cursor(old.fence(), 99)
    assert not await store.put_sink_state(old.fence(), {"x": 1})
    assert not await store.add_log(old.fence(), LogEntry("t", "a", "late"))
    assert not await store.resolve_rejected(old.fence(), None, LogEntry("t", "a", "late"))
    assert await store.get_cursor("a") == 1 and await store.get_sink_state("a") is None
    assert [e.reason for e in await store.list_logs("a", 10)] == ["test"]
    # Deleting "the old one" does not delete the new one either.
    assert not await store.delete_integration("a", incarnation="old")
    assert await store.get_integration("a") == new


async def test_create_checks_exist_and_limit_atomically(store: LmdbStore) -> None:
    results = await asyncio.gather(
        *(store.create_integration(hook(f"i{n % 12}", f"x{n}"), cursor=1, limit=10, log=LOG)
          for n in range(24)), return_exceptions=True)
    created = [r for r in results if r is None]
    assert len(created) == 10 and len(await store.list_integrations()) == 10
    assert {type(r) for r in results if r is not None} <= {IntegrationExists,
                                                           IntegrationLimitReached}


async def test_transitions_are_atomic_and_may_refuse(store: LmdbStore) -> None:
    await store.create_integration(hook(), cursor=3, limit=10, log=LOG)
    await store.append([ev(i) for i in range(4)])

    def stop(current: Integration, view: object) -> Change:
        if current.status == "stopped":
            raise ValueError("already stopped")
        return Change(dataclasses.replace(current, status="stopped"), cursor=9,
                      logs=(LogEntry("t", "integration_stopped", "x"),))

    seen: list[tuple[int | None, int]] = []

    def look(current: Integration, view: ChangeView) -> Change:
        seen.append((view.cursor, view.head))
        return Change(current)

    await store.change_integration("a", look)
    assert seen == [(3, 4)]
    outcomes = await asyncio.gather(store.change_integration("a", stop),
                                    store.change_integration("a", stop),
                                    return_exceptions=True)
    assert sum(isinstance(o, Integration) for o in outcomes) == 1
    assert sum(isinstance(o, ValueError) for o in outcomes) == 1
    stopped = await store.get_integration("a")
    assert stopped is not None and stopped.status == "stopped"
    assert await store.get_cursor("a") == 9
    with pytest.raises(IntegrationMissing):
        await store.change_integration("nope", look)


async def test_full_map_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged = 0
    async with LmdbStore(data, map_size=1024 * 1024) as small:
        with pytest.raises(StoreFull):
            for _ in range(1000):  # bounded: 1 MiB fills long before 1000 x 10 KiB
                await small.append([ev(acknowledged, size=10_000)])
                acknowledged += 1
        assert 0 < acknowledged < 1000
        # Reads are intact after the failure.
        assert [e.seq for e in await small.read_events(1, 10_000, 1 << 30)] == \
            list(range(1, acknowledged + 1))
    async with LmdbStore(data, map_size=8 * 1024 * 1024) as grown:
        assert grown.head == acknowledged
        first, _ = await grown.append([ev(1, size=10_000)])
        assert first == acknowledged + 1


async def test_one_failing_job_does_not_fail_its_neighbours(store: LmdbStore) -> None:
    def boom(txn: object) -> None:
        raise ValueError("boom")

    results = await asyncio.gather(
        store.append([ev(1)]), store.writer.submit(boom), store.append([ev(2)]),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    first, third = results[0], results[2]
    assert isinstance(first, tuple) and isinstance(third, tuple)
    assert sorted([first[0], third[0]]) == [1, 2]
    assert (await store.stats()).events == 2


async def test_a_format_1_log_is_migrated_when_opened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deep: object = "leaf"
    for _ in range(300):
        deep = {"d": deep}
    seed_format1(data, [("e1", "acme", "order.created", {"n": 1}),
                        ("e2", "acme", "order.created", {"deep": deep}),
                        ("e3", "beta", "return.processed", {"n": 3})])
    async with LmdbStore(data, map_size=64 * 1024 * 1024) as store:
        events = await store.read_events(1, 10)
        assert [(e.seq, e.id, e.tenant, e.name) for e in events] == [
            (1, "e1", "acme", "order.created"), (2, "e2", "acme", "order.created"),
            (3, "e3", "beta", "return.processed")]
        assert events[0].body == (b'{"tenant":"acme","name":"order.created",'
                                  b'"published_at":"2024-05-01T00:00:00.000Z",'
                                  b'"payload":{"n":1}}')
        # What the delivery encoder refuses is kept, marked with why no sink can send it.
        assert events[1].problem is not None and "encoded" in events[1].problem
        assert events[0].problem is None and events[2].problem is None
        assert store.head == 3 and (await store.append([ev(4)])) == (4, 4)
    async with LmdbStore(data, map_size=64 * 1024 * 1024) as again:  # opens as format 2
        assert [e.id for e in await again.read_events(1, 10)] == ["e1", "e2", "e3", "id-4"]


async def test_a_newer_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with LmdbStore(data, map_size=1024 * 1024) as store:
        await store.writer.submit(lambda txn: txn.put(b"format", u64(FORMAT + 1),
                                                      db=store._meta))
    with pytest.raises(StoreFormatError, match="newer eventstreamd"):
        LmdbStore(data, map_size=1024 * 1024)


async def test_name_counts_follow_retention_and_an_upgraded_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "data"
    names = ("order.created", "order.paid")

    def named(i: int) -> NewEvent:
        return new_event(f"id-{i}", {}, name=names[i % 2])

    def paid(name: str) -> bool:
        return name == "order.paid"

    async with held(LmdbStore(path, map_size=64 * 1024 * 1024)) as store:
        await store.append([named(i) for i in range(3 * BUCKET)])
        await anyio.sleep(0.01)
        cutoff = now_ms()
        await anyio.sleep(0.01)
        await store.append([named(i) for i in range(3 * BUCKET, 3 * BUCKET + 100)])
        assert await store.count_events(1, store.head + 1, paid) == (3 * BUCKET + 100) // 2
        # Up to the head, the head's bucket is counted from its counts too: nothing is read.
        with mock.patch.object(LmdbStore, "_txn_count_read",
                               side_effect=AssertionError("events were read")):
            assert await store.count_events(1, store.head + 1, paid) == \
                (3 * BUCKET + 100) // 2
            assert await store.count_events(3 * BUCKET + 1, store.head + 1, paid) == 50
        # Short of the head, that bucket is an edge: read.
        assert await store.count_events(3 * BUCKET + 1, store.head, paid) == 49
        await store.prune(cutoff)  # the first three buckets go, and their counts
        with store.env.begin(db=store._name_counts) as txn:
            assert {key[:8] for key, _ in txn.cursor()} == {u64(3)}
        assert await store.count_events(1, store.head + 1, paid) == 50
        assert await store.count_events(1, store.head + 1) == 100
    # A data dir from before the counts: its events are read (names only) when counted.
    async with held(LmdbStore(path, map_size=64 * 1024 * 1024)) as store:
        with store.env.begin(write=True) as txn:
            txn.drop(store._name_counts, delete=False)
            txn.delete(b"counted_from", db=store._meta)
    async with held(LmdbStore(path, map_size=64 * 1024 * 1024)) as store:
        head = store.head
        await store.append([named(i) for i in range(2 * BUCKET)])
        assert await store.count_events(1, store.head + 1, paid) == 50 + BUCKET
        assert await store.count_events(head + 1, store.head + 1, paid) == BUCKET
