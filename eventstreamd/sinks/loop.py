"""The common sink loop: read the log from the integration's cursor, filter, deliver, advance.

Decisions:
- Reads come in bounded batches (`READ_BATCH`) from the window's read
  position; memory is bounded by that batch plus the delivery window, however
  large the backlog.
- Each matching event is handed to the target's `deliver` in its own task once
  the window has room; `deliver` returns when the event is finished
  (delivered, or rejected and stored) and raises `StopDelivery` when the sink
  stops before that. Filtered-out events finish at once.
- The cursor is written by one flusher task through the group commit whenever
  the safe cursor moved; while one write is in flight further progress
  accumulates, so cursor writes cost little and never block delivery.
- Where delivery starts: the stored cursor, except after a stop longer than
  `limits.restart_window` (skip to the head, logged with the count), and
  past events that retention pruned (skipped, logged with the count). A
  temporary integration ends at the first event ingested after `ends_at` (or
  when the log is drained and `ends_at` has passed).
- Stop: no new dispatch; requests in flight finish (bounded by the request
  timeout), retries waiting in backoff are abandoned (they stay before the
  cursor and are delivered after the next start), the cursor is flushed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ..logs import kv
from ..storage.lmdb_store import LmdbStore
from ..storage.records import StoredEvent
from ..timeutil import parse_rfc3339, to_ms
from .filters import EventFilter
from .journal import add_log
from .window import DeliveryWindow

log = logging.getLogger("eventstreamd.sink")

READ_BATCH = 256
HEAD_POLL = 0.2  # seconds; also bounds how long a stop request waits for an idle loop

Clock = Callable[[], float]
Outcome = Literal["stopped", "completed"]


class StopDelivery(Exception):
    """The sink is stopping; the event was not finished and stays before the cursor."""


@dataclass
class SinkStats:
    delivered: int = 0
    rejected: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float = field(default_factory=time.time)


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
        deliver: Callable[[StoredEvent, SinkLoop], Awaitable[None]],
        window_size: int,
        restart_window: float,
        stop_grace: float,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.record = record
        self.integration_id: str = record["id"]
        self._deliver = deliver
        self._window_size = window_size
        self._restart_window = restart_window
        self._stop_grace = stop_grace
        self._clock = clock
        self._filter = EventFilter.from_conditions(record.get("filter_conditions"))
        self._ends_ms = (to_ms(parse_rfc3339(record["ends_at"]))
                         if record.get("integration_type") == "temporary" and record.get("ends_at")
                         else None)
        self.stopping = anyio.Event()
        self.stats = SinkStats(started_at=clock())
        self.window: DeliveryWindow | None = None
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        self.stopping.set()
        if self.window is not None:
            self.window.wake()

    def record_failure(self, reason: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = reason
        self.stats.last_error_at = self._clock()

    async def sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep up to `delay`; True when the sink is stopping (the caller should give up)."""
        with anyio.move_on_after(delay):
            await self.stopping.wait()
        return self.stopping.is_set()

    @property
    def cursor(self) -> int | None:
        return self.window.durable_cursor if self.window is not None else None

    # --------------------------------------------------------------------- run

    async def run(self) -> Outcome:
        window = self.window = DeliveryWindow(await self._starting_position(), self._window_size)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._flush_forever, name=f"cursor:{self.integration_id}")
            outcome = await self._dispatch(tg)
            with anyio.move_on_after(self._stop_grace):
                await self._idle.wait()
            if self._active:
                log.warning("deliveries still running at stop; abandoning them",
                            extra=kv(integration=self.integration_id, active=self._active))
            await self._flush(window)
            tg.cancel_scope.cancel()
        return outcome

    async def _starting_position(self) -> int:
        store, record = self.store, self.record
        cursor = store.get_cursor(self.integration_id)
        if cursor is None:
            cursor = store.head + 1
        now_ms = int(self._clock() * 1000)
        position, skipped = resume_position(
            cursor, store.head, record.get("stopped_at_ms"), now_ms,
            int(self._restart_window * 1000))
        if record.get("stopped_at_ms") is not None or position != cursor:
            record = {**record, "stopped_at_ms": None}
            self.record = record

            def job(txn: Any) -> None:
                store.txn_put_integration(txn, record)
                store.txn_set_cursor(txn, self.integration_id, position)
            await store.write(job)
        if skipped:
            await add_log(store, self.integration_id, "events_skipped",
                          f"Stopped for longer than the restart window; skipped {skipped} events.")
            log.info("restart window passed; skipping to the head",
                     extra=kv(integration=self.integration_id, skipped=skipped))
        return position

    async def _dispatch(self, tg: Any) -> Outcome:
        window = self.window
        assert window is not None
        while not self.stopping.is_set():
            if window.full:
                await window.wait_changed()
                continue
            batch = self.store.read_events(window.read_position, READ_BATCH)
            if not batch:
                if self._ends_ms is not None and self._clock() * 1000 > self._ends_ms:
                    return "completed"
                await self.store.wait_for_head(window.read_position - 1, max_wait=HEAD_POLL)
                continue
            if batch[0].seq > window.read_position:
                await self._report_pruned(batch[0].seq - window.read_position)
                window.skip_to(batch[0].seq)
            for event in batch:
                if self._ends_ms is not None and event.ingested_at > self._ends_ms:
                    return "completed"
                if not self._filter.matches(event):
                    window.skip_to(event.seq + 1)
                    continue
                while window.full and not self.stopping.is_set():
                    await window.wait_changed()
                if self.stopping.is_set():
                    break
                window.dispatch(event.seq)
                self._active += 1
                self._idle = anyio.Event() if self._idle.is_set() else self._idle
                tg.start_soon(self._deliver_one, event)
        return "stopped"

    async def _deliver_one(self, event: StoredEvent) -> None:
        assert self.window is not None
        try:
            await self._deliver(event, self)
            self.window.finish(event.seq)
        except StopDelivery:
            pass
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _report_pruned(self, count: int) -> None:
        await add_log(self.store, self.integration_id, "events_pruned",
                      f"{count} events were removed by retention before they were delivered; "
                      "skipped.")
        log.warning("events pruned before delivery", extra=kv(
            integration=self.integration_id, count=count))

    async def _flush_forever(self) -> None:
        window = self.window
        assert window is not None
        while True:
            if window.dirty:
                await self._flush(window)
            else:
                await window.wait_changed()

    async def _flush(self, window: DeliveryWindow) -> None:
        cursor = window.safe_cursor()
        if cursor <= window.durable_cursor:
            return
        await self.store.write(
            lambda txn: self.store.txn_set_cursor(txn, self.integration_id, cursor))
        window.committed(cursor)
