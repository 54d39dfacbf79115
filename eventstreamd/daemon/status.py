"""The status snapshot: one JSON-ready picture of the daemon, for the control socket and the TUI.

Decisions:
- Built from the two sources of truth only: the store (head, integration
  records, cursors, the oldest undelivered event, stored rejected events) and
  the supervisor's `sink_status(id)` (live counters of running sinks). Nothing
  here keeps its own copy of delivery state, so the snapshot cannot drift.
- Its cost does not grow by a store read per integration: a snapshot makes
  one read of every record, one of the rejected counts and, only when some
  integration has no sink here (stopped, or delivered by another daemon that
  does not announce it), one of every saved cursor (`Store.cursors`). A
  running sink's cursor and position are in memory; the age of the oldest
  undelivered event comes from the feed's tail when it holds that event,
  else from a read per distinct position, remembered (`AGES_KEPT`): an
  event's ingest time never changes.
  The rows are built in slices of a hundred, other requests served between
  them (`slices.py`): a thousand integrations take about 17 ms.
- Rates come from successive counter samples: `tick()` (called once per push
  interval by the control server) records the head and every sink's
  `delivered` counter (`delivered_counts`: from memory, no store read) and
  turns the differences into per-second rates, with a short history
  (`HISTORY` samples) so a freshly attached TUI can draw its sparklines at
  once; an integration without a sink has no rate. `snapshot()` never moves
  the rate baseline.
- `last_error` is the full reason (as `retry_triggered` logs it, in the
  spec's wording); `last_error_cause` the same failure in a few words (the
  dashboard's column), both from the sink's stats.
- A sink's counters live as long as its sink is wanted (a crash and restart
  keeps them); a stopped integration has no live counters: those fields are
  null, the stored ones (cursor, lag, rejected count) are not.
- Lag is "roughly" by design: `head - position + 1` counts every event after
  the sink's live position (where it stands now: everything before it is
  delivered or filtered out, `SinkStatus.position`), including ones the
  filter will skip once read. The live position, not the saved cursor, because
  progress over skipped events is saved only lazily; for a stopped sink (or
  one another daemon delivers) it is the saved (announced) cursor. The age is
  that of the first event at or after that position, from its `ingested_at`.
- `health` is decided here, not in the TUI, so every client shows the same
  verdict and the rule is tested in one place:
  `completed` (temporary, done) > `stopped` > `failing` (its sink crashed
  and waits to restart, or a delivery failure within `FAILING_WINDOW`
  seconds and events still waiting) > `lagging` (the oldest undelivered
  event is older than `LAGGING_AFTER`, plus the sink type's allowance: S3
  holds events in its open file for up to the rotate interval) > `ok`.
- `store` says which backend holds the state and whether it can be reached
  (`Store.health()`): with JetStream, NATS going away shows here (and in
  the dashboard) at once. Meanwhile the snapshot is built from what the
  store last saw (it answers integrations, cursors and counts from memory
  then) and skips the age of the oldest undelivered event, which would wait
  for NATS.
- Several daemons on one JetStream (`cluster.py`): `cluster` lists every
  daemon and what it owns, each integration names its `owner`, and the live
  figures of an integration another daemon delivers come from that daemon's
  announcement. With LMDB `cluster` is null and there is no `owner`.
- Nothing here names a sink type: the target is the sink's own one-line
  description (`TargetParams.describe`), its delivery controls (`max_rate`,
  `ordering`: "strict", "key <path>" or null) come from
  `TargetParams.controls`, and what a sink buffers comes from
  its typed `PipelineStatus`.
- Why an integration stopped: `auto_stopped` is true when the daemon stopped
  it because its deliveries kept failing, and `stop_reason` then says why
  (the last error); both from the record, so every daemon says the same.
- Replays: each integration lists its replays (`replays`, newest first), as
  the API lists them, their `delivered` where they stand now when this
  daemon runs them (else as last saved), with `in_flight`; the record and
  the saved progress are read only for integrations that have replays.
- `s3_open_file_bytes` and `s3_open_file_age` stay as aliases of
  `buffered_bytes` and `buffered_age` for protocol-1 clients.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__, codec
from ..config import Config
from ..model import Integration
from ..sinks.registry import sink_type
from ..storage.base import Store
from .cluster import OwnedFigures, cluster_section, counter_delta, per_second, remote_figures
from .contracts import DeliveryFigures, ReplayFiguresSource, SinkStatus
from .slices import in_slices

if TYPE_CHECKING:
    from .ownership import Ownership

HISTORY = 30  # samples kept per rate (30 s of sparkline at the default 1 s interval)
FAILING_WINDOW = 15.0  # seconds
LAGGING_AFTER = 30.0  # seconds
AGES_KEPT = 4096  # ingest times of the positions status last asked about


def health(
    *, status: str, done: bool, lag_events: int, lag_seconds: float | None,
    last_error_at: float | None, now: float, lag_allowance: float = 0.0,
    crashed: bool = False,
) -> str:
    if done:
        return "completed"
    if status != "running":
        return "stopped"
    if crashed:
        return "failing"  # its sink is down, waiting to restart: nothing is delivered
    if last_error_at is not None and now - last_error_at <= FAILING_WINDOW and lag_events > 0:
        return "failing"
    if lag_seconds is not None and lag_seconds > LAGGING_AFTER + lag_allowance:
        return "lagging"
    return "ok"


class StatusSampler:
    def __init__(self, store: Store, sinks: DeliveryFigures, config: Config, *,
                 clock: Callable[[], float] = time.time, history: int = HISTORY,
                 ownership: Ownership | None = None) -> None:
        self.store = store
        self.ownership = ownership
        self.sinks = sinks
        self.config = config
        self.clock = clock
        self._history = history
        self._started_at = clock()
        self._last_at: float | None = None
        self._last_head = store.head
        self._ingest_rate = 0.0
        self._ingest_history: deque[float] = deque(maxlen=history)
        self._last_delivered: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._histories: dict[str, deque[float]] = {}
        self._ages: OrderedDict[tuple[int, int], int] = OrderedDict()  # (epoch, seq) -> ms

    # ----------------------------------------------------------------- sampling

    async def tick(self) -> None:
        """Take a counter sample; rates are the differences to the previous one."""
        now = self.clock()
        head = self.store.head
        delivered = self.sinks.delivered_counts()
        if self._last_at is not None:
            elapsed = now - self._last_at
            self._ingest_rate = per_second(head - self._last_head, elapsed)
            self._ingest_history.append(self._ingest_rate)
            for integration_id, count in delivered.items():
                delta = counter_delta(count, self._last_delivered.get(integration_id, 0))
                self._rates[integration_id] = per_second(delta, elapsed)
                self._histories.setdefault(
                    integration_id, deque(maxlen=self._history)).append(self._rates[integration_id])
        for gone in set(self._histories) - set(delivered):
            self._histories.pop(gone, None)
            self._rates.pop(gone, None)
        self._last_at, self._last_head, self._last_delivered = now, head, delivered

    # ----------------------------------------------------------------- snapshot

    async def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        head = self.store.head
        store = self.store.health()
        usable = store.connected and store.error is None  # else reads would wait for it
        integrations = sorted(await self.store.list_integrations(), key=lambda i: i.id)
        owners: dict[str, str] = {}
        remote: dict[str, OwnedFigures] = {}
        if self.ownership is not None:
            owners, remote = self.ownership.owners(), remote_figures(self.ownership)
        rows = [_Row(i, self.sinks.sink_status(i.id), owners.get(i.id)) for i in integrations]
        for row in rows:
            row.remote = self._remote(row, remote)
        stored: dict[str, int] = {}
        if any(row.known_cursor is None for row in rows):
            stored = await self.store.cursors()
        rejected = await self.store.rejected_counts()
        for row in rows:
            row.cursor = row.known_cursor or stored.get(row.integration.id) or head + 1
        ages = await self._ages_of({row.position for row in rows if row.position <= head},
                                   usable)
        # One store read per integration that has replays (none for the rest).
        replays = {i.id: await self._replays(i, usable) for i in integrations if i.replays}
        return {
            "time": round(now, 3),
            "daemon": {"version": __version__, "pid": os.getpid(),
                       "uptime": round(now - self._started_at, 1)},
            "store": store.to_dict(),
            "head": head,
            "ingest_rate": self._ingest_rate,
            "ingest_history": list(self._ingest_history),
            "integrations": [self._integration(row, head, now, ages,
                                               rejected.get(row.integration.id, 0),
                                               replays.get(row.integration.id, []))
                             async for row in in_slices(rows)],
            "cluster": (cluster_section(self.ownership, now)
                        if self.ownership is not None else None),
        }

    def _remote(self, row: _Row, figures: dict[str, OwnedFigures]) -> OwnedFigures | None:
        """What another daemon announces of an integration it delivers (its figures
        stand in for the sink this daemon does not run)."""
        if (row.sink is None and self.ownership is not None and row.owner is not None
                and row.owner != self.ownership.instance):
            return figures.get(row.integration.id)
        return None

    async def _ages_of(self, positions: set[int], usable: bool) -> dict[int, int]:
        """The ingest time (ms) of the first event at or after each position: from the
        feed's tail, from what was found before, else one store read per position (none
        while the store cannot be reached: they would wait for it)."""
        found: dict[int, int] = {}
        epoch = self.store.log_epoch
        for position in sorted(positions):
            key = (epoch, position)
            at = self.sinks.ingested_at(position)
            if at is None:
                at = self._ages.get(key)
                if at is None and usable:
                    oldest = await self.store.read_events(position, 1, 1)
                    at = oldest[0].ingested_at if oldest else None
            if at is None:
                continue
            found[position] = at
            self._ages[key] = at
            self._ages.move_to_end(key)
        while len(self._ages) > AGES_KEPT:
            self._ages.popitem(last=False)
        return found

    def _integration(self, row: _Row, head: int, now: float, ages: dict[int, int],
                     rejected: int, replays: list[dict[str, Any]]) -> dict[str, Any]:
        integration, sink, remote = row.integration, row.sink, row.remote
        integration_id = integration.id
        position = row.position
        lag_events = max(0, head - position + 1)
        lag_seconds = None
        if lag_events and position in ages:
            lag_seconds = round(max(0.0, now - ages[position] / 1000), 1)
        stats = sink.stats if sink else None
        pipeline = sink.pipeline if sink else None
        last_error_at = stats.last_error_at if stats else None
        buffered = pipeline.buffered_bytes if pipeline else None
        since = pipeline.buffered_since if pipeline else None
        buffered_age = round(max(0.0, now - since), 1) if since is not None else None
        controls = integration.target.controls()
        return {
            "id": integration_id,
            "kind": integration.kind,
            "integration_type": integration.type,
            "status": integration.status,
            "health": health(
                status=integration.status, done=integration.done, lag_events=lag_events,
                lag_seconds=lag_seconds, last_error_at=last_error_at, now=now,
                lag_allowance=sink_type(integration.kind).lag_allowance(self.config),
                crashed=bool(sink and sink.crashed)),
            "target": integration.target.describe(),
            "max_rate": controls.max_rate,
            "ordering": controls.ordering,
            "auto_stopped": integration.auto_stop is not None,
            "stop_reason": integration.auto_stop,
            "cursor": row.cursor,
            "lag_events": lag_events,
            "lag_seconds": lag_seconds,
            "delivered": stats.delivered if stats else (remote.delivered if remote else None),
            "delivered_rate": (remote.delivered_rate if remote
                               else self._rates.get(integration_id, 0.0)),
            "delivered_history": list(self._histories.get(integration_id, ())),
            "failures": stats.failures if stats else None,
            "last_error": stats.last_error if stats else None,
            "last_error_cause": stats.last_cause if stats else None,
            "last_error_age": round(now - last_error_at, 1) if last_error_at else None,
            "in_flight": (pipeline.in_flight if pipeline
                          else remote.in_flight if remote else None),
            "crashes": sink.crashes if sink else None,
            "restart_in": sink.restart_in if sink else None,
            "rejected_events": rejected,
            "buffered_bytes": buffered,
            "buffered_age": buffered_age,
            "s3_open_file_bytes": buffered,
            "s3_open_file_age": buffered_age,
            "replays": replays,
            **({"owner": row.owner} if self.ownership is not None else {}),
        }

    async def _replays(self, integration: Integration, connected: bool) -> list[dict[str, Any]]:
        """Its replays as the API lists them, with the live count of those running here."""
        if not integration.replays:
            return []
        live = {}
        if isinstance(self.sinks, ReplayFiguresSource):
            live = self.sinks.replay_figures(integration.id)
        saved = await self.store.list_replay_progress(integration.id) if connected else {}
        shown = []
        for replay in reversed(integration.replays):
            view = codec.replay_to_api(replay, integration, saved.get(replay.id))
            figures = live.get(replay.id)
            if figures is not None and replay.active:
                view["delivered"] = max(view["delivered"], figures.delivered)
            view["in_flight"] = figures.in_flight if figures is not None else None
            shown.append(view)
        return shown


class _Row:
    """One integration while a snapshot is built: its record, its sink here (if any), its
    owner and what the owner announces of it, and where it stands."""

    __slots__ = ("cursor", "integration", "owner", "remote", "sink")

    def __init__(self, integration: Integration, sink: SinkStatus | None,
                 owner: str | None) -> None:
        self.integration = integration
        self.sink = sink
        self.owner = owner
        self.remote: OwnedFigures | None = None
        self.cursor = 0

    @property
    def known_cursor(self) -> int | None:
        """The cursor known without the store: the sink's, or its owner's announced one."""
        return ((self.sink.cursor if self.sink else None)
                or (self.remote.cursor if self.remote else None))

    @property
    def position(self) -> int:
        """Where it stands now (everything before is delivered or filtered out)."""
        return max(self.cursor, (self.sink.position if self.sink else None)
                   or (self.remote.position if self.remote else None) or self.cursor)
