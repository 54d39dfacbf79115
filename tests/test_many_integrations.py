"""Many integrations on one daemon: memory does not grow with their number, a sink far
behind holds nobody back, filtered-out sinks sleep and save their cursor lazily, and
status counts their lag from where they really stand. No timing thresholds: counts,
bytes and what arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from eventstreamd.model import EventFilterSpec, Fence
from eventstreamd.sinks.webhook import WebhookTarget
from tests.helpers.api import ApiClient
from tests.helpers.control import status
from tests.helpers.daemon import Factory
from tests.helpers.inprocess import Wired, wired
from tests.helpers.receiver import Received, Receiver
from tests.helpers.store import new_event, opened
from tests.helpers.wait import eventually

MIB = 1024 * 1024
NO_MATCH = {"event_filter": ["return.processed"]}
PAST = "2000-01-01T00:00:00Z"
FAST = {"webhook": {"timeout": "2s", "retry_initial": "50ms", "retry_max": "200ms"}}


def big_events(count: int, start: int = 0, size: int = 16 * 1024) -> list[dict[str, Any]]:
    return [{"name": "order.created", "payload": {"i": i, "pad": "x" * size}}
            for i in range(start, start + count)]


def memory_mib(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


async def create_many(api: ApiClient, count: int, url: str, prefix: str = "quiet") -> None:
    async def one(k: int) -> None:
        await api.webhook(f"{prefix}{k:04d}", url, filter_conditions=NO_MATCH)

    for first in range(0, count, 25):
        await asyncio.gather(*(one(k) for k in range(first, min(count, first + 25))))


async def running_sinks(d: Any, count: int) -> None:
    """Until `count` sinks run (each shows live counters in status)."""
    await eventually(lambda: status(d), lambda s: sum(
        1 for i in s["integrations"] if i["delivered"] is not None) == count,
        within=60, what=f"{count} sinks running")


# ------------------------------------------------------------ a real daemon


async def test_memory_stays_bounded_with_hundreds_of_integrations(
        daemon_factory: Factory) -> None:
    """300 integrations, all but one filtered out, while 8 MiB of 16 KiB events flow in
    requests of 2 MiB. A sink that read (and kept) a batch of its own per commit would
    take 300 x 2 MiB at the peak; the shared feed reads each batch once."""
    n = 300
    d = daemon_factory({"limits": {"max_integrations": n + 5}})
    receiver = await Receiver().start()
    try:
        async with ApiClient(d) as api:
            await api.webhook("match", receiver.url)
            await create_many(api, n - 1, receiver.url)
            await running_sinks(d, n)
            before = memory_mib(d.pid)["VmRSS"]
            for request in range(4):
                await api.publish(big_events(128, start=128 * request))
            await eventually(lambda: len(receiver.delivered_keys) == 512, within=120)
        grown = memory_mib(d.pid)["VmHWM"] - before
        assert len(receiver.delivered) == 512  # the quiet ones got nothing
        assert grown < 200, f"peak RSS grew by {grown:.0f} MiB"
    finally:
        await receiver.close()


async def test_a_sink_far_behind_holds_back_neither_the_head_nor_another_catching_up(
        daemon_factory: Factory) -> None:
    """A sink whose receiver does not answer, catching up a backlog under a read budget
    that fits one of its reads: new events still reach a sink at the head, and a second
    sink catching up the same backlog gets all of it, while the stuck one has delivered
    nothing. Then the stuck receiver answers and its sink delivers everything."""
    d = daemon_factory({**FAST, "delivery": {"tail_cache": "64KiB", "read_budget": "256KiB"}})
    release = anyio.Event()

    async def stuck(received: Received, attempt: int) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    stuck_rx, behind_rx, head_rx = (await Receiver(stuck).start(), await Receiver().start(),
                                    await Receiver().start())
    try:
        async with ApiClient(d) as api:
            await api.publish(big_events(60))  # ~1 MiB: far more than the tail keeps
            await api.webhook("head", head_rx.url)  # waits at the head from here on
            await running_sinks(d, 1)
            await api.webhook("stuck", stuck_rx.url, starts_at=PAST)
            await eventually(lambda: len(stuck_rx.requests), lambda n: n == 8,
                             what="the stuck sink's window full")
            await api.webhook("behind", behind_rx.url, starts_at=PAST)
            await api.publish(big_events(20, start=60))
            await eventually(lambda: len(head_rx.delivered_keys) == 20, within=60)
            await eventually(lambda: len(behind_rx.delivered_keys) == 80, within=60)
            assert not stuck_rx.delivered and len(stuck_rx.requests) == 8
            release.set()
            await eventually(lambda: len(stuck_rx.delivered_keys) == 80, within=60)
    finally:
        release.set()
        for rx in (stuck_rx, behind_rx, head_rx):
            await rx.close()


@pytest.mark.parametrize("backend", ["lmdb", "jetstream"])
async def test_ten_matching_among_many_get_everything(daemon_factory: Factory) -> None:
    """10 matching integrations among 200 get every event, the others none; afterwards
    status shows no lag for any of them, the filtered-out ones included, although their
    cursors are saved only lazily. On JetStream the head moves by the stream's wakes."""
    d = daemon_factory({"limits": {"max_integrations": 205}})
    matching = [await Receiver().start() for _ in range(10)]
    quiet = await Receiver().start()
    try:
        async with ApiClient(d) as api:
            for k, rx in enumerate(matching):
                await api.webhook(f"match{k}", rx.url,
                                  filter_conditions={"entity_filter": ["order"]})
            for k in range(190):  # one at a time: JetStream refuses concurrent creates
                await api.webhook(f"quiet{k:04d}", quiet.url, filter_conditions=NO_MATCH)
            await running_sinks(d, 200)
            for start in range(0, 300, 100):
                await api.publish([{"name": "order.created", "payload": {"i": i}}
                                   for i in range(start, start + 100)])
            await api.publish([{"name": "invoice.paid", "payload": {}}])  # nobody's
            for rx in matching:
                def all_there(rx: Receiver = rx) -> bool:
                    return len(rx.delivered_keys) == 300

                await eventually(all_there, within=60)
        snapshot = await eventually(
            lambda: status(d), lambda s: all(i["lag_events"] == 0 for i in s["integrations"]),
            what="no lag anywhere")
        assert not quiet.requests
        assert all(len(rx.delivered) == 300 for rx in matching)
        head = snapshot["head"]
        assert head == 301
        assert d.stop() == 0  # a graceful stop saves what skipping passed, lazy or not
        async with opened(d) as store:
            cursors = {await store.get_cursor(f"quiet{k:04d}") for k in range(190)}
        assert cursors == {head + 1}
    finally:
        for rx in (*matching, quiet):
            await rx.close()


