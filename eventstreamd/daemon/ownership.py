"""Ownership: which integrations this daemon delivers, when several share one store.

Decisions:
- Only with a store several daemons may share (one that has a `LeaseBook`,
  `storage/leases.py`: JetStream). With a store one daemon owns (LMDB) the
  supervisor runs every running integration, without a lease (`lease` is
  None, the fences are the incarnation's).
- Built with everything it reads: the lease book and the integration
  records (the store), the change feed, the table of held leases it shares
  with the supervisor (`HeldLeases`: the supervisor only reads it), the
  supervisor's sinks (`SinkActivity`) and the report that adds their figures
  to each announcement (`cluster.LocalReport`).
- Two tasks. The renewer renews every held lease every `lease_ttl / 3`
  (`storage/leases.py` and `storage/jetstream/lease.py` say how a renewal,
  a claim and expiry work).
  A renewal refused means the lease was taken, released or deleted: the
  integration is dropped at once. One that cannot be made (NATS away) is
  retried; once the lease is past its deadline (`Holding.valid`, the last
  successful renewal's start + ttl - margin, monotonic) it is dropped too —
  by then another daemon may have taken it. A renewal that succeeds after
  the deadline passed (nobody claimed it meanwhile: the compare-and-set says
  so) makes the lease valid again and tells the supervisor, so the sink that
  stopped by its own clock runs again: delivery resumes by itself.
- The balancer runs every `min(1 s, lease_ttl / 5)`: it announces this
  daemon (with its status, for the cluster view), reads every lease and
  announcement and the integration records, and
  - tells the `ChangeFeed` about every integration whose record changed
    since the last look, whichever daemon's API changed it (the feed is
    otherwise local: the service notifies only its own supervisor). A plain
    NATS subscription to the record and lease subjects makes it look again
    at once (`POKE_DELAY`) when any daemon writes one, so a stop through
    one daemon stops delivery on another in milliseconds, and a released
    lease is taken without waiting for the period; the period is the
    fallback when a hint is lost (core NATS is at most once);
  - counts the live daemons (an announcement that changed within the TTL, by
    this daemon's clock, plus itself) and the running integrations; its
    fair share is ceil(running / live);
  - below its share it claims free or expired leases of running
    integrations, in random order after a random pause (up to half a
    period), so that daemons that see the same free leases at once do not
    all ask for the same ones first; the claim is a compare-and-set, so at
    most one wins each;
  - above its share it gives the extras up gracefully: they are marked
    releasing (the supervisor stops their sinks: in-flight requests finish,
    the cursor is flushed under the still-valid lease), and once a sink has
    ended its lease is released, which any daemon may claim at once. The
    same happens to a held lease whose integration stopped or went away.
- The supervisor asks `lease(id)`: a sink runs only while its integration is
  held and not releasing; the lease's claim sequence is part of the sink's
  settings, so a lease lost and claimed again restarts the sink with the new
  fence.
- Instance names must be unique: two daemons under one name would take each
  other's leases in turn. Each announcement expects our previous one, so a
  name written by someone else in between (twice in a row) is logged as an
  error naming `jetstream.instance`.
- On a clean stop the supervisor stops every sink first; then `close()`
  releases what is still held and retires the announcement, so the others
  take over at once instead of after a TTL.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ..logs import kv
from ..model import Integration
from ..storage.base import Store, StoreUnavailable
from ..storage.leases import (
    STALE_ANNOUNCEMENT,
    Announcement,
    LeaseBook,
    LeaseSeen,
    Snapshot,
)
from .cluster import Announced, OwnedFigures, encode_announcement
from .contracts import ChangeFeed, SinkActivity

log = logging.getLogger("eventstreamd.ownership")

ANNOUNCE_EVERY = 1.0  # seconds: the cluster view's refresh
POKE_DELAY = 0.05  # seconds between a record or lease written elsewhere and the next look


@dataclass
class Holding:
    """A lease this daemon holds (`sinks.base.LeaseHold`)."""

    integration_id: str
    seq: int  # the claim: what the sink's fences name
    renewed: float  # monotonic time the last successful renewal (or the claim) started
    ttl: float
    margin: float
    releasing: bool = False
    lost: bool = False
    clock: Callable[[], float] = time.monotonic

    @property
    def deadline(self) -> float:
        return self.renewed + self.ttl - self.margin

    def valid(self) -> bool:
        return not self.lost and self.clock() < self.deadline


class HeldLeases(dict[str, Holding]):
    """The leases this daemon holds, by integration id: `Ownership` writes it, the
    supervisor reads it (`contracts.Leases`)."""

    def lease(self, integration_id: str) -> Holding | None:
        """The lease a sink of this integration may run under, or None."""
        holding = self.get(integration_id)
        if holding is None or holding.releasing or not holding.valid():
            return None
        return holding


Report = Callable[[Announced], Announced]


class Ownership:
    def __init__(self, book: LeaseBook, store: Store, changes: ChangeFeed, held: HeldLeases,
                 *, sinks: SinkActivity, report: Report, instance: str, ttl: float,
                 token: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token  # this daemon's data dir (lease.py: a restart resumes at once)
        self.book = book
        self.store = store
        self.changes = changes
        self.held = held
        self.sinks = sinks
        self.report = report
        self.instance = instance
        self.ttl = ttl
        self.clock = clock
        self.renew_every = ttl / 3
        self.margin = max(0.1 * ttl, 0.2)  # scheduling and clock-rate slack
        self.period = min(ANNOUNCE_EVERY, ttl / 5)
        # What was seen and since when (this daemon's clock): expiry by observation.
        self._leases_seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._instances_seen: dict[str, tuple[int, float]] = {}
        self._records: dict[str, Integration] = {}
        self.snapshot: Snapshot | None = None
        self.live: set[str] = {instance}
        self.share = 0
        self._closed = False
        self._poked = anyio.Event()
        self._twin_reported = False
        self._clobbered = 0
        self._announced: int | None = None  # our last announcement's sequence

    # ---------------------------------------------------------------- status

    def owners(self) -> dict[str, str]:
        """Integration id -> the instance holding its lease (as last read)."""
        if self.snapshot is None:
            return {}
        found = {i: s.holder for i, s in self.snapshot.leases.items() if s.holder}
        found.update({i: self.instance for i in self.held})
        return found

    def _drop(self, integration_id: str, why: str) -> None:
        holding = self.held.pop(integration_id, None)
        if holding is None:
            return
        holding.lost = True
        log.warning("lease lost; the integration's sink stops here", extra=kv(
            integration=integration_id, instance=self.instance, reason=why))
        self.changes.notify(integration_id)

    # ------------------------------------------------------------------ run

    def poke(self) -> None:
        """Look again soon: a record or a lease was written somewhere."""
        self._poked.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            await self.book.watch(self.poke)
            await self.balance()
        except StoreUnavailable as exc:
            log.warning("cannot read the leases yet", extra=kv(error=str(exc)))
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_forever, name="ownership:renew")
            while True:
                with anyio.move_on_after(self.period):
                    await self._poked.wait()
                if self._poked.is_set():
                    # Let the batch that poked commit, and fold a burst into one look.
                    await anyio.sleep(POKE_DELAY)
                    self._poked = anyio.Event()
                try:
                    await self.balance()
                except StoreUnavailable as exc:
                    log.info("cannot balance the integrations now", extra=kv(error=str(exc)))

    async def _renew_forever(self) -> None:
        while True:
            await anyio.sleep(self.renew_every / 2)
            due = [h for h in self.held.values()
                   if self.clock() - h.renewed >= self.renew_every]
            if due:
                async with anyio.create_task_group() as tg:
                    for holding in due:
                        tg.start_soon(self._renew, holding)

    async def _renew(self, holding: Holding) -> None:
        started = self.clock()
        try:
            ok = await self.book.renew(holding.integration_id, holding.seq, self.instance)
        except StoreUnavailable as exc:
            if not holding.valid() and self.held.get(holding.integration_id) is holding:
                self._drop(holding.integration_id, f"not renewed in time ({exc})")
            return
        if self.held.get(holding.integration_id) is not holding:
            return
        if ok:
            lapsed = not holding.valid()
            holding.renewed = max(holding.renewed, started)
            if lapsed and holding.valid():
                # Its sink stopped by its own clock while renewals failed (NATS away);
                # the lease is still ours, so the supervisor must look again.
                self.changes.notify(holding.integration_id)
        else:
            self._drop(holding.integration_id, "taken, released or deleted")

    # -------------------------------------------------------------- balance

    async def balance(self) -> None:
        if self._closed:
            return
        await self._announce()
        records = await self.store.list_integrations()
        snapshot = await self.book.snapshot()
        self.snapshot = snapshot
        now = self.clock()
        self._notice_changes(records)
        stale = self._observe(snapshot, now)
        if stale:
            await self.book.forget(stale)
        running = {i.id: i for i in records if i.running}
        for integration_id, holding in list(self.held.items()):
            seen = snapshot.leases.get(integration_id)
            # Newer than our claim: claimed by another daemon, or deleted. (Older can be a
            # replica that has not caught up with our claim yet: DIRECT.GET reads any.)
            if seen is not None and seen.lease_seq > holding.seq:
                self._drop(integration_id, "claimed by another daemon, or deleted")
        await self._release_unwanted(running)
        self.share = math.ceil(len(running) / max(1, len(self.live))) if running else 0
        active = [h for h in self.held.values() if not h.releasing]
        if len(active) > self.share:
            extras = random.sample(active, len(active) - self.share)
            for holding in extras:
                holding.releasing = True
                log.info("giving an integration up to balance the daemons", extra=kv(
                    integration=holding.integration_id, share=self.share,
                    live=len(self.live)))
                self.changes.notify(holding.integration_id)
        elif len(active) < self.share:
            await self._claim(running, snapshot, now, self.share - len(active))

    async def _announce(self) -> None:
        status = Announced(instance=self.instance, token=self.token, at=time.time(),
                           share=self.share, live=len(self.live),
                           owns={integration_id: OwnedFigures()
                                 for integration_id in sorted(self.held)})
        try:
            status = self.report(status)
        except Exception:  # the cluster view must never stop the leases
            log.exception("cannot build the status to announce")
        self._announced, clobbered = await self.book.announce(
            self.instance, encode_announcement(status), self._announced)
        # Twice in a row, not once: one of our own writes whose answer was lost (NATS
        # away) looks the same.
        self._clobbered = self._clobbered + 1 if clobbered else 0
        if self._clobbered >= 2 and not self._twin_reported:
            # Two daemons under one name would take each other's leases in turn.
            self._twin_reported = True
            log.error("another daemon announces itself under this instance name; give "
                      "each daemon its own jetstream.instance", extra=kv(instance=self.instance))

    def _notice_changes(self, records: list[Integration]) -> None:
        # The whole record: a change that restarts no sink (a rotated signing secret)
        # must still reach the daemon delivering it.
        current = {i.id: i for i in records}
        for integration_id in current.keys() | self._records.keys():
            if current.get(integration_id) != self._records.get(integration_id):
                self.changes.notify(integration_id)
        self._records = current

    def _observe(self, snapshot: Snapshot, now: float) -> list[Announcement]:
        """Note what changed since when; the live daemons; announcements long dead."""
        for integration_id, seen in snapshot.leases.items():
            before = self._leases_seen.get(integration_id)
            if before is None or before[0] != seen.key:
                self._leases_seen[integration_id] = (seen.key, now)
        for integration_id in self._leases_seen.keys() - snapshot.leases.keys():
            del self._leases_seen[integration_id]
        live = {self.instance}
        stale = []
        newest = max((a.server_time for a in snapshot.instances.values()), default=0.0)
        for name, entry in snapshot.instances.items():
            noted = self._instances_seen.get(name)
            if noted is None or noted[0] != entry.seq:
                self._instances_seen[name] = noted = (entry.seq, now)
            if not entry.deleted and now - noted[1] < self.ttl:
                live.add(name)
            elif name != self.instance and newest - entry.server_time > STALE_ANNOUNCEMENT:
                stale.append(entry)
        self.live = live
        return stale

    def _claimable(self, seen: LeaseSeen, now: float) -> bool:
        if seen.holder in ("", self.instance) or (self.token and seen.token == self.token):
            return True  # free, released, deleted, or ours (or our data dir's) from before
        first = self._leases_seen.get(seen.integration_id)
        return first is not None and first[0] == seen.key and now - first[1] >= self.ttl

    async def _claim(self, running: dict[str, Integration], snapshot: Snapshot, now: float,
                     wanted: int) -> None:
        candidates = [snapshot.leases.get(i) or self.book.free(i)
                      for i in running if i not in self.held]
        candidates = [c for c in candidates if self._claimable(c, now)]
        if not candidates:
            return
        random.shuffle(candidates)
        await anyio.sleep(random.uniform(0, self.period / 2))  # no stampede on a free lease
        for seen in candidates[:wanted]:
            started = self.clock()
            claim = await self.book.claim(seen, self.instance,
                                          running[seen.integration_id].incarnation, self.token)
            if claim is None:
                continue  # another daemon was quicker, or the holder renewed after all
            self.held[seen.integration_id] = Holding(
                seen.integration_id, claim, started, self.ttl, self.margin, clock=self.clock)
            log.info("lease claimed", extra=kv(
                integration=seen.integration_id, instance=self.instance, claim=claim,
                previous=seen.holder or None))
            self.changes.notify(seen.integration_id)

    async def _release_unwanted(self, running: dict[str, Integration]) -> None:
        for integration_id, holding in list(self.held.items()):
            if integration_id not in running and not holding.releasing:
                holding.releasing = True
                self.changes.notify(integration_id)
            if holding.releasing and not self.sinks.sink_running(integration_id):
                await self._release(holding)

    async def _release(self, holding: Holding) -> None:
        self.held.pop(holding.integration_id, None)
        holding.lost = True
        try:
            released = await self.book.release(holding.integration_id, holding.seq)
        except StoreUnavailable as exc:
            log.info("could not release a lease; it expires instead", extra=kv(
                integration=holding.integration_id, error=str(exc)))
            return
        log.info("lease released", extra=kv(integration=holding.integration_id,
                                            instance=self.instance, released=released))

    async def close(self) -> None:
        """After the sinks stopped: release every lease, retire the announcement."""
        self._closed = True
        with anyio.move_on_after(5):
            for holding in list(self.held.values()):
                await self._release(holding)
            try:
                await self.book.retire(self.instance)
            except StoreUnavailable as exc:
                log.info("could not retire the announcement", extra=kv(error=str(exc)))
