"""The sink loop and supervisor in-process: restart window (injectable clock), pruning,
fencing, crashes, and a third sink type added through the registry alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio
import orjson
import pytest

from eventstreamd.codec import to_api
from eventstreamd.config import Config, LimitsConfig, WebhookConfig
from eventstreamd.daemon.contracts import ChangeFeed
from eventstreamd.daemon.errors import ApiError
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.lifecycle import http_session
from eventstreamd.daemon.retention import prune_once
from eventstreamd.daemon.status import StatusSampler
from eventstreamd.daemon.supervisor import Supervisor
from eventstreamd.model import (
    EventFilterSpec,
    Integration,
    LogEntry,
    RejectedEvent,
    StoredEvent,
    TargetParams,
)
from eventstreamd.sinks import registry
from eventstreamd.sinks.base import (
    DeliveryFailed,
    PipelineStatus,
    SinkContext,
    SinkEnv,
    SinkType,
    TargetRefused,
)
from eventstreamd.sinks.filters import EventFilter
from eventstreamd.sinks.loop import SinkLoop, resume_position
from eventstreamd.sinks.webhook import WebhookPipeline, WebhookTarget
from eventstreamd.sinks.window import DeliveryWindow
from eventstreamd.storage.base import Store
from eventstreamd.storage.factory import open_store
from tests.helpers.receiver import Receiver
from tests.helpers.store import held, new_event
from tests.helpers.wait import eventually

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


def test_a_window_at_its_request_limit_does_not_wait_for_the_cursor() -> None:
    window = DeliveryWindow(2, unsaved_limit=4)
    window.dispatch(1)
    window.dispatch(2)
    assert window.full and not window.waits_for_cursor  # answers free it, not a cursor
    window.finish(1)
    window.finish(2)
    window.dispatch(3)
    window.dispatch(4)
    assert window.full and window.waits_for_cursor  # 4 delivered or out, none saved
    window.finish(3)
    window.finish(4)
    window.committed(window.safe_cursor(5))
    assert not window.full and not window.waits_for_cursor


def test_filter_semantics() -> None:
    def event(name: str) -> StoredEvent:
        return StoredEvent(1, "i", "t", name, 0, b"{}")

    both = EventFilter.of(EventFilterSpec(("order.created",), ("return",)))
    assert both.matches(event("order.created")) and both.matches(event("return.x"))
    assert not both.matches(event("order.completed"))
    assert EventFilter.of(None).matches(event("any.thing"))


# ------------------------------------------------------- a third sink type


@dataclass(frozen=True)
class MemoryTarget(TargetParams):
    """A sink type defined here, in the test, and added through the registry alone."""

    kind: ClassVar[str] = "memory"
    api_field: ClassVar[str] = "memory_parameters"
    secret_fields: ClassVar[tuple[str, ...]] = ("token",)
    api_fields: ClassVar[tuple[str, ...]] = ("name", "token")

    name: str
    token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({"token": self.token} if self.token else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryTarget:
        return cls(name=data["name"], token=data.get("token"))

    def describe(self) -> str:
        return f"memory:{self.name}"


RECEIVED: dict[str, list[bytes]] = {}
FAIL_TO_OPEN: set[str] = set()


class MemoryPipeline:
    """Appends each event's body to `RECEIVED[name]`; events named `*.refused` are set aside."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def open(self, ctx: SinkContext) -> None:
        if self.name in FAIL_TO_OPEN:
            raise RuntimeError(f"cannot open {self.name}")

    async def serve(self, ctx: SinkContext) -> None:
        return None

    async def accept(self, events: list[StoredEvent], ctx: SinkContext) -> int:
        for event in events:
            if event.name.endswith(".refused"):
                await ctx.set_aside(event, "memory sinks refuse these")
                continue
            RECEIVED.setdefault(self.name, []).append(event.body)
            ctx.stats.delivered += 1
        return len(events)

    async def tick(self, ctx: SinkContext) -> None:
        return None

    def blocked(self) -> bool:
        return False

    def waits_for_cursor(self) -> bool:
        return False

    def safe_cursor(self, read_position: int) -> int:
        return read_position

    def committed(self, cursor: int) -> None:
        return None

    async def close(self, ctx: SinkContext, outcome: str, grace: float) -> None:
        return None

    async def release(self) -> None:
        return None

    def status(self) -> PipelineStatus:
        return PipelineStatus(buffered_bytes=0)


def _check(params: TargetParams, config: Config) -> None:
    assert isinstance(params, MemoryTarget)
    if not params.name:
        raise TargetRefused("invalid_memory_parameters", "'memory_parameters.name' is empty")


def _build(env: SinkEnv, integration: Integration) -> MemoryPipeline:
    assert isinstance(integration.target, MemoryTarget)
    return MemoryPipeline(integration.target.name)


async def _retry(env: SinkEnv, integration: Integration, entry: RejectedEvent) -> None:
    raise DeliveryFailed("memory sinks never take a refused event")