# --------------------------------------------------------------- in-process


@asynccontextmanager
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[Wired, dict[str, int]]]:
    """The daemon wired in-process, with the store's cursor writes counted per
    integration."""
    async with wired(tmp_path) as h:
        writes: dict[str, int] = {}
        set_cursor = h.store.set_cursor

        async def counted(fence: Fence, next_seq: int) -> bool:
            writes[fence.integration_id] = writes.get(fence.integration_id, 0) + 1
            return bool(await set_cursor(fence, next_seq))

        h.store.set_cursor = counted  # counts, then writes
        yield h, writes


async def test_filtered_out_sinks_sleep_save_lazily_and_show_no_lag(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    try:
        async with in_process(tmp_path) as (h, cursor_writes):
            await h.service.register("match", "permanent", WebhookTarget(receiver.url))
            quiet_ids = [f"quiet{k}" for k in range(50)]
            for integration_id in quiet_ids:
                await h.service.register(integration_id, "permanent",
                                         WebhookTarget(receiver.url),
                                         filter_spec=EventFilterSpec(("return.processed",)))
            feed = h.supervisor.feed
            await eventually(lambda: feed.parked, lambda n: n == 51,
                             what="every sink waiting at the head")
            loops = {i: h.supervisor.handles[i].loop for i in ["match", *quiet_ids]}
            rounds = {i: loop.rounds for i, loop in loops.items() if loop is not None}
            await anyio.sleep(1.0)  # a quiet second: nobody wakes
            assert {i: loop.rounds for i, loop in loops.items() if loop} == rounds
            assert feed.stats.reads == 0 and feed.stats.wakeups == 0

            for i in range(20):  # 20 commits only "match" wants
                await h.store.append([new_event(f"e{i}", {"i": i})])
                def arrived(count: int = i + 1) -> bool:
                    return len(receiver.delivered) == count

                await eventually(arrived)
            assert feed.stats.wakeups == 20  # the matching sink, once per commit
            assert all(loop.rounds == rounds[i] for i in quiet_ids  # never woken
                       if (loop := loops[i]) is not None)
            assert not any(cursor_writes.get(i) for i in quiet_ids)  # nothing saved yet

            snapshot = await h.sampler.snapshot()
            rows = {row["id"]: row for row in snapshot["integrations"]}
            assert all(rows[i]["lag_events"] == 0 and rows[i]["cursor"] == 1
                       for i in quiet_ids), rows["quiet0"]

            await h.service.stop("quiet0")  # a stop saves what skipping passed
            await eventually(lambda: h.store.get_cursor("quiet0"), lambda c: c == 21,
                             what="the skip-only cursor saved at stop")
            assert cursor_writes["quiet0"] == 1
    finally:
        await receiver.close()
