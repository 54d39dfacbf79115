"""The replays of one integration, run beside its live sink (the supervisor's part of replays).

Decisions:
- The supervisor keeps one `ReplayRuns` per integration whose live sink it
  runs (`SinkHandle.replays`): replays run only while their integration is
  delivered here (running, and on JetStream under this daemon's lease), so a
  stopped integration pauses them and `_start`, a restart or a handover
  resumes them from their saved progress. Each replay is a `SinkLoop` over
  its range with its own pipeline (`SinkType.build_replay`), under the
  integration's lease and fence, reading through the daemon's one `LogFeed`.
- `reconcile` is called with the record whenever the supervisor looks at the
  integration: a replay that is active in the record and not running here is
  started; one running here and no longer active (cancelled, or dropped) is
  stopped at once. Stopping is the loop's graceful stop: nothing new goes
  out, requests under way may finish.
- A replay that reaches the end of its range is marked completed through the
  replay service (`on_completed`), which writes the record; a replay that
  ended (completed, cancelled) frees what its sink type kept outside the
  store (`SinkType.replay_ended`: an S3 replay's spool directory).
- A replay whose loop crashes is logged and recorded like a live sink's
  crash and started again with the same backoff; the live sink is not
  touched. The counters of every replay of the integration are one
  `SinkStats` (`stats`: /metrics' `eventstreamd_replayed_events_total`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from anyio.abc import TaskGroup

from ..config import Config
from ..logs import kv
from ..model import Integration
from ..sinks.base import LeaseHold, SinkEnv, SinkStats
from ..sinks.feed import LogFeed
from ..sinks.loop import SinkLoop
from ..sinks.registry import sink_type
from ..sinks.replay import ReplayBook, replay_reading
from ..storage.base import Store
from .contracts import ReplayFigures
from .runs import LoopRun

log = logging.getLogger("eventstreamd.replays")

OnCompleted = Callable[[Integration, str], Awaitable[bool]]


@dataclass(eq=False)
class ReplayRun(LoopRun):
    replay_id: str
    book: ReplayBook | None = None
    ended: bool = False  # stopped because the replay is over (not paused)

    def figures(self) -> ReplayFigures | None:
        loop, book = self.loop, self.book
        if loop is None or book is None:
            return None
        return ReplayFigures(book.delivered_before(loop.live_cursor),
                             loop.pipeline.status().in_flight, self.crashes)


class ReplayRuns:
    def __init__(self, *, env: SinkEnv, store: Store, feed: LogFeed, group: TaskGroup,
                 on_completed: OnCompleted, clock: Callable[[], float] = time.time) -> None:
        self.env = env
        self.config: Config = env.config
        self.store = store
        self.feed = feed
        self.group = group
        self.on_completed = on_completed
        self.clock = clock
        self.runs: dict[str, ReplayRun] = {}
        self.stats = SinkStats()
        self._closed = False

    def reconcile(self, integration: Integration, lease: LeaseHold | None) -> None:
        """Start the active replays not running here, stop those no longer active."""
        active = {r.id for r in integration.replays if r.active}
        for replay_id, run in self.runs.items():
            if replay_id not in active and not run.stop_requested:
                run.ended = True
                run.request_stop()
        if self._closed:
            return
        for replay_id in active - self.runs.keys():
            run = self.runs[replay_id] = ReplayRun(replay_id=replay_id)
            self.group.start_soon(self._run, integration, run, lease,
                                  name=f"replay:{integration.id}:{replay_id}")

    def stop_all(self) -> None:
        """The integration is no longer delivered here: every replay pauses."""
        self._closed = True
        for run in self.runs.values():
            run.request_stop()

    def figures(self) -> dict[str, ReplayFigures]:
        found = {}
        for replay_id, run in self.runs.items():
            figures = run.figures()
            if figures is not None:
                found[replay_id] = figures
        return found

    async def _run(self, ran: Integration, run: ReplayRun, lease: LeaseHold | None) -> None:
        integration_id, replay_id = ran.id, run.replay_id
        try:
            while not run.stop_requested:
                integration = await self.store.get_integration(integration_id)
                replay = integration.replay(replay_id) if integration is not None else None
                if (integration is None or replay is None or not replay.active
                        or integration.incarnation != ran.incarnation):
                    run.ended = True
                    return
                kind = sink_type(integration.kind)
                if kind.build_replay is None:
                    return
                run.book = ReplayBook(self.store, integration_id, replay_id)
                try:
                    run.loop = SinkLoop(
                        store=self.store, integration=integration, lease=lease,
                        pipeline=kind.build_replay(self.env, integration, replay),
                        stop_grace=kind.stop_grace(self.config), clock=self.clock,
                        stats=self.stats, cursor_every=self.config.delivery.cursor_every,
                        cursor_interval=self.config.delivery.cursor_interval, feed=self.feed,
                        reading=replay_reading(replay), progress=run.book,
                        name=f"{integration_id}/replay-{replay_id}")
                    if run.stop_requested:
                        return
                    log.info("replay started", extra=kv(integration=integration_id,
                                                        replay=replay_id))
                    outcome = await run.loop.run()
                except Exception as exc:
                    await self._crashed(run, integration, exc)
                    continue
                if run.loop.restart_wanted and not run.stop_requested:
                    continue
                if outcome == "completed":
                    try:
                        run.ended = await self.on_completed(integration, replay_id)
                    except Exception:
                        # Still running in the record: its next start finds the range
                        # delivered and completes again.
                        log.exception("could not mark the replay completed", extra=kv(
                            integration=integration_id, replay=replay_id))
                log.info("replay stopped", extra=kv(integration=integration_id,
                                                    replay=replay_id, outcome=outcome))
                return
        finally:
            if self.runs.get(replay_id) is run:
                del self.runs[replay_id]
            if run.ended:
                with contextlib.suppress(Exception):
                    sink_type(ran.kind).replay_ended(self.env, integration_id, replay_id)
            run.finished.set()

    async def _crashed(self, run: ReplayRun, integration: Integration,
                       exc: Exception) -> None:
        delay = await run.crashed(exc, what=f"Replay {run.replay_id}", action="replay_crashed",
                                  integration=integration, store=self.store,
                                  stats=self.stats, now=self.clock())
        log.error("replay crashed", exc_info=exc, extra=kv(
            integration=integration.id, replay=run.replay_id, restart_in=delay))
        await run.pause(delay)