MEMORY = SinkType(params=MemoryTarget, description="events appended to a list in memory",
                  check=_check, build=_build, retry_rejected=_retry,
                  stop_grace=lambda config: 1.0)


@pytest.fixture
def memory_sink() -> Iterator[None]:
    """Registers the sink type (request it before `harness`: torn down after it)."""
    registry.register(MEMORY)
    RECEIVED.clear()
    FAIL_TO_OPEN.clear()
    yield None
    registry.SINK_TYPES.pop(MEMORY.kind, None)


# ------------------------------------------------------------------ harness


class Harness:
    """Store, service and supervisor in-process, as the lifecycle wires them."""

    def __init__(self, store: Store, env: SinkEnv, clock: FakeClock) -> None:
        self.store = store
        self.config = env.config
        self.changes = ChangeFeed()
        self.service = IntegrationService(store, self.config, self.changes, env, clock=clock)
        self.supervisor = Supervisor(env, store, self.changes, self.service.complete,
                                     clock=clock, on_gave_up=self.service.auto_stop)
        self.task: asyncio.Task[Any] | None = None

    async def start_supervisor(self) -> None:
        # A plain task: the fixture's setup and teardown run in different tasks.
        self.task = asyncio.create_task(self.supervisor.run())
        await asyncio.sleep(0.05)

    async def publish(self, n: int, start: int = 0, name: str = "order.created") -> None:
        await self.store.append([new_event(f"e{i}", {"i": i}, tenant="t", name=name)
                                 for i in range(start, start + n)])

    async def add_webhook(self, url: str, cursor: int, incarnation: str = "i1") -> Integration:
        integration = Integration(id="w1", type="permanent", status="running",
                                  target=WebhookTarget(url), incarnation=incarnation,
                                  created_at="2024-01-01T00:00:00.000Z")
        await self.store.create_integration(
            integration, cursor=cursor, limit=10,
            log=LogEntry("2024-01-01T00:00:00.000Z", "integration_created", "test"))
        self.changes.notify("w1")
        return integration

    async def close(self) -> None:
        await self.supervisor.shutdown()
        if self.task is not None:
            with anyio.move_on_after(5):
                await self.task

    async def actions(self, integration_id: str = "w1") -> list[str]:
        return [e.action for e in await self.store.list_logs(integration_id, 50)]


@pytest.fixture
async def harness(tmp_path: Path, store_config: Config,
                  ) -> AsyncIterator[tuple[Harness, FakeClock]]:
    clock = FakeClock(1_700_000_000.0)
    config = Config(
        webhook=WebhookConfig(timeout=1.0, retry_initial=0.05, retry_max=0.1),
        limits=LimitsConfig(restart_window=30 * DAY),
    )
    async with held(open_store(dataclasses.replace(
            store_config, webhook=config.webhook, limits=config.limits),
            registry.SINK_TYPES)) as store, \
            held(http_session(config)) as session:
        h = Harness(store, SinkEnv(config=config, session=session,
                                   spool_root=tmp_path / "spool"), clock)
        yield h, clock
        await h.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


BOTH = pytest.mark.parametrize("backend", ["lmdb", "jetstream"])


@BOTH
@pytest.mark.parametrize(("stopped_days", "expect_old"), [(1, True), (31, False)])
async def test_restart_window(harness: tuple[Harness, FakeClock], receiver: Receiver,
                              stopped_days: int, expect_old: bool) -> None:
    h, clock = harness
    await h.start_supervisor()
    await h.add_webhook(receiver.url, cursor=1)
    await h.service.stop("w1")  # stopped now, by the fake clock
    await h.publish(10)  # published while stopped
    clock.now += stopped_days * DAY
    await h.service.start("w1")
    await h.publish(5, start=10)
    expected = set(range(15)) if expect_old else set(range(10, 15))
    await eventually(lambda: len(receiver.delivered) >= len(expected))
    # Everything sent is what was expected (the cursor is past all 15 once saved).
    await eventually(lambda: h.store.get_cursor("w1"), lambda c: c == 16)
    assert {r.body["payload"]["i"] for r in receiver.delivered} == expected
    if expect_old:
        assert "events_skipped" not in await h.actions()
    else:
        logs = await h.store.list_logs("w1", 50)
        [skipped] = [e for e in logs if e.action == "events_skipped"]
        assert "skipped 10 events" in skipped.reason
    stored = await h.store.get_integration("w1")
    assert stored is not None and stored.stopped_at_ms is None
    # A later daemon or sink restart does not apply the rule again.
    clock.now += 40 * DAY
    h.changes.notify("w1")
    await h.publish(1, start=15)
    await eventually(lambda: 15 in {r.body["payload"]["i"] for r in receiver.delivered})


