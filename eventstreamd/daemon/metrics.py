"""`GET /metrics` (Prometheus text format) and `GET /readyz`.

Decisions:
- No second bookkeeping: every figure is read at scrape time from where it is
  counted. Per integration, the sink's `SinkStats` on the supervisor's handle
  (delivered, failed attempts, rejected, the latency histogram) and the
  handle's crash count (sink restarts); lag (events and seconds), in-flight
  requests and health from the status sampler, which the dashboard shows too;
  ingest from `IngestStats`, counted by `POST /events` once per request;
  store figures from `Store.stats()`. prometheus-client only renders them
  (custom metric families in a registry built per scrape), so no library
  lock sits on the ingest or delivery paths.
- A scrape must not stop the event loop: with a thousand integrations the
  text is megabytes and building it takes tens of milliseconds. On the loop
  only the figures are gathered (the status snapshot, the store's stats,
  each sink's counters copied: `Scrape`); the families are built and the
  text rendered in a worker thread, from those copies alone (nothing the
  loop goes on changing is read there). One scrape renders at a time; a
  scrape arriving meanwhile waits for it.
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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..histogram import Histogram
from ..storage.base import Store, StoreStats
from .errors import ApiError
from .status import StatusSampler
from .supervisor import Supervisor

# How the text format spells a bucket bound (prometheus-client's own, which is unannotated).
_go_float: Callable[[float], str] = floatToGoString

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
        for item in snapshot["integrations"]:
            sink = self.supervisor.sink_status(item["id"])
            if sink is not None:
                s = sink.stats
                sinks[item["id"]] = SinkFigures(s.delivered, s.failures, s.rejected,
                                                sink.crashes, s.cursor_resets,
                                                s.latency.copy())
        return Scrape(ready=self.not_ready() is None, ingest=self.ingest.copy(),
                      head=snapshot["head"], store=stats,
                      integrations=snapshot["integrations"], sinks=sinks)


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


def families(scrape: Scrape) -> list[Metric]:
    out: list[Metric] = []
    info = GaugeMetricFamily("eventstreamd_info", "The running daemon's version.",
                             labels=["version"])
    info.add_metric([__version__], 1)
    out.append(info)
    out.append(GaugeMetricFamily("eventstreamd_ready",
                                 "1 when /readyz answers 200.", value=1 if scrape.ready else 0))
    out += _ingest_families(scrape.ingest, scrape.head)
    out += _store_families(scrape.store)
    out += _integration_families(scrape.integrations, scrape.sinks)
    return out


def _ingest_families(ingest: IngestStats, head: int) -> list[Metric]:
    requests = CounterMetricFamily("eventstreamd_ingest_requests",
                                   "POST /events requests, by HTTP status.",
                                   labels=["code"])
    for code, count in sorted(ingest.requests.items()):
        requests.add_metric([str(code)], count)
    batches = HistogramMetricFamily("eventstreamd_ingest_batch_events",
                                    "Events per accepted POST /events request.")
    _add_histogram(batches, [], ingest.batch_events)
    return [
        CounterMetricFamily("eventstreamd_ingest_events",
                            "Events accepted (durably stored) by POST /events.",
                            value=ingest.events),
        CounterMetricFamily("eventstreamd_ingest_bytes",
                            "Request body bytes of accepted POST /events requests.",
                            value=ingest.bytes),
        requests, batches,
        GaugeMetricFamily("eventstreamd_head_seq",
                          "Sequence number of the newest stored event.", value=head),
    ]


def _integration_families(items: Iterable[dict[str, Any]],
                          sinks: dict[str, SinkFigures]) -> list[Metric]:
    labels = ["integration", "kind"]

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    delivered = counter("eventstreamd_delivered_events",
                        "Events delivered (2xx, or uploaded in an S3 object).")
    failed = counter("eventstreamd_delivery_failed_attempts",
                     "Delivery attempts that failed and will be retried.")
    rejected = counter("eventstreamd_rejected_events",
                       "Events set aside as rejected (a receiver's 400, or undeliverable).")
    restarts = counter("eventstreamd_sink_restarts",
                       "Times the integration's sink crashed and was restarted.")
    resets = counter("eventstreamd_cursor_resets",
                     "Times the integration's cursor was found past the newest event in "
                     "the log (the log replaced or restored from an older copy) and "
                     "moved back to where the log has events.")
    latency = HistogramMetricFamily("eventstreamd_delivery_latency_seconds",
                                    "From ingest to delivered (S3: from when the object's "
                                    "file was opened to its upload).", labels=labels)
    stored = gauge("eventstreamd_rejected_events_stored",
                   "Rejected events kept for inspection and retry.")
    lag_events = gauge("eventstreamd_lag_events",
                       "Events after the integration's cursor (not yet delivered).")
    lag_seconds = gauge("eventstreamd_lag_seconds",
                        "Age of the oldest undelivered event (0 when none waits).")
    in_flight = gauge("eventstreamd_in_flight", "Delivery requests under way.")
    running = gauge("eventstreamd_integration_running",
                    "1 while the integration is running, 0 when stopped or completed.")
    for item in items:
        key = [item["id"], item["kind"]]
        running.add_metric(key, 1 if item["status"] == "running"
                           and item["health"] != "completed" else 0)
        lag_events.add_metric(key, item["lag_events"])
        lag_seconds.add_metric(key, item["lag_seconds"] or 0.0)
        stored.add_metric(key, item["rejected_events"])
        if item.get("in_flight") is not None:
            in_flight.add_metric(key, item["in_flight"])
        sink = sinks.get(item["id"])
        if sink is None:
            continue
        delivered.add_metric(key, sink.delivered)
        failed.add_metric(key, sink.failures)
        rejected.add_metric(key, sink.rejected)
        restarts.add_metric(key, sink.crashes)
        resets.add_metric(key, sink.cursor_resets)
        _add_histogram(latency, key, sink.latency)
    return [delivered, failed, rejected, restarts, resets, latency, stored, lag_events,
            lag_seconds, in_flight, running]


def _store_families(stats: StoreStats) -> list[Metric]:
    out: list[Metric] = [GaugeMetricFamily("eventstreamd_store_events",
                                           "Events held in the store.", value=stats.events)]
    for name, value, doc in (
        ("eventstreamd_store_size_bytes", stats.size_bytes, "Bytes the store uses."),
        ("eventstreamd_store_capacity_bytes", stats.capacity_bytes,
         "The most the store may grow to (storage.map_size)."),
        ("eventstreamd_store_free_bytes", stats.free_bytes,
         "Room left before publishing answers 507."),
    ):
        if value is not None:
            out.append(GaugeMetricFamily(name, doc, value=value))
    return out


def _add_histogram(family: HistogramMetricFamily, labels: list[str],
                   histogram: Histogram) -> None:
    """One histogram as the text format's cumulative (le, count) buckets and its sum."""
    family.add_metric(labels, [(_go_float(bound), float(total))
                               for bound, total in histogram.cumulative()],
                      sum_value=histogram.sum)


class _Gathered:
    """A collector of families built before rendering."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render_text(scrape: Scrape) -> bytes:
    """The text format of one scrape (in a worker thread: it reads only `scrape`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Gathered(families(scrape)))
    return generate_latest(registry)


async def render(metrics: DaemonMetrics) -> bytes:
    scrape = await metrics.scrape()
    return await anyio.to_thread.run_sync(render_text, scrape, limiter=metrics.rendering)


def metrics_handler(source: DaemonMetrics) -> Any:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=await render(source),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    return handle


def readyz_handler(source: DaemonMetrics) -> Any:
    async def handle(request: web.Request) -> web.Response:
        reason = source.not_ready()
        if reason is not None:
            raise ApiError(503, "not_ready", reason, headers={"Retry-After": "1"})
        return web.json_response({"status": "ready", "head": source.store.head})
    return handle
