"""The `Store` contract, in-process, on every backend: what LMDB gets from one transaction
JetStream must get from compare-and-set, so the concurrent cases matter most here."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from eventstreamd.config import Config
from eventstreamd.model import (
    Change,
    ChangeView,
    Integration,
    LogEntry,
    Replay,
    ReplayProgress,
    RetryOutcome,
)
from eventstreamd.storage.base import (
    IntegrationExists,
    IntegrationLimitReached,
    IntegrationMissing,
    Store,
)
from eventstreamd.storage.counts import BUCKET
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.store import CREATED, limited, new_event, rejected_n, stored_hook

BACKENDS = EVERY_BACKEND


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    async with limited(store_config, log_entries=3, rejected_events=2) as s:
        yield s


async def test_appends_are_contiguous_and_concurrent_ones_all_land(store: Store) -> None:
    assert await store.append([new_event("a", {}), new_event("b", {})]) == (1, 2)
    spans = await asyncio.gather(*(store.append([new_event(f"c{i}", {"i": i})] * (i % 3 + 1))
                                   for i in range(60)))
    seqs = sorted(seq for first, last in spans for seq in range(first, last + 1))
    assert seqs == list(range(3, 3 + sum(i % 3 + 1 for i in range(60))))
    assert store.head == seqs[-1]
    events = await store.read_events(1, 1000)
    assert [e.seq for e in events] == list(range(1, store.head + 1))
    times = [e.ingested_at for e in events]
    assert times == sorted(times)  # non-decreasing along the log
    assert await store.last_ingested_ms() == times[-1]
    # The same client id twice is stored twice (ids are the client's business).
    first, _ = await store.append([new_event("dup", {}), new_event("dup", {})])
    assert [e.id for e in await store.read_events(first, 10)] == ["dup", "dup"]


async def test_reads_are_bounded_and_time_lookup_finds_the_first(store: Store) -> None:
    await store.append([new_event(f"e{i}", {"pad": "x" * 100}) for i in range(50)])
    assert [e.seq for e in await store.read_events(10, 5)] == [10, 11, 12, 13, 14]
    assert len(await store.read_events(1, 100, max_bytes=1)) == 1  # at least one
    assert await store.read_events(51, 10) == []
    events = await store.read_events(1, 100)
    assert await store.seq_at_or_after(events[0].ingested_at) == 1
    assert await store.seq_at_or_after(events[-1].ingested_at + 60_000) == 51
    assert await store.first_seq() == 1


async def test_the_integration_limit_holds_for_concurrent_creators(store: Store) -> None:
    async def create(i: int) -> str:
        try:
            await store.create_integration(stored_hook(f"i{i}", f"inc{i}"), cursor=1, limit=10,
                                           log=CREATED)
        except IntegrationLimitReached:
            return "limit"
        return "created"

    outcomes = await asyncio.gather(*(create(i) for i in range(20)))
    assert outcomes.count("created") == 10 and outcomes.count("limit") == 10
    assert len(await store.list_integrations()) == 10


async def test_one_id_is_created_once_by_concurrent_creators(store: Store) -> None:
    async def create(i: int) -> str:
        try:
            await store.create_integration(stored_hook("same", f"inc{i}"), cursor=1, limit=10,
                                           log=CREATED)
        except IntegrationExists:
            return "exists"
        return "created"

    outcomes = await asyncio.gather(*(create(i) for i in range(8)))
    assert outcomes.count("created") == 1
    [only] = await store.list_integrations()
    assert await store.get_cursor("same") == 1 and len(await store.list_logs("same", 50)) == 1
    assert only.incarnation == f"inc{outcomes.index('created')}"


async def test_concurrent_transitions_lose_no_update(store: Store) -> None:
    await store.create_integration(stored_hook(), cursor=1, limit=10, log=CREATED)
    calls = 0

    def bump(current: Integration, view: ChangeView) -> Change:
        nonlocal calls
        calls += 1
        return Change(dataclasses.replace(current, stopped_at_ms=(current.stopped_at_ms or 0) + 1),
                      logs=(LogEntry("t", "bumped", str(current.stopped_at_ms)),))

    await asyncio.gather(*(store.change_integration("a", bump) for _ in range(12)))
    current = await store.get_integration("a")
    assert current is not None and current.stopped_at_ms == 12
    assert calls >= 12  # a backend with compare-and-set may call the rule again

    def refuse(current: Integration, view: ChangeView) -> Change:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await store.change_integration("a", refuse)
    with pytest.raises(IntegrationMissing):
        await store.change_integration("nope", bump)


async def test_a_transition_sees_cursor_and_head_and_moves_the_cursor(store: Store) -> None:
    await store.append([new_event("e", {})] * 5)
    await store.create_integration(stored_hook(), cursor=2, limit=10, log=CREATED)
    seen = []

    def skip(current: Integration, view: ChangeView) -> Change:
        seen.append((view.cursor, view.head))
        return Change(current, cursor=view.head + 1)

    await store.change_integration("a", skip)
    assert seen[-1] == (2, 5) and await store.get_cursor("a") == 6


async def test_stale_fences_write_nothing(store: Store) -> None:
    old = stored_hook(incarnation="old")
    await store.create_integration(old, cursor=1, limit=10, log=CREATED)
    fence = old.fence()
    assert await store.set_cursor(fence, 5)
    assert await store.put_sink_state(fence, {"k": 1})
    assert await store.add_rejected(fence, rejected_n(1), CREATED)
    assert await store.delete_integration("a", "someone-else") is False
    assert await store.delete_integration("a", "old")
    for write in (store.set_cursor(fence, 9), store.put_sink_state(fence, {"k": 2}),
                  store.add_log(fence, CREATED), store.add_rejected(fence, rejected_n(2), CREATED),
                  store.resolve_rejected(fence, None, CREATED),
                  store.update_rejected(fence, "r-1", RetryOutcome("t", True, "x"), CREATED)):
        assert await write is False
    assert await store.get_cursor("a") is None and await store.get_sink_state("a") is None
    new = stored_hook(incarnation="new")
    await store.create_integration(new, cursor=3, limit=10, log=CREATED)
    for write in (store.set_cursor(fence, 9), store.add_log(fence, CREATED),
                  store.add_rejected(fence, rejected_n(3), CREATED)):
        assert await write is False
    # The successor starts clean: its own cursor, one log line, no rejected events.
    assert await store.get_cursor("a") == 3 and await store.get_sink_state("a") is None
    assert len(await store.list_logs("a", 50)) == 1
    assert await store.list_rejected("a") == [] and await store.count_rejected("a") == 0
    assert await store.set_cursor(new.fence(), 4) and await store.get_cursor("a") == 4


async def test_every_integrations_cursor_and_rejected_count_in_one_read(
        store: Store) -> None:
    """What status reads of all integrations at once agrees with the reads of each, and
    follows every write that changes it (LMDB keeps the counts between reads)."""
    for name in ("a", "b", "c"):
        await store.create_integration(stored_hook(name), cursor=3, limit=10, log=CREATED)
    assert await store.cursors() == {"a": 3, "b": 3, "c": 3}
    assert await store.rejected_counts() == {}
    fence_a, fence_b = stored_hook("a").fence(), stored_hook("b").fence()
    assert await store.set_cursor(fence_b, 9)
    for n in range(3):
        assert await store.add_rejected(fence_a, rejected_n(n), CREATED)
    assert await store.add_rejected(fence_b, rejected_n(7), CREATED)
    assert await store.cursors() == {"a": 3, "b": 9, "c": 3}
    assert await store.rejected_counts() == {"a": 2, "b": 1}  # the newest 2 kept
    assert await store.delete_rejected("a", "r-2")
    assert await store.resolve_rejected(fence_b, "r-7", CREATED)
    assert await store.rejected_counts() == {"a": 1}
    assert await store.add_rejected(fence_b, rejected_n(8), CREATED)
    assert await store.delete_integration("a")
    assert await store.rejected_counts() == {"b": 1}
    assert await store.cursors() == {"b": 9, "c": 3}
    assert {i: await store.count_rejected(i) for i in ("a", "b", "c")} == {"a": 0, "b": 1,
                                                                           "c": 0}


async def test_logs_and_rejected_events_keep_the_newest(store: Store) -> None:
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    fence = integration.fence()
    for i in range(5):
        assert await store.add_log(fence, LogEntry(f"t{i}", "x", f"r{i}"))
    assert [e.reason for e in await store.list_logs("a", 50)] == ["r4", "r3", "r2"]
    assert [e.reason for e in await store.list_logs("a", 1)] == ["r4"]
    for n in range(4):
        assert await store.add_rejected(fence, rejected_n(n), LogEntry("t", "event_rejected",
                                                                     f"rej {n}"))
    assert [r.id for r in await store.list_rejected("a")] == ["r-3", "r-2"]
    assert await store.count_rejected("a") == 2
    actions = [e.action for e in await store.list_logs("a", 3)]
    assert actions == ["rejected_event_dropped", "event_rejected", "rejected_event_dropped"]
    # The same id again replaces its entry (and moves it to the front).
    assert await store.add_rejected(fence, dataclasses.replace(rejected_n(2), reason="again"),
                                    CREATED)
    assert [(r.id, r.reason) for r in await store.list_rejected("a")] == \
        [("r-2", "again"), ("r-3", "Bad Request")]
    got = await store.get_rejected("a", "r-3")
    assert got is not None and got.body == b'{"n":3}' and got.status == 400
    assert await store.get_rejected("a", "r-0") is None
    assert await store.get_rejected("a", "../x.>") is None
    assert await store.delete_rejected("a", "r-3") and not await store.delete_rejected("a",
                                                                                       "r-3")
    # A failed retry updates its entry where it stands.
    assert await store.add_rejected(fence, dataclasses.replace(rejected_n(2), attempts=1),
                                    CREATED)
    assert await store.add_rejected(fence, rejected_n(4), CREATED)
    assert await store.update_rejected(fence, "r-2", RetryOutcome("t", True, "nope", 400),
                                       LogEntry("t", "rejected_event_retry_failed", "nope"))
    assert [(r.id, r.attempts, r.reason) for r in await store.list_rejected("a")] == \
        [("r-4", None, "Bad Request"), ("r-2", 2, "nope")]
    assert (await store.list_logs("a", 1))[0].action == "rejected_event_retry_failed"
    assert await store.delete_rejected("a", "r-4")
    # One deleted meanwhile stays deleted; the log entry is written all the same.
    assert await store.update_rejected(fence, "r-4", RetryOutcome("t", True, "x"),
                                       LogEntry("t", "x", "gone"))
    assert [r.id for r in await store.list_rejected("a")] == ["r-2"]
    assert await store.get_rejected("a", "r-4") is None
    assert (await store.list_logs("a", 1))[0].reason == "gone"
    assert await store.resolve_rejected(fence, "r-2", LogEntry("t", "rejected_event_retried",
                                                               "ok"))
    assert await store.list_rejected("a") == [] and await store.count_rejected("a") == 0
    assert (await store.list_logs("a", 1))[0].action == "rejected_event_retried"


async def test_delete_takes_everything_of_the_integration(store: Store) -> None:
    keep, doomed = stored_hook("keep", "k"), stored_hook("doomed", "d")
    for integration in (keep, doomed):
        await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
        assert await store.add_rejected(integration.fence(), rejected_n(1), CREATED)
        assert await store.put_sink_state(integration.fence(), {"s": integration.id})
    assert await store.delete_integration("doomed")
    assert await store.get_integration("doomed") is None
    assert await store.list_logs("doomed", 50) == [] and await store.list_rejected("doomed") == []
    assert await store.get_sink_state("doomed") is None
    assert await store.delete_integration("doomed") is False
    assert [i.id for i in await store.list_integrations()] == ["keep"]
    assert await store.get_sink_state("keep") == {"s": "keep"}
    assert len(await store.list_rejected("keep")) == 1


# ------------------------------------------------------------------- replays


def _replay(replay_id: str, **fields: object) -> Replay:
    return Replay(id=replay_id, starts_at="2024-01-01T00:00:00.000Z",
                  ends_at="2024-01-02T00:00:00.000Z", start_seq=1, end_seq=10, events=9,
                  created_at="2024-01-02T00:00:00.000Z", **fields)  # type: ignore[arg-type]


async def test_counts_by_name_match_the_log_across_buckets(store: Store) -> None:
    names = ("order.created", "order.paid", "return.opened", "refund.made")
    total = 2 * BUCKET + 300
    for start in range(0, total, 1000):  # requests of 1,000 cross bucket bounds
        await store.append([new_event(f"e{i}", {}, name=names[(i * i) % 4])
                            for i in range(start, min(total, start + 1000))])
    events = await store.read_events(1, total, 1 << 30)

    def brute(low: int, high: int, matches: Callable[[str], bool] | None) -> int:
        return sum(1 for e in events if low <= e.seq < high
                   and (matches is None or matches(e.name)))

    orders = {"order.created", "order.paid"}
    predicates: list[Callable[[str], bool] | None] = [
        None, orders.__contains__, lambda name: name.startswith("return."),
        lambda name: False]
    ranges = [(1, total + 1), (1, BUCKET + 1), (BUCKET + 1, 2 * BUCKET + 1),
              (17, 2 * BUCKET + 5), (BUCKET - 3, BUCKET + 3), (500, 501), (9, 9),
              (total - 10, total + 500), (total + 5, total + 9), (2 * BUCKET + 1, total + 1),
              (2 * BUCKET + 1, total)]
    for low, high in ranges:
        for matches in predicates:
            assert await store.count_events(low, high, matches) == brute(low, high, matches), \
                (low, high)
    # Asked again (JetStream: from what the first counts kept), the same answers.
    assert await store.count_events(1, total + 1, orders.__contains__) == \
        brute(1, total + 1, orders.__contains__)


async def test_replay_progress_and_state_are_fenced_and_go_with_their_replay(
        store: Store) -> None:
    integration = dataclasses.replace(stored_hook(), replays=(_replay("r1"), _replay("r2")))
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    fence = integration.fence()
    assert await store.get_replay_progress("a", "r1") is None
    assert await store.list_replay_progress("a") == {}
    assert await store.set_replay_progress(fence, "r1", ReplayProgress(5, 3))
    assert await store.set_replay_progress(fence, "r1", ReplayProgress(7, 4))
    assert await store.set_replay_progress(fence, "r2", ReplayProgress(2, 1))
    assert await store.put_replay_state(fence, "r1", {"pending": [1, 2]})
    assert await store.get_replay_progress("a", "r1") == ReplayProgress(7, 4)
    assert await store.list_replay_progress("a") == {"r1": ReplayProgress(7, 4),
                                                     "r2": ReplayProgress(2, 1)}
    assert await store.get_replay_state("a", "r1") == {"pending": [1, 2]}
    assert await store.get_replay_state("a", "r2") is None
    got = await store.get_integration("a")
    assert got is not None and got.replays == integration.replays

    def drop_first(current: Integration, view: ChangeView) -> Change:
        return Change(dataclasses.replace(current, replays=current.replays[1:]),
                      dropped_replays=("r1",))

    changed = await store.change_integration("a", drop_first)
    assert [r.id for r in changed.replays] == ["r2"]
    assert await store.get_replay_progress("a", "r1") is None
    assert await store.get_replay_state("a", "r1") is None
    assert await store.list_replay_progress("a") == {"r2": ReplayProgress(2, 1)}
    stale = dataclasses.replace(fence, incarnation="someone-else")
    assert await store.set_replay_progress(stale, "r2", ReplayProgress(9, 9)) is False
    assert await store.put_replay_state(stale, "r2", {"x": 1}) is False
    assert await store.get_replay_progress("a", "r2") == ReplayProgress(2, 1)
    assert await store.delete_integration("a")
    assert await store.get_replay_progress("a", "r2") is None
    await store.create_integration(stored_hook(incarnation="new"), cursor=1, limit=10,
                                   log=CREATED)
    assert await store.list_replay_progress("a") == {}
    assert await store.set_replay_progress(fence, "r2", ReplayProgress(3, 3)) is False
