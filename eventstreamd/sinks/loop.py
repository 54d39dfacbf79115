"""The common sink loop: read the log from the integration's cursor, filter, hand on, advance.

Decisions:
- The loop owns what every target shares: where delivery starts, bounded
  reads, filtering, the end of a temporary integration, stop, and writing the
  cursor. What happens to a matching event is the *pipeline*'s business
  (`Pipeline`): the webhook pipeline POSTs it in a bounded window of
  concurrent requests, the S3 pipeline spools it into a file. The pipeline
  says how far the cursor may safely move (`safe_cursor`).
- Reads come in bounded batches (`READ_BATCH`); memory is bounded by that
  batch plus what the pipeline holds (a window of events, or an open file on
  disk), however large the backlog.
- The cursor is written by one flusher task through the group commit whenever
  the safe cursor moved; while one write is in flight further progress
  accumulates, so cursor writes cost little and never block delivery.
- Where delivery starts: the stored cursor (`_start` already applied the
  restart-window rule to it), skipping past events that retention pruned
  (logged with the count). A
  temporary integration ends at the first event ingested after `ends_at` (or
  when the log is drained and `ends_at` has passed).
- Every write a sink makes (cursor, logs, rejected events, S3 bookkeeping)
  goes through `write()`, which checks in the transaction that the
  integration is still the one the sink started for: a sink finishing after
  a DELETE never writes into a new integration that reuses the id.
- Stop: nothing new is handed on; the pipeline finishes what it can within
  the grace period (requests in flight, an open file's upload), the cursor is
  flushed, and whatever did not finish stays after the cursor for next time.
- One event never stalls an integration: an event the pipeline can never
  send (a receiver's 400, or a reason on our side that retrying cannot cure:
  it cannot be encoded, its id cannot be a header, its tenant cannot be part
  of a key) is *set aside* (`set_aside`) as a rejected event, with the
  reason, inspectable and retryable through the API, and delivery goes on.
- The counters (`SinkStats`) belong to the supervisor's handle, not to one
  run of the loop: a sink that crashes and restarts keeps its history, and
  its crash is a failure like any other (status shows it as failing).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from ..logs import kv
from ..storage.lmdb_store import LmdbStore, StoreFull
from ..storage.records import StoredEvent
from ..timeutil import now_iso, parse_rfc3339, to_ms
from .filters import EventFilter
from .journal import add_log

log = logging.getLogger("eventstreamd.sink")

READ_BATCH = 256
READ_BYTES = 4 * 1024 * 1024  # a batch stops at this much stored data, too
HEAD_POLL = 0.2  # seconds; also how often a pipeline's tick runs while the log is idle
COMPLETION_MARGIN_MS = 5_000  # see _range_closed
CURSOR_RETRY = 1.0  # seconds between cursor writes while the store is full
REJECTED_NAMESPACE = uuid.UUID("5b0c6a86-1f0e-4b8e-9d43-8a3c8f1f2a10")
# The payload shown for a set-aside event that cannot be encoded as JSON at all.
UNENCODABLE = "the payload cannot be encoded as JSON; see the rejected event's reason"

Clock = Callable[[], float]
Outcome = Literal["stopped", "completed"]


class StopDelivery(Exception):
    """The sink is stopping; the event was not finished and stays after the cursor."""


@dataclass
class SinkStats:
    delivered: int = 0
    rejected: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def record_failure(self, reason: str, at: float) -> None:
        self.failures += 1
        self.last_error = reason
        self.last_error_at = at


class Pipeline(Protocol):
    async def open(self, sink: SinkLoop) -> None:
        """Before the first event (the S3 pipeline re-uploads recorded files here)."""

    async def accept(self, event: StoredEvent, sink: SinkLoop, tg: TaskGroup) -> bool:
        """Take one matching event, in sequence order; False if stopping prevented it."""

    async def tick(self, sink: SinkLoop) -> None:
        """Called between batches and while idle (time-based work such as file rotation)."""

    def blocked(self) -> bool:
        """True while the pipeline cannot take another event (the loop waits for progress)."""

    def safe_cursor(self, read_position: int) -> int:
        """The lowest sequence number not yet finished for good."""

    def committed(self, cursor: int) -> None:
        """A cursor write of `cursor` is durable."""

    async def close(self, sink: SinkLoop, outcome: Outcome, grace: float) -> None:
        """Finish what can be finished within `grace` seconds."""

    async def release(self) -> None:
        """Free resources (clients, files); safe to call after close() and after a crash."""

    def status(self) -> dict[str, Any]:
        """Pipeline-specific live figures for the status snapshot."""


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


class SinkLoop:
    def __init__(
        self,
        *,
        store: LmdbStore,
        record: dict[str, Any],
        pipeline: Pipeline,
        stop_grace: float,
        clock: Clock = time.time,
        stats: SinkStats | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.integration_id: str = record["id"]
        self.pipeline = pipeline
        self.incarnation: str | None = record.get("incarnation")
        self._stop_grace = stop_grace
        self.clock = clock
        self.filter = EventFilter.from_conditions(record.get("filter_conditions"))
        self._ends_ms = (to_ms(parse_rfc3339(record["ends_at"]))
                         if record.get("integration_type") == "temporary" and record.get("ends_at")
                         else None)
        self.stopping = anyio.Event()
        self.stats = stats if stats is not None else SinkStats(started_at=clock())
        self.read_position = 0  # next sequence number to read
        self.durable_cursor = 0  # last cursor committed to the store
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        self.stopping.set()
        self.progressed()

    def progressed(self) -> None:
        """Wake the loop and the cursor flusher: the safe cursor may have moved."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_progress(self) -> None:
        await self._changed.wait()

    def record_failure(self, reason: str) -> None:
        self.stats.record_failure(reason, self.clock())

    async def sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep up to `delay`; True when the sink is stopping (the caller should give up)."""
        with anyio.move_on_after(delay):
            await self.stopping.wait()
        return self.stopping.is_set()

    # --------------------------------------------------------------------- run

    async def run(self) -> Outcome:
        start = await self._starting_position()
        self.read_position = self.durable_cursor = start
        outcome: Outcome = "stopped"
        try:
            async with anyio.create_task_group() as tg:
                await self.pipeline.open(self)
                tg.start_soon(self._flush_forever, name=f"cursor:{self.integration_id}")
                outcome = await self._dispatch(tg)
                await self.pipeline.close(self, outcome, self._stop_grace)
                with contextlib.suppress(StoreFull):  # then it is redelivered: at least once
                    await self._flush()
                tg.cancel_scope.cancel()
        finally:
            # After a crash too: the pipeline's client and open files are released.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._stop_grace):
                await self.pipeline.release()
        if outcome == "completed" and self.stopping.is_set():
            outcome = "stopped"  # stopped before the last events were finished
        return outcome

    async def _starting_position(self) -> int:
        # The restart-window rule was applied by `_start` when the integration was
        # started (daemon/integrations.py), in the same transaction as the status.
        cursor = self.store.get_cursor(self.integration_id)
        return cursor if cursor is not None else self.store.head + 1

    async def write(self, job: Callable[[Any], None]) -> bool:
        """Run `job` in the group commit only while the integration is still ours.

        False (and the sink stops) when it was deleted or replaced by a new
        integration with the same id.
        """
        def guarded(txn: Any) -> bool:
            if not self.store.txn_is_incarnation(txn, self.integration_id, self.incarnation):
                return False
            job(txn)
            return True

        if await self.store.write(guarded):
            return True
        log.info("integration gone; its sink stops", extra=kv(integration=self.integration_id))
        self.request_stop()
        return False

    async def add_log(self, action: str, reason: str) -> None:
        await add_log(self.store, self.integration_id, self.incarnation, action, reason)

    async def set_aside(self, event: StoredEvent, reason: str, *, status: int | None = None,
                        encodable: bool = True) -> None:
        """Keep `event` as a rejected event with `reason`; the integration goes on.

        Raises StoreFull when it cannot be kept (then the event is not finished and
        the caller retries it). `encodable=False` for an event whose body cannot be
        encoded: the stored copy carries a placeholder payload, and a retry refuses.
        """
        store, integration_id = self.store, self.integration_id
        body = event.delivery_body()
        entry: dict[str, Any] = {
            "id": rejected_id(integration_id, event),
            "created_at": now_iso(),
            "seq": event.seq,
            "event_id": event.id,
            "reason": reason,
            "status": status,
            "event": body if encodable else {**body, "payload": {"error": UNENCODABLE}},
            "deliverable": encodable,
        }
        what = f"rejected with HTTP {status}" if status is not None else "set aside"
        message = f"Event {event.id} ({event.name}) was {what}: {reason}"
        created_at = entry["created_at"]

        def job(txn: Any) -> None:
            pushed = store.txn_add_rejected(txn, integration_id, entry)
            store.txn_add_log(txn, integration_id, "event_rejected", message, created_at)
            for old in pushed:
                store.txn_add_log(
                    txn, integration_id, "rejected_event_dropped",
                    f"Rejected event {old['id']} was removed to keep the newest "
                    f"{store.rejected_events}.", created_at)

        await self.write(job)
        self.stats.rejected += 1
        log.info("event set aside as rejected", extra=kv(
            integration=integration_id, seq=event.seq, rejected_id=entry["id"],
            reason=reason[:200]))

    async def _dispatch(self, tg: TaskGroup) -> Outcome:
        pipeline = self.pipeline
        while not self.stopping.is_set():
            await pipeline.tick(self)
            if pipeline.blocked():
                with anyio.move_on_after(HEAD_POLL):
                    await self.wait_progress()
                continue
            batch = self.store.read_events(self.read_position, READ_BATCH, READ_BYTES)
            if not batch:
                if self._ends_ms is not None and self._range_closed():
                    return "completed"
                await self.store.wait_for_head(self.read_position - 1, max_wait=HEAD_POLL)
                continue
            if batch[0].seq > self.read_position:
                await self._report_pruned(batch[0].seq - self.read_position)
                self.read_position = batch[0].seq
            for event in batch:
                if self._ends_ms is not None and event.ingested_at > self._ends_ms:
                    return "completed"
                if self.filter.matches(event) and not await pipeline.accept(event, self, tg):
                    break  # stopping
                self.read_position = event.seq + 1
                if self.stopping.is_set():
                    break
            self.progressed()
        return "stopped"

    def _range_closed(self) -> bool:
        """No event ingested at or before `ends_at` can still appear in the log.

        Ingest times are stamped in commit order, so a commit stamped after
        `ends_at` closes the range; so does `ends_at` being older than any commit
        could take (an event stamped just before it may still be fsyncing).
        """
        assert self._ends_ms is not None
        return (self.store.last_ingested_ms() > self._ends_ms
                or self.clock() * 1000 > self._ends_ms + COMPLETION_MARGIN_MS)

    async def _report_pruned(self, count: int) -> None:
        await self.add_log("events_pruned",
                           f"{count} events were removed by retention before they were "
                           "delivered; skipped.")
        log.warning("events pruned before delivery", extra=kv(
            integration=self.integration_id, count=count))

    async def _flush_forever(self) -> None:
        while True:
            if self.pipeline.safe_cursor(self.read_position) > self.durable_cursor:
                try:
                    await self._flush()
                except StoreFull:
                    # Delivery goes on; the window stays held until the cursor is
                    # durable, so nothing runs further ahead than promised.
                    log.warning("cursor not saved: the store is full; retrying",
                                extra=kv(integration=self.integration_id))
                    await anyio.sleep(CURSOR_RETRY)
            else:
                await self.wait_progress()

    async def _flush(self) -> None:
        cursor = self.pipeline.safe_cursor(self.read_position)
        if cursor <= self.durable_cursor:
            return
        if not await self.write(
                lambda txn: self.store.txn_set_cursor(txn, self.integration_id, cursor)):
            return
        self.durable_cursor = max(self.durable_cursor, cursor)
        self.pipeline.committed(cursor)
        self.progressed()
