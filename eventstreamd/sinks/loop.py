"""The common sink loop: read the log from the integration's cursor, filter, hand on, advance.

Decisions:
- The loop owns what every target shares: where delivery starts, bounded
  reads, filtering, the end of a temporary integration, stop, and writing the
  cursor. What happens to a matching event is the *pipeline*'s business
  (`sinks/base.py`): the webhook pipeline POSTs it in a bounded window of
  concurrent requests, the S3 pipeline spools it into a file. The pipeline
  says how far the cursor may safely move (`safe_cursor`). The loop is also
  the pipeline's `SinkContext`.
- Reading is a `LogReader` on the daemon's shared `LogFeed` (feed.py): near
  the head every sink gets the same batches from memory, read once for all,
  and a batch its filter cannot match is skipped whole; a sink waiting at the
  head is woken only by a batch it may match, and never by the clock unless
  its pipeline asked for a tick (`Pipeline.tick` returns when it next needs
  one: an S3 file's rotation). Sinks behind the feed's tail read on their own
  under the daemon's read budget. A step's batch is dropped once handed on
  (`_step`), so nothing read stays referenced across a suspension.
- The cursor is written by one flusher task, by bound rather than per event:
  when `cursor_every` events' worth of progress has accumulated, when
  `cursor_interval` has passed since the last save, or at once when the
  pipeline is blocked waiting for it (its window of unsaved events is full).
  While one write is in flight further progress accumulates, so cursor writes
  cost little and keep fsyncs off the delivery path; a crash re-reads at most
  what moved since the last save.
- Progress that only skipped events (filtered out, nothing handed on since
  the durable cursor) is saved lazily, at most every `SKIP_SAVE_INTERVAL` and
  at stop: nothing was delivered, so a crash re-reads those events at no
  delivery cost, and a thousand filtered-out integrations do not write a
  thousand cursors per commit. With nothing unsaved the flusher sleeps until
  progress (or the feed moving past a parked sink) wakes it: an idle sink
  costs no wake-ups at all. `live_cursor` is where the sink really stands
  (status's lag), whether or not it was saved yet.
- Where delivery starts: the stored cursor (the integration service applied
  the restart-window rule to it when the integration was started), skipping
  past events that retention pruned (logged with the count).
- A cursor past the log's newest event means the log is not the one it was
  counted in: a JetStream stream deleted and created anew, an LMDB data dir
  restored from an older copy. Left alone, the sink would wait for the new
  log to grow past it and silently skip everything before (`ok, lag 0`).
  So where a sink starts, the cursor is checked against the head
  (`_resume_past_head`): past it, the store says where to go on
  (`Store.resume_past_head`), and the jump is a WARNING, an integration log
  entry naming the gap (`cursor_reset`) and a counted `cursor_resets`. While
  it runs, a log replaced under the daemon (the store's `log_epoch` moves)
  reaches the sink through the feed as a step that says so: the loop ends
  with `restart_wanted`, the supervisor starts it again at once, and that
  start makes the check (a pipeline's window and files are kept in sequence
  order; they are not rewound in place). A temporary
  integration ends at the first event ingested after `ends_at` (or when the
  log is drained and `ends_at` has passed).
- Every write a sink makes (cursor, logs, rejected events, its own state)
  carries the integration's `Fence`: a sink finishing after a DELETE never
  writes into a new integration that reuses the id, nor a daemon that lost
  the integration's lease (several daemons on one JetStream) after another
  claimed it. A refused write stops the sink; so does a lease past its
  holder's own deadline, before the next delivery attempt (`may_deliver`).
- A pipeline that stays full for `HOLD_LIMIT` while a step is handed on (a
  receiver that does not answer) gives the rest of the step back (`wait_room`
  says no, `accept` returns what it took): the loop lets go of those events
  and of their read budget, and reads them again once there is room. So a
  stuck integration holds no more than its pipeline's window, and never the
  budget other integrations catching up need.
- The same loop reads for a replay (`sinks/replay.py`): what it reads and
  where its cursor and state are kept are parameters (`progress.py`:
  `Reading`, `Progress`), its pipeline is the replay's own, and the end of
  its range is the outcome "completed", as for a temporary integration. A
  replay's writes carry its integration's fence.
- Stop: nothing new is handed on; the pipeline finishes what it can within
  the grace period (requests in flight, an open file's upload), the cursor is
  flushed, and whatever did not finish stays after the cursor for next time.
- A pipeline that gives up (`give_up`: every delivery attempt has failed for
  the integration's `stop_after_failing`) stops the sink like a stop request;
  `run()` then answers `gave_up` and the supervisor has the integration
  stopped through the integration service.
- One event never stalls an integration: an event the pipeline can never
  send (a receiver's 400, or a reason on our side that retrying cannot cure:
  it cannot be encoded, its id cannot be a header, its tenant cannot be part
  of a key) is *set aside* (`set_aside`) as a rejected event, with the
  reason, inspectable and retryable through the API, and delivery goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import anyio
import anyio.lowlevel

from ..logs import kv
from ..model import Fence, Integration, LogEntry, RejectedEvent, StoredEvent
from ..storage.base import Store, StoreFull
from ..timeouts import move_on_after
from ..timeutil import now_iso, parse_rfc3339, to_ms
from .base import Clock, LeaseHold, Outcome, Pipeline, SinkStats
from .feed import LogFeed, LogReader, Step
from .filters import EventFilter
from .progress import LiveProgress, Progress, Reading

log = logging.getLogger("eventstreamd.sink")

BLOCKED_POLL = 0.2  # seconds; how often `wait_room` looks again while a step is held
CURSOR_RETRY = 1.0  # seconds between cursor writes while the store is full
SKIP_SAVE_INTERVAL = 30.0  # seconds; how long progress that only skipped may stay unsaved
HOLD_LIMIT = 1.0  # seconds a full pipeline may keep the rest of a step waiting (wait_room)
REJECTED_NAMESPACE = uuid.UUID("5b0c6a86-1f0e-4b8e-9d43-8a3c8f1f2a10")


def rejected_id(integration_id: str, event: StoredEvent) -> str:
    """Deterministic, so a redelivered and re-rejected event replaces its entry."""
    return str(uuid.uuid5(REJECTED_NAMESPACE, f"{integration_id}/{event.seq}/{event.id}"))


def resume_position(cursor: int, head: int, stopped_at_ms: int | None, now_ms: int,
                    restart_window_ms: int) -> tuple[int, int]:
    """Where a (re)started integration resumes, and how many events it skips.

    After a stop longer than the restart window it skips to just past the head.
    """
    if stopped_at_ms is not None and now_ms - stopped_at_ms > restart_window_ms:
        position = head + 1
        return position, max(0, position - cursor)
    return cursor, 0


def live_reading(integration: Integration) -> Reading:
    """What an integration's live sink reads: its filter, from its cursor (after the head
    when it has none), until a temporary integration's `ends_at`."""
    ends_ms = (to_ms(parse_rfc3339(integration.ends_at))
               if integration.type == "temporary" and integration.ends_at else None)
    return Reading(EventFilter.of(integration.filter), ends_ms=ends_ms)


