"""How the integration service tells the supervisor that integrations changed.

The service writes integration records (it is their only writer); the
supervisor runs sinks from them. The only coupling is this feed: after every
committed change (create, update, start, stop, complete, expire, delete) the
service calls `notify(id)`, and the supervisor's reconcile task takes the set
of changed ids (`take()`), re-reads each record and starts, stops or restarts
that sink. Notifying is idempotent and never blocks the API.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from ..sinks.base import LeaseHold


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
