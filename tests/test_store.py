"""The LMDB store in-process: group commit, bounded reads, time lookup, retention, full map."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from eventstreamd.daemon.retention import prune_once
from eventstreamd.storage.lmdb_store import LmdbStore, StoreFull, now_ms
from eventstreamd.storage.records import pack_event


def ev(i: int, size: int = 10) -> object:
    return pack_event(f"id-{i}", "t1", "order.created", "2024-01-01T00:00:00.000Z",
                      {"i": i, "pad": "x" * size})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LmdbStore]:
    s = LmdbStore(tmp_path / "data", map_size=64 * 1024 * 1024, log_entries=3, rejected_events=2)
    # A plain task, not a task group: pytest runs fixture setup and teardown in
    # different tasks, which an anyio cancel scope does not allow.
    writer = asyncio.create_task(s.writer.run())
    await asyncio.sleep(0)
    yield s
    await s.writer.close()
    await writer
    s.close()


async def test_data_dir_is_private(store: LmdbStore) -> None:
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700


async def test_append_assigns_contiguous_sequences(store: LmdbStore) -> None:
    assert await store.append([ev(0), ev(1)]) == (1, 2)
    assert await store.append([ev(2)]) == (3, 3)
    assert store.head == 3
    events = store.read_events(1, 10)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].id == "id-0" and events[0].payload["i"] == 0 and events[0].tenant == "t1"
    assert events[0].entity == "order"


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
        batch = store.read_events(position, 128)
        if not batch:
            break
        assert len(batch) <= 128
        seen += [e.seq for e in batch]
        position = batch[-1].seq + 1
        batches += 1
    assert seen == list(range(1, 1001)) and batches == 8


async def test_time_lookup(store: LmdbStore) -> None:
    marks = []
    for i in range(5):
        marks.append(now_ms())
        await store.append([ev(10 * i + j) for j in range(10)])
        await anyio.sleep(0.005)
    for i, mark in enumerate(marks):
        seq = store.seq_at_or_after(mark)
        assert store.read_events(seq, 1)[0].ingested_at >= mark
        assert seq <= 10 * i + 1  # never skips an event ingested at/after the mark
    assert store.seq_at_or_after(0) == 1
    assert store.seq_at_or_after(now_ms() + 60_000) == store.head + 1


async def test_wait_for_head(store: LmdbStore) -> None:
    async def later() -> None:
        await anyio.sleep(0.05)
        await store.append([ev(1)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        assert await store.wait_for_head(0, max_wait=10) == 1
    assert await store.wait_for_head(5, max_wait=0.01) == 1  # times out, returns head


async def test_retention_prunes_in_chunks(store: LmdbStore) -> None:
    await store.append([ev(i) for i in range(2500)])
    await anyio.sleep(0.3)
    await store.append([ev(9999)])
    old_head = store.head
    before = store.writer.stats.commits
    # Retention of 150ms: the first 2500 are older, the newest is not.
    pruned = await prune_once(store, retention_s=0.15, chunk=1000)
    assert pruned == 2500
    assert store.writer.stats.commits - before >= 3  # chunked, not one huge transaction
    assert store.first_seq() == old_head and store.count_events() == 1
    assert await store.append([ev(1)]) == (old_head + 1, old_head + 1)  # seqs never reused


async def test_logs_and_rejected_keep_newest(store: LmdbStore) -> None:
    for i in range(5):
        await store.write(lambda txn, i=i: store.txn_add_log(txn, "a", "act", f"r{i}", "t"))
    assert [e["reason"] for e in store.list_logs("a")] == ["r4", "r3", "r2"]
    pushed = []
    for i in range(3):
        entry = {"id": f"{i:036d}", "created_at": "t", "seq": i, "event_id": "e", "event": {}}
        pushed += await store.write(lambda txn, e=entry: store.txn_add_rejected(txn, "a", e))
    assert [p["seq"] for p in pushed] == [0]
    assert store.count_rejected("a") == 2 and store.count_rejected("b") == 0
    assert [e["seq"] for e in store.list_rejected("a")] == [2, 1]
    # The same id again replaces rather than duplicates.
    again = {"id": f"{1:036d}", "created_at": "t2", "seq": 1, "event_id": "e", "event": {}}
    await store.write(lambda txn: store.txn_add_rejected(txn, "a", again))
    assert [e["seq"] for e in store.list_rejected("a")] == [1, 2]
    assert await store.write(lambda txn: store.txn_delete_rejected(txn, "a", f"{2:036d}"))
    assert [e["seq"] for e in store.list_rejected("a")] == [1]


async def test_full_map_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    small = LmdbStore(data, map_size=1024 * 1024)
    acknowledged = 0
    async with anyio.create_task_group() as tg:
        await tg.start(small.writer.run)
        with pytest.raises(StoreFull):
            for _ in range(1000):  # bounded: 1 MiB fills long before 1000 x 10 KiB
                await small.append([ev(acknowledged, size=10_000)])
                acknowledged += 1
        assert 0 < acknowledged < 1000
        # A small write after the failure still works or fails cleanly; reads are intact.
        assert [e.seq for e in small.read_events(1, 10_000)] == list(range(1, acknowledged + 1))
        await small.writer.close()
    small.close()

    grown = LmdbStore(data, map_size=8 * 1024 * 1024)
    async with anyio.create_task_group() as tg:
        await tg.start(grown.writer.run)
        assert grown.head == acknowledged
        first, _ = await grown.append([ev(1, size=10_000)])
        assert first == acknowledged + 1
        await grown.writer.close()
    grown.close()


async def test_one_failing_job_does_not_fail_its_neighbours(store: LmdbStore) -> None:
    def boom(txn: object) -> None:
        raise ValueError("boom")

    results = await asyncio.gather(
        store.append([ev(1)]), store.write(boom), store.append([ev(2)]), return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert sorted([results[0][0], results[2][0]]) == [1, 2]
    assert store.count_events() == 2
