"""How the daemon's parts talk: the change feed, and the protocols each part is built with.

The change feed: the service writes integration records (it is their only writer); the
supervisor runs sinks from them. The only coupling is this feed: after every
committed change (create, update, start, stop, complete, expire, delete) the
service calls `notify(id)`, and the supervisor's reconcile task takes the set
of changed ids (`take()`), re-reads each record and starts, stops or restarts
that sink. Notifying is idempotent and never blocks the API.

The protocols let each part be built with what it reads, without knowing the
part that provides it: the supervisor reads `Leases` (ownership.py's held
leases, when several daemons share the store); status, /metrics and the
ownership balancer read the supervisor's sinks (`SinkStatusSource`,
`SinkActivity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio

from ..sinks.base import LeaseHold, PipelineStatus, SinkStats


class ChangeFeed:
    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._wake = anyio.Event()

    def notify(self, integration_id: str) -> None:
        self._dirty.add(integration_id)
        self._wake.set()

    async def take(self) -> set[str]:
        """Wait for at least one changed id; every id changed since the last call."""
        await self._wake.wait()
        self._wake = anyio.Event()
        dirty, self._dirty = self._dirty, set()
        return dirty


class Leases(Protocol):
    """Which integrations this daemon may deliver, when several daemons share one store
    (`ownership.py`); absent with LMDB, where one daemon delivers them all."""

    def lease(self, integration_id: str) -> LeaseHold | None: ...


@dataclass(frozen=True)
class SinkStatus:
    """A running sink's live figures (the status snapshot's source)."""

    stats: SinkStats
    crashes: int
    crashed: bool  # waiting to restart after a crash
    restart_in: float | None
    cursor: int | None  # the last cursor the sink saved
    pipeline: PipelineStatus
    # Where it stands now (everything before is delivered or filtered out), saved or not.
    position: int | None = None


class SinkStatusSource(Protocol):
    def sink_status(self, integration_id: str) -> SinkStatus | None: ...


@dataclass(frozen=True)
class ReplayFigures:
    """A running replay's live figures (the status snapshot's)."""

    delivered: int  # up to where it stands now, saved or not
    in_flight: int | None
    crashes: int


@runtime_checkable
class ReplayFiguresSource(Protocol):
    """The supervisor's replays, by integration (replay_runs.py)."""

    def replay_figures(self, integration_id: str) -> dict[str, ReplayFigures]: ...


class DeliveryFigures(SinkStatusSource, Protocol):
    """What status reads of the supervisor beyond each sink: the delivered counters of
    every sink at once (the rates' samples, once a second), and the ingest time of an
    event the shared feed holds in memory (the age of the oldest undelivered one)."""

    def delivered_counts(self) -> dict[str, int]: ...

    def ingested_at(self, seq: int) -> int | None: ...


class SinkActivity(SinkStatusSource, Protocol):
    """What the ownership balancer reads of the supervisor: whether a sink still runs (a
    lease given up is released once its sink has ended) and its figures."""

    def sink_running(self, integration_id: str) -> bool: ...
