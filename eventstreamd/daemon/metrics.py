"""`GET /metrics` (Prometheus text format) and `GET /readyz`.

Decisions:
- No second bookkeeping: every figure is read at scrape time from where it is
  counted. Per integration, the sink's `SinkStats` on the supervisor's handle
  (delivered, failed attempts, rejected, the latency histogram) and the
  handle's crash count (sink restarts); lag (events and seconds), in-flight
  requests and health from the status sampler, which the dashboard shows too;
  ingest from `IngestStats`, counted by `POST /events` once per request;
  store figures from `Store.stats()`. They are written in the text format
  directly (`exposition.py`), so no client library's lock sits on the
  ingest or delivery paths.
- Replays: `eventstreamd_replayed_events_total{integration}` counts what the
  integration's replays delivered (their shared `SinkStats`, living as long as
  the integration's sink, like its other counters), and
  `eventstreamd_replays_running` the replays this daemon runs now.
- A scrape must not stop the event loop: with a thousand integrations the
  text is 2.5 MB. On the loop only the figures are gathered (the status
  snapshot, the store's stats, each sink's counters copied: `Scrape`), in
  slices of a hundred integrations with other requests served between them
  (`slices.py`: the slowest `/healthz` during a scrape of a thousand went
  from 27 to 14 ms); the text is written in a worker thread, from those
  copies alone (nothing the loop goes on changing is read there). One scrape
  renders at a time; a scrape arriving meanwhile waits for it.
- Sink counters live as long as the sink is wanted: a stopped integration
  has lag but no counters, and a sink started anew counts from zero again
  (Prometheus' `rate()` and `increase()` treat that as a counter reset).
- `/metrics` needs the API token unless `metrics.public = true`; it never
  shows a target's URL or secrets, only integration ids and kinds.
- `/readyz` answers 200 once the daemon has started (store open, HTTP bound,
  control socket up) and the supervisor has launched the sinks of every
  integration found at start, until shutdown begins; else 503 in the error
  shape. `/healthz` stays "the process answers".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from aiohttp import web

from .. import __version__
from ..histogram import Histogram
from ..storage.base import Store, StoreStats
from .errors import ApiError
from .exposition import CONTENT_TYPE, Exposition, labels
from .slices import in_slices
from .status import StatusSampler
from .supervisor import Supervisor

# Events per accepted publish request.
BATCH_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000)


@dataclass
class IngestStats:
    """What `POST /events` counts, once per request."""

    events: int = 0
    bytes: int = 0
    requests: dict[int, int] = field(default_factory=dict)  # by HTTP status
    batch_events: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def accepted(self, events: int, size: int) -> None:
        self.events += events
        self.bytes += size
        self.requests[200] = self.requests.get(200, 0) + 1
        self.batch_events.observe(events)

    def refused(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1

    def copy(self) -> IngestStats:
        return IngestStats(self.events, self.bytes, dict(self.requests),
                           self.batch_events.copy())


@dataclass
class Readiness:
    started: bool = False  # set by the lifecycle once everything has started
    stopping: bool = False


class DaemonMetrics:
    """The sources /metrics and /readyz read; built once by the lifecycle."""

    def __init__(self, store: Store, supervisor: Supervisor, sampler: StatusSampler,
                 ingest: IngestStats, readiness: Readiness) -> None:
        self.store = store
        self.supervisor = supervisor
        self.sampler = sampler
        self.ingest = ingest
        self.readiness = readiness
        self.rendering = anyio.CapacityLimiter(1)  # one scrape's text at a time

    def not_ready(self) -> str | None:
        """Why the daemon is not ready, or None."""
        if self.readiness.stopping:
            return "the daemon is stopping"
        if not self.readiness.started:
            return "the daemon is starting"
        if not self.supervisor.sinks_started.is_set():
            return "the sinks are starting"
        return None

    async def scrape(self) -> Scrape:
        """Everything a scrape shows, gathered on the event loop (copies only)."""
        snapshot = await self.sampler.snapshot()
        stats = await self.store.stats()
        sinks = {}
        replayed: dict[str, int] = {}
        replays_running = 0
        async for item in in_slices(snapshot["integrations"]):
            sink = self.supervisor.sink_status(item["id"])
            if sink is not None:
                s = sink.stats
                sinks[item["id"]] = SinkFigures(s.delivered, s.failures, s.rejected,
                                                sink.crashes, s.cursor_resets,
                                                s.latency.copy())
            replays_running += len(self.supervisor.replay_figures(item["id"]))
            replay_stats = self.supervisor.replay_stats(item["id"])
            if replay_stats is not None:
                replayed[item["id"]] = replay_stats.delivered
        return Scrape(ready=self.not_ready() is None, ingest=self.ingest.copy(),
                      head=snapshot["head"], store=stats,
                      integrations=snapshot["integrations"], sinks=sinks,
                      replayed=replayed, replays_running=replays_running)


@dataclass(frozen=True, slots=True)
class SinkFigures:
    """A sink's counters as they were when the scrape gathered them."""

    delivered: int
    failures: int
    rejected: int
    crashes: int
    cursor_resets: int
    latency: Histogram


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape shows, copied on the event loop; rendered in a thread."""

    ready: bool
    ingest: IngestStats
    head: int
    store: StoreStats
    integrations: list[dict[str, Any]]  # the status snapshot's rows (made for the scrape)
    sinks: dict[str, SinkFigures]
    replayed: dict[str, int]  # events delivered by replays, by integration
    replays_running: int


def render_text(scrape: Scrape) -> bytes:
    """The text format of one scrape (in a worker thread: it reads only `scrape`)."""
    out = Exposition()
    out.family("eventstreamd_info", "gauge", "The running daemon's version.")
    out.samples("eventstreamd_info", [(labels(version=__version__), 1)])
    out.family("eventstreamd_ready", "gauge", "1 when /readyz answers 200.")
    out.samples("eventstreamd_ready", [("", 1 if scrape.ready else 0)])
    _ingest(out, scrape.ingest, scrape.head)
    _store(out, scrape.store)
    _integrations(out, scrape.integrations, scrape.sinks)
    _replays(out, scrape)
    return out.text()


def _ingest(out: Exposition, ingest: IngestStats, head: int) -> None:
    for name, doc, value in (
        ("eventstreamd_ingest_events", "Events accepted (durably stored) by POST /events.",
         ingest.events),
        ("eventstreamd_ingest_bytes", "Request body bytes of accepted POST /events requests.",
         ingest.bytes),
    ):
        out.family(name, "counter", doc)
        out.samples(f"{name}_total", [("", value)])
    out.family("eventstreamd_ingest_requests", "counter",
               "POST /events requests, by HTTP status.")
    out.samples("eventstreamd_ingest_requests_total",
                [(labels(code=str(code)), count)
                 for code, count in sorted(ingest.requests.items())])
    out.family("eventstreamd_ingest_batch_events", "histogram",
               "Events per accepted POST /events request.")
    out.histogram("eventstreamd_ingest_batch_events", "", ingest.batch_events)
    out.family("eventstreamd_head_seq", "gauge", "Sequence number of the newest stored event.")
    out.samples("eventstreamd_head_seq", [("", head)])


def _store(out: Exposition, stats: StoreStats) -> None:
    for name, value, doc in (
        ("eventstreamd_store_events", stats.events, "Events held in the store."),
        ("eventstreamd_store_size_bytes", stats.size_bytes, "Bytes the store uses."),
        ("eventstreamd_store_capacity_bytes", stats.capacity_bytes,
         "The most the store may grow to (storage.map_size)."),
        ("eventstreamd_store_free_bytes", stats.free_bytes,
         "Room left before publishing answers 507."),
    ):
        if value is not None:
            out.family(name, "gauge", doc)
            out.samples(name, [("", value)])


# Per integration: (name, kind, help, what of the status row or the sink it shows).
_ROW_GAUGES: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("eventstreamd_rejected_events_stored", "Rejected events kept for inspection and retry.",
     lambda item: item["rejected_events"]),
    ("eventstreamd_lag_events", "Events after the integration's cursor (not yet delivered).",
     lambda item: item["lag_events"]),
    ("eventstreamd_lag_seconds", "Age of the oldest undelivered event (0 when none waits).",
     lambda item: item["lag_seconds"] or 0.0),
    ("eventstreamd_in_flight", "Delivery requests under way.",
     lambda item: item.get("in_flight")),
    ("eventstreamd_integration_running",
     "1 while the integration is running, 0 when stopped or completed.",
     lambda item: 1 if item["status"] == "running" and item["health"] != "completed" else 0),
    ("eventstreamd_integration_auto_stopped",
     "1 when the daemon stopped the integration because every delivery attempt failed for "
     "its stop_after_failing; 0 once started again, and for every other integration.",
     lambda item: 1 if item.get("auto_stopped") else 0),
)
_SINK_COUNTERS: tuple[tuple[str, str, Callable[[SinkFigures], int]], ...] = (
    ("eventstreamd_delivered_events", "Events delivered (2xx, or uploaded in an S3 object).",
     lambda sink: sink.delivered),
    ("eventstreamd_delivery_failed_attempts",
     "Delivery attempts that failed and will be retried.", lambda sink: sink.failures),
    ("eventstreamd_rejected_events",
     "Events set aside as rejected (a receiver's 400, or undeliverable).",
     lambda sink: sink.rejected),
    ("eventstreamd_sink_restarts", "Times the integration's sink crashed and was restarted.",
     lambda sink: sink.crashes),
    ("eventstreamd_cursor_resets",
     "Times the integration's cursor was found past the newest event in the log (the log "
     "replaced or restored from an older copy) and moved back to where the log has events.",
     lambda sink: sink.cursor_resets),
)
LATENCY = "eventstreamd_delivery_latency_seconds"


def _integrations(out: Exposition, items: list[dict[str, Any]],
                  sinks: dict[str, SinkFigures]) -> None:
    keyed = [(labels(integration=item["id"], kind=item["kind"]), item) for item in items]
    with_sink = [(key, sinks[item["id"]]) for key, item in keyed if item["id"] in sinks]
    for name, doc, counted in _SINK_COUNTERS:
        out.family(name, "counter", doc)
        out.samples(f"{name}_total", [(key, counted(sink)) for key, sink in with_sink])
    out.family(LATENCY, "histogram", "From ingest to delivered (S3: from when the object's "
               "file was opened to its upload).")
    for key, sink in with_sink:
        out.histogram(LATENCY, key, sink.latency)
    for name, doc, shown in _ROW_GAUGES:
        out.family(name, "gauge", doc)
        out.samples(name, [(key, value) for key, item in keyed
                           if (value := shown(item)) is not None])


def _replays(out: Exposition, scrape: Scrape) -> None:
    out.family("eventstreamd_replayed_events", "counter",
               "Events the integration's replays delivered (2xx, or uploaded in a replay's "
               "S3 object).")
    out.samples("eventstreamd_replayed_events_total",
                [(labels(integration=item["id"], kind=item["kind"]), scrape.replayed[item["id"]])
                 for item in scrape.integrations if item["id"] in scrape.replayed])
    out.family("eventstreamd_replays_running", "gauge", "Replays this daemon runs now.")
    out.samples("eventstreamd_replays_running", [("", scrape.replays_running)])


async def render(metrics: DaemonMetrics) -> bytes:
    scrape = await metrics.scrape()
    return await anyio.to_thread.run_sync(render_text, scrape, limiter=metrics.rendering)


def metrics_handler(source: DaemonMetrics) -> Any:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=await render(source),
                            headers={"Content-Type": CONTENT_TYPE})
    return handle


def readyz_handler(source: DaemonMetrics) -> Any:
    async def handle(request: web.Request) -> web.Response:
        reason = source.not_ready()
        if reason is not None:
            raise ApiError(503, "not_ready", reason, headers={"Retry-After": "1"})
        return web.json_response({"status": "ready", "head": source.store.head})
    return handle
