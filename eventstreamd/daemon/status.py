"""The status snapshot: one JSON-ready picture of the daemon, for the control socket and the TUI.

Decisions:
- Built from the two sources of truth only: the store (head, integration
  records, cursors, the oldest undelivered event, stored rejected events) and
  `Supervisor.sink_status(id)` (live counters of running sinks). Nothing here
  keeps its own copy of delivery state, so the snapshot cannot drift.
- Rates come from successive counter samples: `tick()` (called once per push
  interval by the control server) records the head and every sink's
  `delivered` counter and turns the differences into per-second rates, with a
  short history (`HISTORY` samples) so a freshly attached TUI can draw its
  sparklines at once. `snapshot()` never moves the rate baseline, so a
  client asking for `status` between ticks gets fresh state with the last
  tick's rates instead of a rate over a few milliseconds.
- A sink's counters start from zero whenever its sink starts (they live in
  the running `SinkLoop`); a counter that went down is a restart, and the new
  value is the whole delta. A stopped integration has no live counters: those
  fields are null, the stored ones (cursor, lag, rejected count) are not.
- Lag is "roughly" by design: `head - cursor + 1` counts every event after the
  cursor, including ones the integration's filter will skip (the cursor moves
  over those as soon as they are read, so they only count while unread). The
  age is that of the first event at or after the cursor, from its
  `ingested_at`.
- `health` is decided here, not in the TUI, so every client shows the same
  verdict and the rule is tested in one place:
  `completed` (temporary, done) > `stopped` > `failing` (its sink crashed
  and waits to restart, or a delivery failure within `FAILING_WINDOW`
  seconds and events still waiting) > `lagging` (the
  oldest undelivered event is older than `LAGGING_AFTER`, plus the rotate
  interval for S3, which holds events in its open file by design) > `ok`.
- S3 sinks report their open file through `sink_status` (`open_file_bytes`,
  `open_file_started_at`); the snapshot shows size and age when present and
  null otherwise, so the keys are always there.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from .. import __version__
from ..storage.lmdb_store import LmdbStore

HISTORY = 30  # samples kept per rate (30 s of sparkline at the default 1 s interval)
FAILING_WINDOW = 15.0  # seconds
LAGGING_AFTER = 30.0  # seconds


class SinkStatusSource(Protocol):
    def sink_status(self, integration_id: str) -> dict[str, Any] | None: ...


def target_of(record: dict[str, Any]) -> str:
    """What the integration delivers to, safe to show: the URL's host, or bucket/prefix."""
    webhook = record.get("callback_parameters")
    if webhook:
        url = str(webhook.get("callback_url", ""))
        try:
            return urlsplit(url).hostname or url  # never userinfo or the path's query
        except ValueError:
            return "?"
    s3 = record.get("s3_parameters") or {}
    prefix = str(s3.get("key_prefix") or "").strip("/")
    bucket = str(s3.get("bucket", "?"))
    return f"{bucket}/{prefix}" if prefix else bucket


def kind_of(record: dict[str, Any]) -> str:
    return "webhook" if record.get("callback_parameters") else "s3"


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


def _rate(delta: float, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


class StatusSampler:
    def __init__(
        self,
        store: LmdbStore,
        sinks: SinkStatusSource,
        *,
        s3_rotate_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
        history: int = HISTORY,
    ) -> None:
        self.store = store
        self.sinks = sinks
        self.clock = clock
        self._s3_allowance = s3_rotate_interval
        self._history = history
        self._started_at = clock()
        self._last_at: float | None = None
        self._last_head = store.head
        self._ingest_rate = 0.0
        self._ingest_history: deque[float] = deque(maxlen=history)
        self._last_delivered: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._histories: dict[str, deque[float]] = {}

    # ----------------------------------------------------------------- sampling

    def tick(self) -> None:
        """Take a counter sample; rates are the differences to the previous one."""
        now = self.clock()
        head = self.store.head
        ids = [r["id"] for r in self.store.list_integrations()]
        delivered = {}
        for integration_id in ids:
            sink = self.sinks.sink_status(integration_id)
            delivered[integration_id] = int(sink["delivered"]) if sink else 0
        if self._last_at is not None:
            elapsed = now - self._last_at
            self._ingest_rate = _rate(head - self._last_head, elapsed)
            self._ingest_history.append(self._ingest_rate)
            for integration_id, count in delivered.items():
                before = self._last_delivered.get(integration_id, 0)
                # A counter that went down belongs to a restarted sink: all of it is new.
                delta = count - before if count >= before else count
                self._rates[integration_id] = _rate(delta, elapsed)
                self._histories.setdefault(
                    integration_id, deque(maxlen=self._history)).append(self._rates[integration_id])
        for gone in set(self._histories) - set(delivered):
            self._histories.pop(gone, None)
            self._rates.pop(gone, None)
        self._last_at, self._last_head, self._last_delivered = now, head, delivered

    # ----------------------------------------------------------------- snapshot

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        head = self.store.head
        records = sorted(self.store.list_integrations(), key=lambda r: r["id"])
        return {
            "time": round(now, 3),
            "daemon": {"version": __version__, "pid": os.getpid(),
                       "uptime": round(now - self._started_at, 1)},
            "head": head,
            "ingest_rate": self._ingest_rate,
            "ingest_history": list(self._ingest_history),
            "integrations": [self._integration(r, head, now) for r in records],
        }

    def _integration(self, record: dict[str, Any], head: int, now: float) -> dict[str, Any]:
        integration_id = record["id"]
        sink = self.sinks.sink_status(integration_id)
        cursor = (sink or {}).get("cursor") or self.store.get_cursor(integration_id) or head + 1
        lag_events = max(0, head - cursor + 1)
        lag_seconds = None
        if lag_events:
            oldest = self.store.read_events(cursor, 1)
            if oldest:
                lag_seconds = round(max(0.0, now - oldest[0].ingested_at / 1000), 1)
        kind = kind_of(record)
        last_error_at = (sink or {}).get("last_error_at")
        opened = (sink or {}).get("open_file_started_at")
        return {
            "id": integration_id,
            "kind": kind,
            "integration_type": record.get("integration_type"),
            "status": record.get("status"),
            "health": health(
                status=str(record.get("status")), done=bool(record.get("done")),
                lag_events=lag_events, lag_seconds=lag_seconds, last_error_at=last_error_at,
                now=now, lag_allowance=self._s3_allowance if kind == "s3" else 0.0,
                crashed=(sink or {}).get("state") == "crashed"),
            "target": target_of(record),
            "cursor": cursor,
            "lag_events": lag_events,
            "lag_seconds": lag_seconds,
            "delivered": sink.get("delivered") if sink else None,
            "delivered_rate": self._rates.get(integration_id, 0.0),
            "delivered_history": list(self._histories.get(integration_id, ())),
            "failures": sink.get("failures") if sink else None,
            "last_error": sink.get("last_error") if sink else None,
            "last_error_age": round(now - last_error_at, 1) if last_error_at else None,
            "in_flight": sink.get("in_flight") if sink else None,
            "crashes": sink.get("crashes") if sink else None,
            "restart_in": sink.get("restart_in") if sink else None,
            "rejected_events": self.store.count_rejected(integration_id),
            "s3_open_file_bytes": (sink or {}).get("open_file_bytes") if kind == "s3" else None,
            "s3_open_file_age": round(max(0.0, now - opened), 1)
            if kind == "s3" and opened is not None else None,
        }
