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
- Two tasks. The heartbeat (`_beat_forever`) renews every held lease at
  once, every `lease_ttl / 3`, with one write whatever their number
  (`storage/leases.py` and `storage/jetstream/lease.py` say how a heartbeat,
  a claim and expiry work). An accepted heartbeat moves every holding's
  deadline (its start + ttl - margin, monotonic); one refused because a
  lease of ours was claimed meanwhile makes the daemon check each lease on
  its own (`renew`) and drop the ones taken. One that cannot be made (NATS
  away) is retried; a lease past its deadline (`Holding.valid`) is then
  dropped — by then another daemon may have taken it. A heartbeat accepted
  after a deadline passed (nobody claimed anything of ours meanwhile: the
  heartbeat's compare-and-set says so) makes the lease valid again and tells
  the supervisor, so the sink that stopped by its own clock runs again:
  delivery resumes by itself.
- The balancer runs every `min(1 s, lease_ttl / 5)`: it announces this
  daemon (with its status, for the cluster view) when what it announces
  changed (at least every `ANNOUNCE_REFRESH`), reads every daemon's
  heartbeat and announcement (one small message per daemon), and keeps its
  own copy of the integration records and the leases. A plain NATS
  subscription to the record and lease subjects says which one any daemon
  wrote: that one is read again (`POKE_DELAY` later, and once more the
  round after, in case its batch had not committed yet), so a stop through
  one daemon stops delivery on another in milliseconds and a released
  lease is taken without waiting for the period. Hints may be lost (core
  NATS is at most once): every record and lease is read again every
  `FULL_LOOK_EVERY`. So an idle daemon reads a few small messages a second,
  not every record and lease. Then, on that copy, it
  - tells the `ChangeFeed` about every integration whose record changed
    since the last look, whichever daemon's API changed it (the feed is
    otherwise local: the service notifies only its own supervisor);
  - counts the live daemons (a heartbeat that changed within the TTL, by
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
  other's leases in turn. A heartbeat carries the data dir's token, so a
  newest heartbeat under our name with another token (in `TWIN_ROUNDS`
  rounds), or an announcement written by someone else in between ours
  (twice in a row), is logged as an error naming `jetstream.instance`.
- On a clean stop the supervisor stops every sink first; then `close()`
  releases what is still held and retires the announcement and the
  heartbeat, so the others take over at once instead of after a TTL.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec

from ..logs import kv
from ..model import Integration
from ..storage.base import Store, StoreUnavailable
from ..storage.leases import (
    STALE_ANNOUNCEMENT,
    Announcement,
    Heartbeat,
    LeaseBook,
    LeaseSeen,
    Snapshot,
)
from ..timeouts import move_on_after
from .cluster import Announced, OwnedFigures, encode_announcement
from .contracts import ChangeFeed, SinkActivity

log = logging.getLogger("eventstreamd.ownership")

ANNOUNCE_EVERY = 1.0  # seconds: the balancer's period, and the cluster view's refresh
ANNOUNCE_REFRESH = 30.0  # seconds: an unchanged announcement is written again this often
FULL_LOOK_EVERY = 10.0  # seconds between reads of every record and lease (hints may be lost)
POKE_DELAY = 0.05  # seconds between a record or lease written elsewhere and the next look
REREADS = 2  # rounds a hinted record or lease is read in (its batch may commit late)
FULL_LOOK_OVER = 64  # hinted ids beyond which one full look is cheaper
RENEWS_AT_ONCE = 32  # leases checked one by one at once, after a refused heartbeat
TWIN_ROUNDS = 3  # rounds our newest heartbeat bore another's token: two under one name


@dataclass
class Holding:
    """A lease this daemon holds (`sinks.base.LeaseHold`)."""

    integration_id: str
    seq: int  # the claim: what the sink's fences name
    renewed: float  # monotonic time the last accepted heartbeat (or the claim) started
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
        self._beats_seen: dict[str, tuple[int, float]] = {}
        # Our copy of every record and lease, kept by hints and full looks.
        self._records: dict[str, Integration] = {}
        self._leases: dict[str, LeaseSeen] = {}  # beat_seq 0: joined with the heartbeats
        self._hinted_records: dict[str, int] = {}  # id -> rounds it is still read in
        self._hinted_leases: dict[str, int] = {}
        self._full_look_at: float | None = None
        self.snapshot: Snapshot | None = None
        self.live: set[str] = {instance}
        self.share = 0
        self._closed = False
        self._poked = anyio.Event()
        self._twin_reported = False
        self._clobbered = 0
        self._twin_beats = 0
        self._announced: int | None = None  # our last announcement's sequence
        self._announced_content: bytes | None = None  # ... what it said, time aside
        self._announced_at = 0.0
        self._claims_seen: int | None = None  # the mark of claims on our leases, as known

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

    def _record_written(self, integration_id: str) -> None:
        self._hinted_records[integration_id] = REREADS
        self.poke()

    def _lease_written(self, integration_id: str) -> None:
        self._hinted_leases[integration_id] = REREADS
        self.poke()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            await self.book.watch(self._record_written, self._lease_written)
            await self.balance()
        except StoreUnavailable as exc:
            log.warning("cannot read the leases yet", extra=kv(error=str(exc)))
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat_forever, name="ownership:beat")
            while True:
                with move_on_after(self.period):
                    await self._poked.wait()
                if self._poked.is_set():
                    # Let the batch that poked commit, and fold a burst into one look.
                    await anyio.sleep(POKE_DELAY)
                    self._poked = anyio.Event()
                try:
                    await self.balance()
                except StoreUnavailable as exc:
                    log.info("cannot balance the integrations now", extra=kv(error=str(exc)))

    # ------------------------------------------------------------ heartbeat

    async def _beat_forever(self) -> None:
        while True:
            await self.beat()
            await anyio.sleep(self.renew_every)

    async def beat(self) -> None:
        """Renew every lease we hold at once (see the module docstring)."""
        started = self.clock()
        try:
            if self._claims_seen is None:
                self._claims_seen = await self.book.claims_seen(self.instance)
            accepted = await self.book.beat(self.instance, self._claims_seen, self.token)
            if not accepted:
                # A lease of ours was claimed since we looked (a freeze, a partition):
                # note the mark as it is now, then check every lease on its own.
                self._claims_seen = await self.book.claims_seen(self.instance)
        except StoreUnavailable as exc:
            for holding in list(self.held.values()):
                if not holding.valid():
                    self._drop(holding.integration_id, f"not renewed in time ({exc})")
            return
        if not accepted:
            log.warning("a lease of this daemon was claimed by another; checking each",
                        extra=kv(instance=self.instance, held=len(self.held)))
            limiter = anyio.CapacityLimiter(RENEWS_AT_ONCE)
            async with anyio.create_task_group() as tg:
                for holding in list(self.held.values()):
                    tg.start_soon(self._renew, holding, limiter)
            return
        for holding in list(self.held.values()):
            self._renewed(holding, started)

    def _renewed(self, holding: Holding, started: float) -> None:
        lapsed = not holding.valid()
        holding.renewed = max(holding.renewed, started)
        if lapsed and holding.valid():
            # Its sink stopped by its own clock while heartbeats failed (NATS away); the
            # lease is still ours, so the supervisor must look again.
            self.changes.notify(holding.integration_id)

    async def _renew(self, holding: Holding, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            started = self.clock()
            try:
                ok = await self.book.renew(holding.integration_id, holding.seq,
                                           self.instance, self.token)
            except StoreUnavailable as exc:
                if not holding.valid() and self.held.get(holding.integration_id) is holding:
                    self._drop(holding.integration_id, f"not renewed in time ({exc})")
                return
        if self.held.get(holding.integration_id) is not holding:
            return
        if ok:
            self._renewed(holding, started)
        else:
            self._drop(holding.integration_id, "taken, released or deleted")

    # -------------------------------------------------------------- balance

    async def balance(self) -> None:
        if self._closed:
            return
        await self._announce()
        await self._look()
        beats = await self.book.beats()
        announcements = await self.book.announcements()
        self.snapshot = Snapshot(self._leases, announcements, beats)
        self._check_twin(beats.get(self.instance))
        now = self.clock()
        stale = self._observe(beats, announcements, now)
        if stale:
            await self.book.forget(stale)
        running = {i.id: i for i in self._records.values() if i.running}
        for integration_id, holding in list(self.held.items()):
            seen = self._leases.get(integration_id)
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
            await self._claim(running, beats, now, self.share - len(active))

    async def _look(self) -> None:
        """Bring our copy of the records and leases up to date: the hinted ones, or all of
        them every `FULL_LOOK_EVERY` (and when many were hinted at once)."""
        now = self.clock()
        if (self._full_look_at is None or now - self._full_look_at >= FULL_LOOK_EVERY
                or len(self._hinted_records) + len(self._hinted_leases) > FULL_LOOK_OVER):
            self._full_look_at = now
            self._hinted_records.clear()
            self._hinted_leases.clear()
            records = await self.store.list_integrations()
            self._leases = dict(await self.book.leases())
            self._notice_changes({i.id: i for i in records}, full=True)
            return
        found: dict[str, Integration | None] = {}
        for integration_id in _take_round(self._hinted_records):
            found[integration_id] = await self.store.get_integration(integration_id)
        for integration_id in _take_round(self._hinted_leases):
            seen = await self.book.lease(integration_id)
            if seen.lease_seq:
                self._leases[integration_id] = seen
            else:
                self._leases.pop(integration_id, None)
        self._notice_changes(found, full=False)

    async def _announce(self) -> None:
        status = Announced(instance=self.instance, token=self.token, at=time.time(),
                           share=self.share, live=len(self.live),
                           owns={integration_id: OwnedFigures()
                                 for integration_id in sorted(self.held)})
        try:
            status = self.report(status)
        except Exception:  # the cluster view must never stop the leases
            log.exception("cannot build the status to announce")
        # Written when it says something new: an idle daemon's figures do not move.
        content = encode_announcement(msgspec.structs.replace(status, at=0.0, uptime=None))
        now = self.clock()
        if content == self._announced_content and now - self._announced_at < ANNOUNCE_REFRESH:
            return
        self._announced, clobbered = await self.book.announce(
            self.instance, encode_announcement(status), self._announced)
        self._announced_content, self._announced_at = content, now
        # Twice in a row, not once: one of our own writes whose answer was lost (NATS
        # away) looks the same.
        self._clobbered = self._clobbered + 1 if clobbered else 0
        if self._clobbered >= 2:
            self._report_twin()

    def _check_twin(self, beat: Heartbeat | None) -> None:
        if beat is not None and beat.token and self.token and beat.token != self.token:
            self._twin_beats += 1
            if self._twin_beats >= TWIN_ROUNDS:
                self._report_twin()

    def _report_twin(self) -> None:
        if not self._twin_reported:
            # Two daemons under one name would take each other's leases in turn.
            self._twin_reported = True
            log.error("another daemon announces itself under this instance name; give "
                      "each daemon its own jetstream.instance", extra=kv(instance=self.instance))

    def _notice_changes(self, found: dict[str, Integration | None], *, full: bool) -> None:
        """Tell the change feed about every record in `found` (all of them when `full`)
        that differs from our copy, and keep it."""
        ids = found.keys() | (self._records.keys() if full else set())
        for integration_id in ids:
            new = found.get(integration_id)
            old = self._records.get(integration_id)
            if new != old:
                self.changes.notify(integration_id)
            if new is None:
                self._records.pop(integration_id, None)
            else:
                self._records[integration_id] = new

    def _observe(self, beats: dict[str, Heartbeat], announcements: dict[str, Announcement],
                 now: float) -> list[Announcement]:
        """Note what changed since when; the live daemons; what daemons long dead left."""
        for integration_id, seen in self._leases.items():
            beat = beats.get(seen.holder) if seen.holder else None
            key = (seen.lease_seq, beat.seq if beat is not None else 0)
            before = self._leases_seen.get(integration_id)
            if before is None or before[0] != key:
                self._leases_seen[integration_id] = (key, now)
        for integration_id in self._leases_seen.keys() - self._leases.keys():
            del self._leases_seen[integration_id]
        live = {self.instance}
        for name, beat in beats.items():
            noted = self._beats_seen.get(name)
            if noted is None or noted[0] != beat.seq:
                self._beats_seen[name] = noted = (beat.seq, now)
            if not beat.retired and now - noted[1] < self.ttl:
                live.add(name)
        for name in self._beats_seen.keys() - beats.keys():
            del self._beats_seen[name]
        self.live = live
        newest = max((a.server_time for a in announcements.values()), default=0.0)
        return [entry for name, entry in announcements.items()
                if name not in live and newest - entry.server_time > STALE_ANNOUNCEMENT]

    def _claimable(self, seen: LeaseSeen, now: float) -> bool:
        if seen.holder in ("", self.instance) or (self.token and seen.token == self.token):
            return True  # free, released, deleted, or ours (or our data dir's) from before
        first = self._leases_seen.get(seen.integration_id)
        return first is not None and first[0] == seen.key and now - first[1] >= self.ttl

    async def _claim(self, running: dict[str, Integration], beats: dict[str, Heartbeat],
                     now: float, wanted: int) -> None:
        candidates = [(self._leases.get(i) or self.book.free(i)).beating(beats)
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
                continue  # another daemon was quicker, or the holder beat after all
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
        """After the sinks stopped: release every lease, retire the announcement and the
        heartbeat."""
        self._closed = True
        with move_on_after(5):
            for holding in list(self.held.values()):
                await self._release(holding)
            try:
                await self.book.retire(self.instance)
            except StoreUnavailable as exc:
                log.info("could not retire the announcement", extra=kv(error=str(exc)))


def _take_round(hinted: dict[str, int]) -> list[str]:
    """The hinted ids to read this round; each is read in `REREADS` rounds."""
    ids = list(hinted)
    for integration_id in ids:
        hinted[integration_id] -= 1
        if not hinted[integration_id]:
            del hinted[integration_id]
    return ids
