"""The sink loop and supervisor in-process: restart window (injectable clock), pruning, crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from receiver import Receiver

from eventstreamd.config import Config, LimitsConfig, WebhookConfig
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.retention import prune_once
from eventstreamd.daemon.supervisor import Supervisor
from eventstreamd.sinks.filters import EventFilter
from eventstreamd.sinks.loop import resume_position
from eventstreamd.sinks.window import DeliveryWindow
from eventstreamd.storage.lmdb_store import LmdbStore
from eventstreamd.storage.records import StoredEvent, pack_event

DAY = 86_400.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_resume_position_rule() -> None:
    window_ms = int(30 * DAY * 1000)
    now = 100 * int(DAY * 1000)
    # Never stopped (e.g. daemon restart): resume from the cursor.
    assert resume_position(5, 50, None, now, window_ms) == (5, 0)
    # Stopped for a day: resume.
    assert resume_position(5, 50, now - int(DAY * 1000), now, window_ms) == (5, 0)
    # Stopped for 31 days: skip to just past the head, counting what is skipped.
    assert resume_position(5, 50, now - int(31 * DAY * 1000), now, window_ms) == (51, 46)


def test_window_bounds_and_cursor() -> None:
    window = DeliveryWindow(3)
    for seq in (1, 2, 3):
        window.dispatch(seq)
    assert window.full and window.safe_cursor(4) == 1
    window.finish(2)
    window.finish(3)
    assert window.safe_cursor(4) == 1 and window.full  # 1 still out: nothing runs ahead
    window.finish(1)
    assert window.safe_cursor(4) == 4 and window.full  # full until the cursor is durable
    window.committed(4)
    assert len(window) == 0 and window.safe_cursor(10) == 10


def test_filter_semantics() -> None:
    def event(name: str) -> StoredEvent:
        return StoredEvent(1, "i", "t", name, "p", 0, {})

    both = EventFilter.from_conditions({"event_filter": ["order.created"],
                                        "entity_filter": ["return"]})
    assert both.matches(event("order.created")) and both.matches(event("return.x"))
    assert not both.matches(event("order.completed"))
    assert EventFilter.from_conditions(None).matches(event("any.thing"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


class Harness:
    def __init__(self, tmp: Path, clock: FakeClock) -> None:
        self.config = Config(
            webhook=WebhookConfig(timeout=1.0, retry_initial=0.05, retry_max=0.1),
            limits=LimitsConfig(restart_window=30 * DAY),
        )
        self.store = LmdbStore(tmp / "data", map_size=64 * 1024 * 1024)
        self.supervisor = Supervisor(self.config, self.store, clock=clock)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start_writer(self) -> None:
        self._tasks.append(asyncio.create_task(self.store.writer.run()))
        await asyncio.sleep(0)

    async def start_supervisor(self) -> None:
        self._tasks.append(asyncio.create_task(self.supervisor.run()))
        await asyncio.sleep(0.05)

    async def publish(self, n: int, start: int = 0) -> None:
        await self.store.append([pack_event(f"e{i}", "t", "order.created", "x", {"i": i})
                                 for i in range(start, start + n)])

    async def add_webhook(self, url: str, cursor: int, **fields: Any) -> None:
        record = {"id": "w1", "integration_type": "permanent", "status": "running",
                  "starts_at": None, "ends_at": None, "filter_conditions": None,
                  "callback_parameters": {"callback_url": url}, "s3_parameters": None,
                  "created_at": "2024-01-01T00:00:00.000Z", "stopped_at_ms": None,
                  "done": False, "incarnation": "i1", **fields}

        def job(txn: Any) -> None:
            self.store.txn_put_integration(txn, record)
            self.store.txn_set_cursor(txn, "w1", cursor)
        await self.store.write(job)

    async def close(self) -> None:
        await self.supervisor.shutdown()
        await self.store.writer.close()
        for task in self._tasks:
            with anyio.move_on_after(5):
                await task
        self.store.close()

    def actions(self) -> list[str]:
        return [e["action"] for e in self.store.list_logs("w1")]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeClock]]:
    clock = FakeClock(1_700_000_000.0)
    h = Harness(tmp_path, clock)
    await h.start_writer()
    yield h, clock
    await h.close()


@pytest.mark.parametrize(("stopped_days", "expect_old"), [(1, True), (31, False)])
async def test_restart_window(harness: tuple[Harness, FakeClock], receiver: Receiver,
                              stopped_days: int, expect_old: bool) -> None:
    h, clock = harness
    await h.start_supervisor()
    service = IntegrationService(h.store, h.config, h.supervisor, clock=clock)
    await h.add_webhook(receiver.url, cursor=1)
    await service.stop("w1")  # stopped now, by the fake clock
    await h.publish(10)  # published while stopped
    clock.now += stopped_days * DAY
    await service.start("w1")
    await h.publish(5, start=10)
    expected = set(range(15)) if expect_old else set(range(10, 15))
    await receiver.wait_for(lambda: len(receiver.delivered) >= len(expected))
    await anyio.sleep(0.2)
    assert {r.body["payload"]["i"] for r in receiver.delivered} == expected
    if expect_old:
        assert "events_skipped" not in h.actions()
    else:
        [skipped] = [e for e in h.store.list_logs("w1") if e["action"] == "events_skipped"]
        assert "skipped 10 events" in skipped["reason"]
    assert h.store.get_integration("w1")["stopped_at_ms"] is None
    # A later daemon or sink restart does not apply the rule again.
    clock.now += 40 * DAY
    h.supervisor.integration_changed("w1")
    await h.publish(1, start=15)
    await receiver.wait_for(lambda: 15 in {r.body["payload"]["i"] for r in receiver.delivered})


async def test_deleted_integrations_sink_never_writes_into_its_successor(
        harness: tuple[Harness, FakeClock], receiver: Receiver) -> None:
    h, _ = harness
    await h.add_webhook(receiver.url, cursor=1, incarnation="old")
    sink_store_writes = []
    # The old sink's write, attempted after the id was re-created, is refused.
    from eventstreamd.sinks.loop import SinkLoop
    from eventstreamd.sinks.webhook import WebhookPipeline

    loop = SinkLoop(store=h.store, record=h.store.get_integration("w1"),
                    pipeline=WebhookPipeline(None, 0.1, 0.1, 8),  # type: ignore[arg-type]
                    stop_grace=1.0)
    await h.store.write(lambda txn: h.store.txn_delete_integration(txn, "w1"))
    await h.add_webhook(receiver.url, cursor=1, incarnation="new")
    sink_store_writes.append(await loop.write(
        lambda txn: h.store.txn_set_cursor(txn, "w1", 99)))
    await loop.add_log("retry_triggered", "from the old sink")
    assert sink_store_writes == [False] and loop.stopping.is_set()
    assert h.store.get_cursor("w1") == 1
    assert h.store.list_logs("w1") == []


async def test_pruned_events_are_skipped_and_logged(harness: tuple[Harness, FakeClock],
                                                    receiver: Receiver) -> None:
    h, _ = harness
    await h.publish(5)
    await anyio.sleep(0.3)
    await h.publish(3, start=5)
    await prune_once(h.store, retention_s=0.15)
    assert h.store.first_seq() == 6
    await h.add_webhook(receiver.url, cursor=1)
    await h.start_supervisor()
    await receiver.wait_for(lambda: len(receiver.delivered) == 3)
    [entry] = [e for e in h.store.list_logs("w1") if e["action"] == "events_pruned"]
    assert entry["reason"].startswith("5 events were removed by retention")


async def test_crashing_sink_is_logged_and_restarted(harness: tuple[Harness, FakeClock],
                                                     receiver: Receiver) -> None:
    h, _ = harness
    await h.add_webhook(receiver.url, cursor=1, callback_parameters={"wrong": "shape"})
    await h.start_supervisor()
    with anyio.fail_after(10):
        while h.actions().count("sink_crashed") < 2:  # crashed, restarted, crashed again
            await anyio.sleep(0.05)
    assert "KeyError" in h.store.list_logs("w1")[0]["reason"]
    handle = h.supervisor.handles["w1"]
    assert handle.crashes >= 2
    # Fixing the record takes effect: the supervisor restarts the sink with it.
    await h.add_webhook(receiver.url, cursor=1)
    h.supervisor.integration_changed("w1")
    await h.publish(2)
    await receiver.wait_for(lambda: len(receiver.delivered) == 2)