@BOTH
async def test_deleted_integrations_sink_never_writes_into_its_successor(
        harness: tuple[Harness, FakeClock], receiver: Receiver) -> None:
    h, _ = harness
    old = await h.add_webhook(receiver.url, cursor=1, incarnation="old")
    loop = SinkLoop(store=h.store, integration=old,
                    # No session or target: the loop must never get as far as sending.
                    pipeline=WebhookPipeline(None, None, 8),  # type: ignore[arg-type]
                    stop_grace=1.0)
    assert await h.store.delete_integration("w1")
    await h.add_webhook(receiver.url, cursor=1, incarnation="new")
    # The old sink's writes, attempted after the id was re-created, are refused.
    assert not await loop.save_state({"x": 1})
    await loop.add_log("retry_triggered", "from the old sink")
    assert loop.stopping.is_set()
    assert await h.store.get_cursor("w1") == 1
    assert await h.actions() == ["integration_created"]


async def test_pruned_events_are_skipped_and_logged(harness: tuple[Harness, FakeClock],
                                                    receiver: Receiver) -> None:
    h, _ = harness
    await h.publish(5)
    await anyio.sleep(0.05)  # the second batch is stored a little later
    await h.publish(3, start=5)
    # Prune what is older than the second batch (by its stored time, not a guess).
    [sixth] = await h.store.read_events(6, 1)
    assert await h.store.prune(sixth.ingested_at) == 5
    assert await h.store.first_seq() == 6
    await h.add_webhook(receiver.url, cursor=1)
    await h.start_supervisor()
    await eventually(lambda: len(receiver.delivered) == 3)
    logs = await h.store.list_logs("w1", 50)
    [entry] = [e for e in logs if e.action == "events_pruned"]
    assert entry.reason.startswith("5 events were removed by retention")


async def test_a_log_pruned_past_the_cursor_moves_the_cursor_to_the_head(
        harness: tuple[Harness, FakeClock], receiver: Receiver) -> None:
    """Every event after the cursor removed by retention, none newer: the sink skips to the
    head (and says so) at once, not when the next event comes, and does not spin."""
    h, _ = harness
    await h.publish(5)
    await prune_once(h.store, retention_s=-1)  # everything is older than a second ahead
    assert await h.store.first_seq() == 6  # the log is empty, its head 5
    await h.add_webhook(receiver.url, cursor=1)
    await h.start_supervisor()
    await eventually(lambda: h.store.get_cursor("w1"), lambda cursor: cursor == 6,
                     what="the cursor moved past the pruned events")
    logs = await h.store.list_logs("w1", 50)
    [entry] = [e for e in logs if e.action == "events_pruned"]
    assert entry.reason.startswith("5 events were removed by retention")
    await h.publish(1, start=5)
    await eventually(lambda: len(receiver.delivered) == 1)


async def test_a_third_sink_type_runs_end_to_end(memory_sink: None,
                                                 harness: tuple[Harness, FakeClock]) -> None:
    """Registered in this test alone: the service checks and stores it, the supervisor runs
    it, status and API masking show it; nothing in the daemon names it."""
    h, _ = harness
    await h.start_supervisor()
    with pytest.raises(ApiError, match="is empty"):  # the sink type's own check
        await h.service.register("m0", "permanent", MemoryTarget(""))
    integration = await h.service.register("m1", "permanent",
                                           MemoryTarget("one", token="secret-token-0123456789"))
    await h.publish(3)
    await h.publish(1, start=3, name="order.refused")
    await h.publish(2, start=4)
    await eventually(lambda: _received("one"), lambda r: len(r) == 5)
    assert [b["payload"]["i"] for b in await _received("one")] == [0, 1, 2, 4, 5]
    [rejected] = await h.store.list_rejected("m1")
    assert rejected.reason == "memory sinks refuse these" and rejected.event_id == "e3"
    with pytest.raises(Exception, match="never take"):
        await h.service.retry_rejected("m1", rejected.id)
    shown = to_api(integration)
    assert shown["memory_parameters"] == {"name": "one", "token": "se***"}
    sampler = StatusSampler(h.store, h.supervisor, h.config)
    [row] = (await sampler.snapshot())["integrations"]
    assert (row["kind"], row["target"], row["delivered"], row["buffered_bytes"]) == \
        ("memory", "memory:one", 5, 0)


async def _received(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(body) for body in RECEIVED.get(name, [])]


async def test_crashing_sink_is_logged_and_restarted(memory_sink: None,
                                                     harness: tuple[Harness, FakeClock]) -> None:
    h, _ = harness
    FAIL_TO_OPEN.add("flaky")
    await h.start_supervisor()
    await h.service.register("m1", "permanent", MemoryTarget("flaky"))
    # Crashed, restarted, crashed again.
    await eventually(lambda: h.actions("m1"), lambda a: a.count("sink_crashed") >= 2,
                     within=10)
    assert "RuntimeError: cannot open flaky" in (await h.store.list_logs("m1", 1))[0].reason
    status = h.supervisor.sink_status("m1")
    assert status is not None and status.crashes >= 2 and status.stats.failures >= 2
    # Once the fault is gone, the next restart (backoff 1 s, 2 s, ...) delivers.
    FAIL_TO_OPEN.clear()
    await h.publish(2)
    await eventually(lambda: _received("flaky"), lambda r: len(r) == 2, within=15)
