"""The supervisor: one sink task per running integration, kept in line with the store.

Decisions:
- The store is the truth. The integration service tells the `ChangeFeed`
  after every committed change; the reconcile task re-reads those records and
  starts, stops or restarts their sinks, so changes take effect at once and
  the API never waits on delivery.
- The supervisor only runs sinks. It never writes an integration record: when
  a temporary integration has delivered its range it asks the service to
  complete it (`on_completed`); when a sink gave up (its deliveries failed
  for the integration's `stop_after_failing`) it asks the service to stop it
  (`on_gave_up`). What a sink is made of comes from the sink type's
  registry entry (`sinks/registry.py`); no sink type is named here.
- A record that changed without changing what its running sink was built
  from (a rotated signing secret) is handed to the sink type's `refresh`,
  which updates the per-integration state the sink reads (`SinkEnv`): no
  restart. An integration that is gone has that state dropped.
- A sink is restarted when its delivery settings change (target, filter,
  dates); status flips start and stop it. With several daemons on one
  JetStream (`leases` given, `ownership.py`) a sink runs only while this
  daemon holds the integration's lease, under that lease's fence; losing or
  giving up the lease stops it, a new claim restarts it. Stopping is graceful (see
  `SinkLoop`) and runs in the background so one slow stop never delays
  another integration.
- A sink that crashes is logged with its traceback, recorded in the
  integration log and in its counters (status shows it failing), and
  restarted with exponential backoff (1 s doubling to 60 s) — never silently
  gone.
- `sinks_started` is set once the integrations found at start have been
  reconciled (their sinks launched): half of what `/readyz` waits for.
- An integration's replays run beside its live sink, only while the live
  sink is wanted here (`replay_runs.py`): each sink handle has its
  `ReplayRuns`, told about the record whenever the integration is looked at;
  stopping the handle pauses them. A replay that completes is marked so
  through `on_replay_completed` (the replay service).
- The supervisor owns the daemon's one `LogFeed` (sinks/feed.py): it runs
  the feed's reader in its task group and hands the feed to every sink loop,
  so events near the head are read once however many sinks there are.
  `sink_status` carries each sink's live position (`live_cursor`), which
  status measures lag by while skipped-over progress is saved only lazily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..logs import kv
from ..model import Integration
from ..sinks.base import LeaseHold, PipelineStatus, SinkEnv, SinkStats
from ..sinks.feed import LogFeed
from ..sinks.loop import SinkLoop
from ..sinks.registry import sink_type
from ..storage.base import Store
from ..timeouts import move_on_after
from .contracts import ChangeFeed, Leases, ReplayFigures, SinkStatus
from .replay_runs import OnCompleted, ReplayRuns
from .runs import LoopRun

log = logging.getLogger("eventstreamd.supervisor")


@dataclass(eq=False)
class SinkHandle(LoopRun):
    integration_id: str
    settings: tuple[Any, ...]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    # Outlives each run of the loop: a crash-looping sink shows its failures.
    stats: SinkStats = field(default_factory=SinkStats)
    restart_at: float | None = None  # wall clock of the next start after a crash
    replays: ReplayRuns | None = None  # while the handle runs

    def request_stop(self) -> None:
        super().request_stop()
        if self.replays is not None:
            self.replays.stop_all()


class Supervisor:
    def __init__(self, env: SinkEnv, store: Store, changes: ChangeFeed,
                 on_completed: Callable[[Integration], Awaitable[bool]],
                 clock: Callable[[], float] = time.time, leases: Leases | None = None,
                 on_gave_up: Callable[[Integration, str], Awaitable[bool]] | None = None,
                 on_replay_completed: OnCompleted | None = None) -> None:
        self.env = env
        self.leases = leases
        self.config = env.config
        self.store = store
        self.changes = changes
        self.on_completed = on_completed
        self.on_gave_up = on_gave_up
        self.on_replay_completed = on_replay_completed
        self.clock = clock
        self.handles: dict[str, SinkHandle] = {}
        delivery = self.config.delivery
        self.feed = LogFeed(store, tail_bytes=delivery.tail_cache,
                            read_budget=delivery.read_budget)
        self._tg: TaskGroup | None = None
        self._shutting_down = False
        self.sinks_started = anyio.Event()

    # -------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.feed.run, name="supervisor:feed")
            initial = await self.store.list_integrations()
            for integration in initial:
                self.changes.notify(integration.id)
            if not initial:
                self.sinks_started.set()
            tg.start_soon(self._reconcile_forever, name="supervisor:reconcile")
            task_status.started()
            await anyio.sleep_forever()

    def _grace(self, kind: str) -> float:
        return sink_type(kind).stop_grace(self.config) + 1.0

    async def shutdown(self) -> None:
        """Stop every sink gracefully (bounded), then the supervisor's own tasks."""
        self._shutting_down = True
        for handle in list(self.handles.values()):
            handle.request_stop()
        grace = max((self._grace(kind) for kind in _kinds(self.handles)), default=0.0)
        with move_on_after(grace):
            for handle in list(self.handles.values()):
                await handle.finished.wait()
        for handle in list(self.handles.values()):
            handle.scope.cancel()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -------------------------------------------------------------- reconcile

    async def _reconcile_forever(self) -> None:
        while True:
            for integration_id in sorted(await self.changes.take()):
                try:
                    await self._reconcile(integration_id)
                except Exception:
                    # One unreadable record must not stop reconciling the others.
                    log.exception("cannot reconcile an integration",
                                  extra=kv(integration=integration_id))
            self.sinks_started.set()  # the first round held every integration found at start

    async def _reconcile(self, integration_id: str) -> None:
        if self._shutting_down:
            return
        integration = await self.store.get_integration(integration_id)
        if integration is None:
            self.env.forget(integration_id)
        handle = self.handles.get(integration_id)
        lease = self._lease(integration_id)
        wanted = (integration is not None and integration.running
                  and (self.leases is None or lease is not None))
        if handle is not None:
            if handle.stop_requested:
                return  # its end marks the id changed again, and we look once more then
            # Gone, no longer wanted here, or changed: stop it (its end reconciles again).
            if (integration is None or not wanted
                    or handle.settings != _settings(integration, lease)):
                assert self._tg is not None
                self._tg.start_soon(self._stop_sink, handle, name=f"stop:{integration_id}")
            else:
                sink_type(integration.kind).refresh(self.env, integration)
                if handle.replays is not None:
                    handle.replays.reconcile(integration, lease)
            return
        if wanted:
            assert integration is not None and self._tg is not None
            handle = SinkHandle(integration_id, _settings(integration, lease))
            self.handles[integration_id] = handle
            self._tg.start_soon(self._supervise, handle, name=f"sink:{integration_id}")

    async def _stop_sink(self, handle: SinkHandle) -> None:
        """Graceful stop, bounded: cancelled outright when the grace period runs out."""
        handle.request_stop()
        kind = handle.loop.integration.kind if handle.loop is not None else None
        with move_on_after(self._grace(kind) if kind else 1.0):
            await handle.finished.wait()
        if not handle.finished.is_set():
            log.warning("sink did not stop in time; cancelling it",
                        extra=kv(integration=handle.integration_id))
            handle.scope.cancel()

    async def _supervise(self, handle: SinkHandle) -> None:
        integration_id = handle.integration_id
        try:
            with handle.scope:
                async with anyio.create_task_group() as replays:
                    handle.replays = ReplayRuns(
                        env=self.env, store=self.store, feed=self.feed, group=replays,
                        on_completed=self._replay_completed, clock=self.clock)
                    if handle.stop_requested:
                        handle.replays.stop_all()
                    try:
                        await self._deliver(handle)
                    finally:
                        handle.replays.stop_all()  # they end gracefully, with the group
        finally:
            if self.handles.get(integration_id) is handle:
                del self.handles[integration_id]
            handle.finished.set()
            # Look again: the integration may want a sink with new settings now.
            self.changes.notify(integration_id)

    async def _deliver(self, handle: SinkHandle) -> None:
        """The live sink, started again after crashes, until stopped, changed or done."""
        integration_id = handle.integration_id
        assert handle.replays is not None
        while not handle.stop_requested:
            integration = await self.store.get_integration(integration_id)
            lease = self._lease(integration_id)
            if integration is None or _settings(integration, lease) != handle.settings:
                return  # gone, changed, or its lease lost: reconciled again below
            handle.replays.reconcile(integration, lease)
            try:
                handle.loop = self._build_loop(integration, handle.stats, lease)
                if handle.stop_requested:
                    return
                log.info("sink started", extra=kv(integration=integration_id))
                outcome = await handle.loop.run()
            except Exception as exc:
                await self._crashed(handle, integration, exc)
                continue
            if handle.loop.restart_wanted and not handle.stop_requested:
                continue  # the event log went back under it: start where it now is
            if outcome == "completed":
                try:
                    await self.on_completed(integration)
                except Exception:
                    # Not marked done: the next start finds the range delivered
                    # and completes again.
                    log.exception("could not mark the integration completed",
                                  extra=kv(integration=integration_id))
            elif outcome == "gave_up" and self.on_gave_up is not None:
                try:
                    await self.on_gave_up(integration, handle.loop.gave_up or "")
                except Exception:
                    # Still running: its next sink finds the failure streak saved
                    # and gives up again at its first failure.
                    log.exception("could not stop the failing integration",
                                  extra=kv(integration=integration_id))
            log.info("sink stopped", extra=kv(integration=integration_id,
                                              outcome=outcome))
            return

    async def _replay_completed(self, integration: Integration, replay_id: str) -> bool:
        if self.on_replay_completed is None:
            return False
        return await self.on_replay_completed(integration, replay_id)

    async def _crashed(self, handle: SinkHandle, integration: Integration,
                       exc: Exception) -> None:
        delay = await handle.crashed(exc, what="Delivery task", action="sink_crashed",
                                     integration=integration, store=self.store,
                                     stats=handle.stats, now=self.clock())
        log.error("sink crashed", exc_info=exc, extra=kv(
            integration=integration.id, restart_in=delay))
        handle.restart_at = self.clock() + delay
        await handle.pause(delay)
        handle.restart_at = None

    def _lease(self, integration_id: str) -> LeaseHold | None:
        return self.leases.lease(integration_id) if self.leases is not None else None

    def sink_running(self, integration_id: str) -> bool:
        return integration_id in self.handles

    def replay_figures(self, integration_id: str) -> dict[str, ReplayFigures]:
        """The live figures of the integration's replays running here, by replay id."""
        handle = self.handles.get(integration_id)
        if handle is None or handle.replays is None:
            return {}
        return handle.replays.figures()

    def replay_stats(self, integration_id: str) -> SinkStats | None:
        """The counters of the integration's replays while its sink runs here."""
        handle = self.handles.get(integration_id)
        return handle.replays.stats if handle is not None and handle.replays else None

    def _build_loop(self, integration: Integration, stats: SinkStats,
                    lease: LeaseHold | None = None) -> SinkLoop:
        kind = sink_type(integration.kind)
        return SinkLoop(store=self.store, integration=integration, lease=lease,
                        pipeline=kind.build(self.env, integration),
                        stop_grace=kind.stop_grace(self.config), clock=self.clock, stats=stats,
                        cursor_every=self.config.delivery.cursor_every,
                        cursor_interval=self.config.delivery.cursor_interval,
                        feed=self.feed)

    # ---------------------------------------------------------------- status

    def delivered_counts(self) -> dict[str, int]:
        return {integration_id: handle.stats.delivered
                for integration_id, handle in self.handles.items()}

    def ingested_at(self, seq: int) -> int | None:
        return self.feed.ingested_at(seq)

    def sink_status(self, integration_id: str) -> SinkStatus | None:
        handle = self.handles.get(integration_id)
        if handle is None:
            return None
        loop = handle.loop
        return SinkStatus(
            stats=handle.stats, crashes=handle.crashes,
            crashed=handle.restart_at is not None,
            restart_in=(round(max(0.0, handle.restart_at - self.clock()), 1)
                        if handle.restart_at is not None else None),
            cursor=(loop.durable_cursor or None) if loop is not None else None,
            pipeline=loop.pipeline.status() if loop is not None else PipelineStatus(),
            position=(loop.live_cursor or None) if loop is not None else None,
        )


def _settings(integration: Integration, lease: LeaseHold | None) -> tuple[Any, ...]:
    """What a running sink was built from: a change restarts it (a new claim too, so the
    sink's fences name the lease it runs under)."""
    return (*integration.delivery_settings(), lease.seq if lease is not None else None)


def _kinds(handles: dict[str, SinkHandle]) -> set[str]:
    return {h.loop.integration.kind for h in handles.values() if h.loop is not None}