class SinkLoop:
    def __init__(self, *, store: Store, integration: Integration, pipeline: Pipeline,
                 stop_grace: float, clock: Clock = time.time,
                 stats: SinkStats | None = None, lease: LeaseHold | None = None,
                 cursor_every: int = 1000, cursor_interval: float = 0.2,
                 feed: LogFeed | None = None, reading: Reading | None = None,
                 progress: Progress | None = None, name: str | None = None) -> None:
        self.store = store
        # A loop built alone (no daemon's feed) reads through a feed of its own.
        self._own_feed = feed is None
        self.feed = feed if feed is not None else LogFeed(store)
        self.reader: LogReader | None = None
        self._integration = integration
        self.integration_id = integration.id
        self.name = name or integration.id  # in task names and log lines (a replay's differs)
        self.lease = lease
        self.fence: Fence = integration.fence(lease.seq if lease is not None else None)
        self.pipeline = pipeline
        self._stop_grace = stop_grace
        self._clock = clock
        self.reading = reading if reading is not None else live_reading(integration)
        self.filter = self.reading.filter
        self.progress = progress if progress is not None else LiveProgress(store, integration.id)
        self._stopping = anyio.Event()
        self._stats = stats if stats is not None else SinkStats(started_at=clock())
        self.durable_cursor = 0  # last cursor committed to the store
        # Where the last step that handed something on (or reported pruned events)
        # ended: progress up to it is saved promptly, beyond it only lazily.
        self._handed_end = 0
        self._changed = anyio.Event()
        self._cursor_every = cursor_every
        self._cursor_interval = cursor_interval
        self._urgent = anyio.Event()
        self._nudge = anyio.Event()  # the flusher's: progress, urgency or the feed moving
        self._handing_on = False
        self._flushing = anyio.Lock()
        self.rounds = 0  # dispatch rounds run (an idle sink runs none)
        self.restart_wanted = False  # the log was replaced under the sink: start it again
        self.gave_up: str | None = None  # why the pipeline gave up (`give_up`)

    @property
    def read_position(self) -> int:
        """The next sequence number to read."""
        return self.reader.position if self.reader is not None else 0

    @property
    def live_cursor(self) -> int:
        """Where the sink stands now: everything before it is delivered or filtered out,
        whether or not a cursor write has said so yet."""
        if self.reader is None:
            return self.durable_cursor
        return max(self.durable_cursor, self.pipeline.safe_cursor(self.reader.live_position))

    # ------------------------------------------------------------ SinkContext

    @property
    def integration(self) -> Integration:
        return self._integration

    @property
    def stopping(self) -> anyio.Event:
        return self._stopping

    @property
    def stats(self) -> SinkStats:
        return self._stats

    def clock(self) -> float:
        return self._clock()

    def request_stop(self) -> None:
        self._stopping.set()
        if self.reader is not None:
            self.reader.interrupt()
        self._flush_soon()
        self.progressed()

    def progressed(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        self._nudge.set()

    async def wait_progress(self) -> None:
        await self._changed.wait()

    def record_failure(self, reason: str, cause: str | None = None) -> None:
        self._stats.record_failure(reason, self._clock(), cause)

    async def sleep_unless_stopping(self, delay: float) -> bool:
        with move_on_after(delay):
            await self._stopping.wait()
        return self._stopping.is_set()

    def may_deliver(self) -> bool:
        if self.lease is None or self.lease.valid():
            return True
        if not self._stopping.is_set():
            log.warning("lease expired before it was renewed; the sink stops delivering",
                        extra=kv(integration=self.integration_id))
            self.request_stop()
        return False

    def give_up(self, reason: str) -> None:
        if self.gave_up is None:
            self.gave_up = reason
            log.warning("deliveries have failed for too long; the integration stops",
                        extra=kv(integration=self.integration_id))
        self.request_stop()

    async def add_log(self, action: str, reason: str) -> None:
        """An integration log entry; one that cannot be kept because the store is full is
        dropped with a warning (better than stalling delivery while space is freed)."""
        try:
            await self._held(await self.store.add_log(self.fence,
                                                      LogEntry(now_iso(), action, reason)))
        except StoreFull:
            log.warning("integration log entry dropped: the store is full",
                        extra=kv(integration=self.integration_id, action=action))

    async def set_aside(self, event: StoredEvent, reason: str, *, status: int | None = None,
                        deliverable: bool = True, attempts: int | None = None) -> None:
        entry = RejectedEvent(
            id=rejected_id(self.integration_id, event), created_at=now_iso(), seq=event.seq,
            event_id=event.id, reason=reason, body=event.body, status=status,
            deliverable=deliverable, attempts=attempts, trace=event.trace)
        what = f"rejected with HTTP {status}" if status is not None else "set aside"
        message = f"Event {event.id} ({event.name}) was {what}: {reason}"
        await self._held(await self.store.add_rejected(
            self.fence, entry, LogEntry(entry.created_at, "event_rejected", message)))
        self._stats.rejected += 1
        log.info("event set aside as rejected", extra=kv(
            integration=self.integration_id, seq=event.seq, event_id=event.id,
            rejected_id=entry.id, status=status, attempts=attempts, reason=reason[:200]))

    async def save_state(self, state: dict[str, object]) -> bool:
        return await self._held(await self.progress.save_state(self.fence, state))

    async def load_state(self) -> dict[str, object] | None:
        return await self.progress.load_state()

    async def read_events(self, from_seq: int, limit: int, max_bytes: int) -> list[StoredEvent]:
        return await self.store.read_events(from_seq, limit, max_bytes)

    async def _held(self, written: bool) -> bool:
        """A fenced write's outcome: when refused, the integration is no longer ours."""
        if not written and not self._stopping.is_set():
            log.info("integration gone or replaced, or its lease lost; its sink stops",
                     extra=kv(integration=self.integration_id))
            self.request_stop()
        return written

    # --------------------------------------------------------------------- run

    async def run(self) -> Outcome:
        cursor = await self.progress.load_cursor()
        reading = self.reading
        start = cursor if cursor is not None else (
            reading.first if reading.first is not None else self.store.head + 1)
        start = await self._resume_past_head(start)
        self.durable_cursor = self._handed_end = start
        self.reader = LogReader(self.feed, start, self.filter, ends_ms=reading.ends_ms,
                                end_seq=reading.end_seq, clock=self._clock)
        if self._stopping.is_set():
            self.reader.interrupt()
        outcome: Outcome = "stopped"
        try:
            async with anyio.create_task_group() as tg:
                if self._own_feed:
                    tg.start_soon(self.feed.run, name=f"feed:{self.name}")
                await self.pipeline.open(self)
                tg.start_soon(self.pipeline.serve, self, name=f"serve:{self.name}")
                tg.start_soon(self._flush_forever, name=f"cursor:{self.name}")
                outcome = await self._dispatch()
                await self.pipeline.close(self, outcome, self._stop_grace)
                self.reader.close()  # takes along what waiting at the head passed
                with contextlib.suppress(StoreFull):  # then it is redelivered: at least once
                    await self._flush()
                tg.cancel_scope.cancel()
        finally:
            self.reader.close()
            self.feed.forget_moved(self)
            # After a crash too: the pipeline's client and open files are released.
            with anyio.CancelScope(shield=True), move_on_after(self._stop_grace):
                await self.pipeline.release()
        if self.gave_up is not None:
            return "gave_up"
        if outcome == "completed" and self._stopping.is_set():
            outcome = "stopped"  # stopped before the last events were finished
        return outcome

    async def _dispatch(self) -> Outcome:
        pipeline = self.pipeline
        while not self._stopping.is_set():
            self.rounds += 1
            tick_at = await pipeline.tick(self)
            if pipeline.blocked():
                # Until progress (an answer, an upload, a durable cursor) or the tick the
                # pipeline asked for: a blocked sink does not poll either.
                await self._wait_room_once(self._delay_until(tick_at))
                continue
            if self._stopping.is_set():
                break
            done = await self._step(tick_at)
            if done is not None:
                return done
            if (self._handed_end > self.durable_cursor
                    and self.read_position - self.durable_cursor >= self._cursor_every):
                self._flush_soon()
            # Reading an LMDB batch and handing it on need not suspend at all: without this
            # a sink catching up (an S3 file spooling) would hold the event loop for as long
            # as the backlog lasts, and its own uploads, other sinks and the API would wait.
            await anyio.lowlevel.checkpoint()
        return "stopped"

    async def _step(self, tick_at: float | None) -> Outcome | None:
        """Read the next matching events and hand them on; "completed" when the range of a
        temporary integration is done, "stopped" when stopping cut it short. The step (and
        the batch it came from) is not referenced once this returns."""
        reader = self.reader
        assert reader is not None
        step = await reader.next(until=tick_at)
        if step is None:
            return None  # the pipeline's tick is due, or stopping
        if step.replaced:
            log.info("the event log was replaced under the sink; it starts again",
                     extra=kv(integration=self.integration_id, head=self.store.head,
                              position=reader.position))
            self.restart_wanted = True
            return "stopped"
        try:
            if step.pruned:
                await self._report_pruned(step.pruned)
                self._handed_end = step.end
            stopped_at = None
            if step.events:
                # Told before: the pipeline may finish them (and the cursor pass them)
                # while they are being handed on.
                self.progress.handed(step.events)
                stopped_at = await self._hand_on(step)
                if stopped_at is not None:
                    self.progress.taken_back(stopped_at)
            reader.finish(step, stopped_at)
        finally:
            if step.reservation is not None:  # a crash while handing on
                step.reservation.release()
        if stopped_at is not None:
            # Cut short: stopping, or a pipeline that stayed full (read again later).
            return "stopped" if self._stopping.is_set() else None
        self.progressed()
        return "completed" if step.completed else None

    async def _hand_on(self, step: Step) -> int | None:
        """Hand the step's events to the pipeline, per batch (one call, not one per
        event); None when all were taken, else the seq of the first not taken (stopping,
        or a pipeline full for longer than `HOLD_LIMIT`, cut it short)."""
        matching = step.events
        if any(e.problem is not None for e in matching):
            rest = await self._set_aside_problems(matching)
            if rest is None:
                return matching[0].seq  # conservative: set-asides are idempotent
            matching = rest
        self._handed_end = step.end
        self._handing_on = True
        try:
            taken = await self.pipeline.accept(matching, self) if matching else 0
        finally:
            self._handing_on = False
        if taken < len(matching):
            return matching[taken].seq
        return None

    async def _set_aside_problems(self, events: list[StoredEvent]) -> list[StoredEvent] | None:
        """Events an older version stored that no sink can send (found when the log was
        migrated) are set aside at once; the rest go on. None when stopping."""
        rest = []
        for event in events:
            if event.problem is None:
                rest.append(event)
                continue
            while True:
                try:
                    await self.set_aside(event, event.problem, deliverable=False)
                    break
                except StoreFull:
                    if await self.sleep_unless_stopping(CURSOR_RETRY):
                        return None
        return rest

    async def wait_room(self) -> bool:
        """For a pipeline whose window is full: ask for the cursor if that is what it
        waits for, and wait for progress. False when stopping, or when the window stayed
        full for `HOLD_LIMIT` seconds while a step was being handed on: the loop then lets
        go of the rest of the step (read again once there is room) instead of holding
        events, and read budget, for a receiver that does not answer."""
        give_up = time.monotonic() + HOLD_LIMIT if self._handing_on else None
        while self.pipeline.blocked() and not self._stopping.is_set():
            if give_up is not None and time.monotonic() >= give_up:
                return False
            await self._wait_room_once(BLOCKED_POLL)
        return not self._stopping.is_set()

    async def _wait_room_once(self, within: float | None) -> None:
        if self.pipeline.waits_for_cursor():
            self._flush_soon()
        with move_on_after(within):
            await self.wait_progress()

    def _delay_until(self, at: float | None) -> float | None:
        """Seconds until `at` by the sink's clock (None: no time set)."""
        return None if at is None else max(0.0, at - self._clock())

    async def _resume_past_head(self, position: int) -> int:
        """`position`, or where to go on when it is past the log's newest event (see the
        module docstring): reported, counted, and saved as the cursor."""
        if position <= self.store.head + 1:
            return position
        resume = await self.store.resume_past_head(position)
        if resume is None:  # the cached head was behind the log
            return position
        head = self.store.head
        self._stats.cursor_resets += 1
        log.warning("cursor past the newest event in the log; delivery goes on from where "
                    "the log now has events", extra=kv(
                        integration=self.integration_id, cursor=position, head=head,
                        resume=resume))
        await self.add_log("cursor_reset", (
            f"The cursor (next event: seq {position:,}) was past the newest event in the log "
            f"(seq {head:,}): the event log was replaced or restored from an older copy. "
            f"Delivery goes on from seq {resume:,}; what the earlier log held from seq "
            f"{position:,} on is not in this one and cannot be delivered."))
        with contextlib.suppress(StoreFull):  # else saved with the first progress
            await self._held(await self.progress.save_cursor(self.fence, resume))
        return resume

    async def _report_pruned(self, count: int) -> None:
        await self.add_log("events_pruned",
                           f"{count} events were removed by retention before they were "
                           "delivered; skipped.")
        log.warning("events pruned before delivery", extra=kv(
            integration=self.integration_id, count=count))

    def _flush_soon(self) -> None:
        """Save the cursor now rather than at the next interval (the pipeline waits for it,
        `cursor_every` events' worth has accumulated, or the sink stops)."""
        self._urgent.set()
        self._nudge.set()

    def _unsaved(self) -> tuple[bool, bool]:
        """(anything to save, whether it includes events handed on)."""
        assert self.reader is not None
        live = self.pipeline.safe_cursor(self.reader.live_position)
        return live > self.durable_cursor, self._handed_end > self.durable_cursor

    async def _flush_forever(self) -> None:
        # Woken by progress, urgency or the feed moving past a parked sink, never by the
        # clock alone: per-event progress only wakes the dispatcher and this task once
        # per save. Progress that includes deliveries is saved within cursor_interval;
        # progress that only skipped events within SKIP_SAVE_INTERVAL (or at stop).
        skipping_since: float | None = None
        while True:
            self._nudge = anyio.Event()
            unsaved, delivered = self._unsaved()
            if not unsaved:
                skipping_since = None
                self.feed.notify_moved(self, self._nudge)
                await self._nudge.wait()
                continue
            if not delivered and not self._urgent.is_set():
                now = time.monotonic()
                skipping_since = skipping_since if skipping_since is not None else now
                left = skipping_since + SKIP_SAVE_INTERVAL - now
                if left > 0:
                    with move_on_after(left):
                        await self._nudge.wait()
                    continue  # look again: deliveries may have joined in
            elif not self._urgent.is_set():
                with move_on_after(self._cursor_interval):
                    await self._urgent.wait()
            skipping_since = None
            self._urgent = anyio.Event()
            try:
                await self._flush()
            except StoreFull:
                # Delivery goes on; the window stays held until the cursor is
                # durable, so nothing runs further ahead than promised.
                log.warning("cursor not saved: the store is full; retrying",
                            extra=kv(integration=self.integration_id))
                await anyio.sleep(CURSOR_RETRY)

    async def _flush(self) -> None:
        # One write at a time: the flusher's and the final one at stop would otherwise
        # both write the same cursor.
        async with self._flushing:
            assert self.reader is not None
            cursor = self.pipeline.safe_cursor(self.reader.live_position)
            if cursor <= self.durable_cursor:
                return
            if not await self._held(await self.progress.save_cursor(self.fence, cursor)):
                return
            self.durable_cursor = max(self.durable_cursor, cursor)
            self.pipeline.committed(cursor)
            self.progress.committed(cursor)
        self.progressed()
