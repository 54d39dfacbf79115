"""The scenarios: each starts its own daemon (own config, own temp data dir), drives it
from other processes, and measures a raw baseline in the same run.

Decisions:
- The orchestrator (this process) never carries load. Load generators,
  baselines, receivers and the bare servers are separate processes
  (`bench.worker`, `bench.receiver`, `bench.bareserver`); the daemon is
  `python -m eventstreamd run` with a TOML config written for the scenario.
- Throughput is counted where it is true: ingest by the publisher (a 200
  means fsync'd), webhook delivery at the receiver (arrival times), S3 in the
  bucket (bytes listed by moto). Baselines are timed the same way.
- Every row says how busy the processes were during the measured phase (CPU
  seconds / wall seconds; 1.0 = one core): above all the load generator's, to
  show it was not the bottleneck.
- Each wait is bounded in time and rounds; a scenario that fails reports a
  row with value null and the reason instead of ending the run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventstreamd.sinks.s3 import PART_CONCURRENCY, PART_SIZE

from . import SCENARIO_IDS
from .common import (
    API_BASE,
    MIB,
    STORES,
    TOKEN,
    Children,
    EventFactory,
    Helper,
    Meter,
    free_port,
    http,
    ticks,
)
from .daemon import BenchDaemon

if TYPE_CHECKING:
    from tests.helpers.nats_server import NatsServer

S3_KEY_ID = "bench-access-key-id"
S3_SECRET = "bench-secret-access-key-0123"


@dataclass
class Row:
    scenario: str
    figure: str
    unit: str
    value: float | None
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""
    busy: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("value", "baseline", "ratio"):
            if isinstance(out[key], float):
                out[key] = round(out[key], 4)
        out["busy"] = {k: round(v, 3) for k, v in self.busy.items()}
        return out


def ratio_row(scenario: str, figure: str, unit: str, value: float | None,
              baseline: float | None, min_ratio: float | None, min_value: float | None = None,
              note: str = "", busy: dict[str, float] | None = None) -> Row:
    ratio = value / baseline if value is not None and baseline else None
    parts = []
    if min_ratio is not None:
        parts.append(f">= {min_ratio:g} x baseline")
    if min_value is not None:
        parts.append(f">= {min_value:,.0f} {unit}")
    met = None
    if parts and value is not None:
        met = ((min_ratio is None or (ratio is not None and ratio >= min_ratio))
               and (min_value is None or value >= min_value))
    return Row(scenario, figure, unit, value, baseline, ratio, " and ".join(parts) or None,
               met, note, busy or {})


def limit_row(scenario: str, figure: str, unit: str, value: float | None,
              max_value: float | None, note: str = "",
              busy: dict[str, float] | None = None) -> Row:
    target = f"<= {max_value:g} {unit}" if max_value is not None else None
    met = value <= max_value if value is not None and max_value is not None else None
    return Row(scenario, figure, unit, value, None, None, target, met, note, busy or {})


# --------------------------------------------------------------------- helpers

class ReceiverProc:
    """A `bench.receiver` process: the webhook endpoint for daemon and baseline alike."""

    def __init__(self, children: Children) -> None:
        self.helper = Helper(children, "bench.receiver")
        self.url = f"http://127.0.0.1:{self.helper.line(20)['port']}"
        self.pid = self.helper.pid

    def stats(self, skip: int = 0) -> dict[str, Any]:
        status, payload = http("GET", f"{self.url}/_stats?skip={skip}")
        if status != 200:
            raise RuntimeError(f"receiver stats answered {status}")
        return dict(payload)

    def reset(self) -> None:
        http("POST", f"{self.url}/_reset")

    def wait_count(self, count: int, timeout: float, idle_timeout: float = 30.0) -> dict[str, Any]:
        """Wait until `count` requests arrived, or nothing new came for `idle_timeout`."""
        stats = self.stats()
        last_change, last_count = time.monotonic(), stats["count"]
        for _ in ticks(timeout, 0.05):
            stats = self.stats()
            if stats["count"] >= count:
                break
            if stats["count"] != last_count:
                last_change, last_count = time.monotonic(), stats["count"]
            elif time.monotonic() - last_change > idle_timeout:
                break
        return stats

    def stop(self) -> None:
        self.helper.end()


class MotoProc:
    def __init__(self, children: Children) -> None:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.children = children
        self.proc = children.spawn(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"})
        self.pid = self.proc.pid
        for _ in ticks(30, 0.1):
            status, _ = self._probe()
            if status == 200:
                return
            if self.proc.poll() is not None:
                raise RuntimeError("moto_server exited")
        raise RuntimeError("moto_server did not start")

    def _probe(self) -> tuple[int, Any]:
        try:
            return http("GET", f"{self.url}/moto-api/", timeout=2)
        except OSError:
            return 0, None

    def stop(self) -> None:
        self.children.end(self.proc)


class Ctx:
    def __init__(self, quick: bool, tmp: Path, children: Children,
                 profile: set[str], profile_dir: Path,
                 log: Callable[[str], None], daemon_env: dict[str, str] | None = None) -> None:
        self.quick = quick
        self.daemon_env = daemon_env or {}
        self.tmp = tmp
        self.children = children
        self.profile = profile
        self.profile_dir = profile_dir
        self.log = log
        self.published_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.factory = EventFactory(self.published_at)
        self._template: tuple[Path, dict[str, Any], str] | None = None
        self._daemons = 0
        self._nats: NatsServer | None = None
        self._prefixes = 0

    def nats(self) -> NatsServer:
        """One nats-server (JetStream, `sync_interval: always`) for every JetStream scenario
        of the run, started on first use; `close()` stops it."""
        if self._nats is None:
            from tests.helpers.nats_server import NatsServer

            self.log("  starting nats-server (JetStream, sync_interval: always)")
            self._nats = NatsServer(self.tmp / "nats").start()
        return self._nats

    def jetstream(self) -> dict[str, Any]:
        """Daemon settings for the JetStream backend, with a stream prefix of its own."""
        self._prefixes += 1
        return {"storage": {"backend": "jetstream"},
                "jetstream": {"servers": [self.nats().url], "prefix": f"b{self._prefixes}"}}

    def close(self) -> None:
        if self._nats is not None:
            self._nats.stop()
            self._nats = None

    def size(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    def workdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def daemon(self, scenario: str, settings: dict[str, Any] | None = None,
               workdir: Path | None = None, start: bool = True) -> BenchDaemon:
        self._daemons += 1
        profile_cmd = None
        if scenario in self.profile:
            exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            out = self.profile_dir / f"{scenario}-{self._daemons}.txt"
            profile_cmd = [exe, "record", "--rate", "200", "--nonblocking", "--format", "raw",
                           "--output", str(out), "--"]
            self.log(f"  profiling the daemon with py-spy into {out}")
        daemon = BenchDaemon(self.children, workdir or self.workdir(f"{scenario}-daemon"),
                             settings, profile_cmd, self.daemon_env)
        return daemon.start() if start else daemon

    def worker(self, command: str, args: dict[str, Any]) -> Helper:
        return Helper(self.children, "bench.worker", command,
                      json.dumps({"published_at": self.published_at, **args}))

    def measure(self, command: str, args: dict[str, Any], pids: dict[str, int],
                timeout: float) -> tuple[dict[str, Any], dict[str, float]]:
        """Run a load-generating worker; its result and how busy everyone was meanwhile."""
        worker = self.worker(command, args)
        worker.line(60)  # {"phase": "start"}
        meter = Meter(pids)
        result = worker.result(timeout)
        # /proc figures cover start marker to worker exit, as seen from here.
        return result, {"loadgen": result["busy"], **meter.busy()}

    def run(self, command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.worker(command, args).result(timeout)

    def template_store(self) -> tuple[Path, dict[str, Any], str]:
        """A data dir holding the backlog events, filled once per run and copied per scenario.

        Filled with the daemon's own store code (`LmdbStore.append`, 10,000
        events per transaction) before any daemon starts, rather than published.
        """
        if self._template is None:
            count = self.size(1_000_000, 50_000)
            data_dir = self.workdir("template") / "data"
            starts_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
            self.log(f"  filling a template store with {count:,} events (in-process LmdbStore)")
            info = self.run("fill_store", {"data_dir": str(data_dir), "count": count,
                                           "map_size": 4 << 30}, timeout=600)
            self._template = (data_dir, info, starts_at)
        return self._template

    def copy_template(self, name: str) -> tuple[Path, dict[str, Any], str]:
        data_dir, info, starts_at = self.template_store()
        target = self.workdir(name) / "data"
        shutil.copytree(data_dir, target)
        return target, info, starts_at


def starts_at_now(seconds_ago: float = 5.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - seconds_ago))


def fmt_busy(busy: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in busy.items())


# ------------------------------------------------------------------- scenarios

def ingest_ndjson(ctx: Ctx) -> list[Row]:
    scenario = "ingest-ndjson"
    batches, batch, concurrency = ctx.size(300, 40), 1000, 4
    baseline_args = {"batch": batch, "count": batches, "warmup": 3}

    def run_baseline(n: int) -> dict[str, Any]:
        ctx.log(f"  baseline ({n}): orjson + msgpack + LMDB (fsync'd), {batches} x {batch} events")
        workdir = ctx.workdir(f"{scenario}-baseline-{n}")
        result = ctx.run("lmdb_baseline", {**baseline_args, "dir": str(workdir)}, timeout=300)
        shutil.rmtree(workdir, ignore_errors=True)
        return result

    # The baseline is disk-bound and fsync latency on shared disks drifts: it runs
    # before and after the daemon, and the better of the two counts.
    bases = [run_baseline(1)]
    daemon = ctx.daemon(scenario)
    try:
        ctx.log(f"  daemon: {batches} NDJSON batches of {batch} over {concurrency} connections")
        result, busy = ctx.measure(
            "ingest", {"url": f"{daemon.url}/events", "mode": "ndjson", "batch": batch,
                       "count": batches, "concurrency": concurrency, "warmup": 3},
            {"daemon": daemon.pid}, timeout=300)
    finally:
        daemon.stop()
    bases.append(run_baseline(2))
    rates = [b["events"] / b["wall_s"] for b in bases]
    best = bases[rates.index(max(rates))]
    baseline = max(rates)
    busy["baseline"] = best["busy"]
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    value = result["events"] / result["wall_s"]
    note = (f"{result['events']:,} events in {result['wall_s']:.2f}s; baseline runs before/after "
            f"{' / '.join(f'{r:,.0f}' for r in rates)} events/s (the better one counts)"
            + (f"; non-200 answers {bad}" if bad else ""))
    return [ratio_row(scenario, "durable events/s", "events/s", value, baseline, 0.6, 60_000,
                      note, busy)]


def ingest_single(ctx: Ctx) -> list[Row]:
    scenario = "ingest-single"
    count, concurrency = ctx.size(40_000, 3_000), 32
    bare = Helper(ctx.children, "bench.bareserver")
    bare_url = f"http://127.0.0.1:{bare.line(20)['port']}"
    args = {"mode": "single", "count": count, "concurrency": concurrency, "warmup": 64}
    try:
        ctx.log(f"  baseline: bare aiohttp server, {count:,} requests, {concurrency} clients")
        base, base_busy = ctx.measure("ingest", {**args, "url": f"{bare_url}/events"},
                                      {"server": bare.pid}, timeout=300)
    finally:
        bare.end()
    baseline = base["events"] / base["wall_s"]
    daemon = ctx.daemon(scenario)
    try:
        ctx.log(f"  daemon: {count:,} requests of one event, {concurrency} clients")
        result, busy = ctx.measure("ingest", {**args, "url": f"{daemon.url}/events"},
                                   {"daemon": daemon.pid}, timeout=300)
    finally:
        daemon.stop()
    busy["baseline_loadgen"] = base_busy["loadgen"]
    busy["baseline_server"] = base_busy["server"]
    busy["baseline_machine"] = base_busy["machine"]
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    value = result["events"] / result["wall_s"]
    note = (f"{result['events']:,} events in {result['wall_s']:.2f}s"
            + (f"; non-200 answers {bad}" if bad else ""))
    return [ratio_row(scenario, "durable events/s", "events/s", value, baseline, 0.6,
                      note=note, busy=busy)]


def _bare_delivery(ctx: Ctx, receiver: ReceiverProc, urls: list[str], per: int,
                   in_flight: int) -> tuple[float, dict[str, float]]:
    """The bare aiohttp client posting `per` bodies to each URL: events/s and busyness."""
    total = len(urls) * per
    ctx.log(f"  baseline: bare aiohttp client, {total:,} posts, "
            f"{len(urls)} x {in_flight} concurrent")
    base, base_busy = ctx.measure(
        "webhook_baseline", {"urls": urls, "count": per, "concurrency": in_flight},
        {"receiver": receiver.pid}, timeout=600)
    stats = receiver.wait_count(total, 30)
    rate = stats["count"] / ((stats["last_ns"] - base["t0_ns"]) / 1e9)
    return rate, {"baseline_client": base_busy["loadgen"],
                  "baseline_receiver": base_busy["receiver"],
                  "baseline_machine": base_busy["machine"]}


def _daemon_delivery(ctx: Ctx, scenario: str, receiver: ReceiverProc, urls: list[str],
                     per: int, in_flight: int, controls: dict[str, Any] | None = None,
                     ) -> tuple[dict[str, Any], float, dict[str, float]]:
    """Events published first, then one integration per URL (with `controls` in its
    callback_parameters) catches up: the receiver's stats, the seconds from creating them
    to the last arrival, and busyness."""
    total = len(urls) * per
    daemon = ctx.daemon(scenario, {"webhook": {"max_in_flight": in_flight}})
    try:
        starts_at = starts_at_now()
        shown = f", {controls}" if controls else ""
        ctx.log(f"  daemon: publishing {per:,} events, then {len(urls)} integration(s) "
                f"catch up (max_in_flight {in_flight}{shown})")
        ctx.run("publish_all", {"url": f"{daemon.url}/events", "events": per}, timeout=300)
        receiver.reset()
        meter = Meter({"daemon": daemon.pid, "receiver": receiver.pid})
        t0 = time.monotonic_ns()
        for k, url in enumerate(urls):
            daemon.create_webhook(f"bench-{k}", url, starts_at, controls)
        limit = max(60.0, total / 300) if not ctx.quick else 40.0
        stats = receiver.wait_count(total, limit)
        t1 = time.monotonic_ns()
        elapsed = ((stats["last_ns"] or t1) - t0) / 1e9
        busy = meter.busy((t1 - t0) / 1e9)
    finally:
        daemon.stop()
    return stats, elapsed, busy


def _delivered_note(stats: dict[str, Any], total: int, elapsed: float) -> str:
    note = f"{stats['count']:,} of {total:,} delivered in {elapsed:.2f}s"
    if stats["count"] < total:
        note += " (INCOMPLETE within the time limit)"
    return note


def _webhook(ctx: Ctx, scenario: str, in_flight: int, integrations: int, per: int,
             min_ratio: float | None, controls: dict[str, Any] | None = None,
             baseline_in_flight: int | None = None) -> list[Row]:
    receiver = ReceiverProc(ctx.children)
    try:
        urls = [f"{receiver.url}/hook/{k}" for k in range(integrations)]
        baseline, base_busy = _bare_delivery(ctx, receiver, urls, per,
                                             baseline_in_flight or in_flight)
        stats, elapsed, busy = _daemon_delivery(ctx, scenario, receiver, urls, per,
                                                in_flight, controls)
    finally:
        receiver.stop()
    value = stats["count"] / elapsed if stats["count"] else None
    return [ratio_row(scenario, "delivered events/s", "events/s", value, baseline, min_ratio,
                      note=_delivered_note(stats, integrations * per, elapsed),
                      busy={**busy, **base_busy})]


def webhook_8(ctx: Ctx) -> list[Row]:
    return _webhook(ctx, "webhook-inflight-8", 8, 1, ctx.size(20_000, 2_000), 0.85)


def webhook_1(ctx: Ctx) -> list[Row]:
    return _webhook(ctx, "webhook-inflight-1", 1, 1, ctx.size(5_000, 600), 0.6)


def webhook_fanout(ctx: Ctx) -> list[Row]:
    return _webhook(ctx, "webhook-fanout-10", 8, 10, ctx.size(4_000, 300), 0.8)


def webhook_strict(ctx: Ctx) -> list[Row]:
    """`ordered` without a key (`max_in_flight` left at 8: strict order sends one request
    at a time anyway), against the bare client at concurrency 1."""
    return _webhook(ctx, "webhook-ordered-strict", 8, 1, ctx.size(5_000, 600), 0.9,
                    controls={"ordered": True}, baseline_in_flight=1)


def webhook_keyed(ctx: Ctx) -> list[Row]:
    """Per-key lanes over 100 store ids, against the same daemon unordered (8 in flight)."""
    scenario, per = "webhook-ordered-keyed", ctx.size(20_000, 2_000)
    receiver = ReceiverProc(ctx.children)
    try:
        urls = [f"{receiver.url}/hook/0"]
        plain, plain_elapsed, plain_busy = _daemon_delivery(ctx, f"{scenario}-unordered",
                                                            receiver, urls, per, 8)
        keyed, elapsed, busy = _daemon_delivery(
            ctx, scenario, receiver, urls, per, 8,
            {"ordered": True, "ordering_key": "store_id"})
    finally:
        receiver.stop()
    baseline = plain["count"] / plain_elapsed if plain["count"] else None
    value = keyed["count"] / elapsed if keyed["count"] else None
    note = (f"{STORES} keys; {_delivered_note(keyed, per, elapsed)}; unordered: "
            f"{_delivered_note(plain, per, plain_elapsed)}")
    return [ratio_row(scenario, "delivered events/s", "events/s", value, baseline, 0.8,
                      note=note, busy={**busy, **{f"unordered_{k}": v
                                                  for k, v in plain_busy.items()}})]


def webhook_max_rate(ctx: Ctx) -> list[Row]:
    """`max_rate`: the delivered rate, first to last arrival, against the limit."""
    scenario, limit = "webhook-max-rate", 200.0
    per = int(limit * ctx.size(15, 3))
    receiver = ReceiverProc(ctx.children)
    try:
        stats, elapsed, busy = _daemon_delivery(ctx, scenario, receiver,
                                                [f"{receiver.url}/hook/0"], per, 8,
                                                {"max_rate": limit})
    finally:
        receiver.stop()
    value = None
    if stats["count"] > 1 and stats["first_ns"] and stats["last_ns"]:
        value = (stats["count"] - 1) / ((stats["last_ns"] - stats["first_ns"]) / 1e9)
    ratio = value / limit if value is not None else None
    met = abs(ratio - 1) <= 0.05 if ratio is not None else None
    note = f"limit {limit:g}/s; {_delivered_note(stats, per, elapsed)}"
    return [Row(scenario, "delivered events/s (first to last arrival)", "events/s", value,
                limit, ratio, "within 5 % of the limit", met, note, busy)]


def latency(ctx: Ctx) -> list[Row]:
    scenario = "latency-1000eps"
    rate, duration, warmup = 1000, ctx.size(20.0, 3.0), 200
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = ctx.daemon(scenario)
        try:
            daemon.create_webhook("latency", f"{receiver.url}/latency", None)
            time.sleep(0.3)  # the sink starts
            ctx.log(f"  {rate} events/s, one per request, for {duration:g}s")
            result, busy = ctx.measure(
                "paced", {"url": f"{daemon.url}/events", "rate": rate, "duration": duration},
                {"daemon": daemon.pid, "receiver": receiver.pid}, timeout=duration + 120)
            receiver.wait_count(result["sent"], 30)
            stats = receiver.stats(skip=warmup)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    lat = stats["latency"]
    note = (f"{lat.get('n', 0):,} samples after {warmup} warm-up; p90 {lat.get('p90_ms', 0):.2f}, "
            f"p99.9 {lat.get('p999_ms', 0):.2f}, max {lat.get('max_ms', 0):.2f} ms; "
            f"achieved {result['achieved_rate']:.0f} events/s, publish ack p50 "
            f"{result['ack_p50_ms']:.2f} / p99 {result['ack_p99_ms']:.2f} ms, "
            f"load generator at most {result['max_behind_ms']:.1f} ms behind schedule; "
            f"received {stats['count']:,} of {result['sent']:,}")
    return [limit_row(scenario, "publish-to-receipt p50", "ms", lat.get("p50_ms"), None,
                      busy=busy),
            limit_row(scenario, "publish-to-receipt p99", "ms", lat.get("p99_ms"), 25, note,
                      busy)]


CAPACITY_P99_MS = 50.0


def _capacity_steps(ctx: Ctx, url: str, receiver: ReceiverProc, pids: dict[str, int],
                    token: str | None) -> tuple[float | None, list[str], dict[str, float]]:
    """Step the paced rate up until publish-to-receipt p99 exceeds the limit (or the load
    generator falls behind); the highest rate that held, what each step saw, busyness."""
    rates = ctx.size([250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000],
                     [250, 500, 1000, 2000])
    duration = ctx.size(6.0, 2.0)
    best: float | None = None
    steps: list[str] = []
    busy: dict[str, float] = {}
    for rate in rates:
        receiver.reset()
        args = {"url": url, "rate": rate, "duration": duration}
        if token is not None:
            args["token"] = token
        result, step_busy = ctx.measure("paced", args, pids, timeout=duration + 120)
        receiver.wait_count(result["sent"], 30, idle_timeout=10)
        stats = receiver.stats(skip=max(50, result["sent"] // 10))  # warm-up left out
        p99 = stats["latency"].get("p99_ms")
        kept_up = result["achieved_rate"] >= 0.95 * rate and stats["count"] >= result["sent"]
        steps.append(f"{rate}/s: p99 {p99 if p99 is None else round(p99, 1)} ms"
                     + ("" if kept_up else " (fell behind)"))
        if p99 is None or p99 > CAPACITY_P99_MS or not kept_up:
            break
        best, busy = float(rate), step_busy
    return best, steps, busy


def capacity(ctx: Ctx) -> list[Row]:
    """The highest steady end-to-end rate (one event per request, one webhook integration)
    at which publish-to-receipt p99 stays <= 50 ms; baseline: a bare aiohttp server that
    relays each event with a bare aiohttp client (8 in flight) to the same receiver."""
    scenario = "capacity"
    receiver = ReceiverProc(ctx.children)
    try:
        relay = Helper(ctx.children, "bench.bareserver", "--relay", f"{receiver.url}/relay",
                       "--in-flight", "8")
        try:
            relay_url = f"http://127.0.0.1:{relay.line(20)['port']}/events"
            ctx.log("  baseline: bare server relaying with a bare client, stepping the rate")
            base, base_steps, base_busy = _capacity_steps(
                ctx, relay_url, receiver, {"server": relay.pid, "receiver": receiver.pid}, None)
        finally:
            relay.end()
        daemon = ctx.daemon(scenario)
        try:
            daemon.create_webhook("capacity", f"{receiver.url}/capacity", None)
            time.sleep(0.3)  # the sink starts
            ctx.log("  daemon: one webhook integration, stepping the rate")
            value, steps, busy = _capacity_steps(
                ctx, f"{daemon.url}/events", receiver,
                {"daemon": daemon.pid, "receiver": receiver.pid}, TOKEN)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    busy.update({f"baseline_{k}": v for k, v in base_busy.items()})
    note = (f"daemon steps: {'; '.join(steps)}. baseline steps: {'; '.join(base_steps)}. "
            f"p99 limit {CAPACITY_P99_MS:g} ms")
    return [ratio_row(scenario, "events/s at p99 <= 50 ms", "events/s", value, base, 0.6,
                      note=note, busy=busy)]


def s3_upload(ctx: Ctx) -> list[Row]:
    scenario = "s3-upload"
    files, rotate_mib = ctx.size((4, 50), (2, 12))
    rotate_size = rotate_mib * MIB
    line_len = len(ctx.factory.delivery_body(0)) + 1
    lines_per_file = math.ceil(rotate_size / line_len)  # a file is sealed at the first line
    events = files * lines_per_file                     # that takes it to rotate_size
    expected = events * line_len
    mib = expected / MIB
    moto = MotoProc(ctx.children)
    creds = {"endpoint": moto.url, "key_id": S3_KEY_ID, "secret": S3_SECRET}
    try:
        for bucket in ("bench-baseline", "bench-daemon"):
            ctx.run("s3_create_bucket", {**creds, "bucket": bucket}, timeout=60)
        ctx.log(f"  baseline: put_object of {files} files, {mib:.1f} MiB")
        base, base_busy = ctx.measure(
            "s3_baseline", {**creds, "bucket": "bench-baseline", "files": files,
                            "lines_per_file": lines_per_file},
            {"moto": moto.pid}, timeout=600)
        baseline = base["mib"] / base["wall_s"]
        ctx.log(f"  for the note: the same files as multipart uploads ({PART_SIZE // MIB} MiB "
                f"parts, {PART_CONCURRENCY} at once, as the daemon sends them)")
        bare_multipart, _ = ctx.measure(
            "s3_baseline", {**creds, "bucket": "bench-baseline", "files": files,
                            "lines_per_file": lines_per_file, "multipart": True,
                            "part_size": PART_SIZE, "part_concurrency": PART_CONCURRENCY},
            {"moto": moto.pid}, timeout=600)
        multipart_rate = bare_multipart["mib"] / bare_multipart["wall_s"]

        daemon = ctx.daemon(scenario, {"s3": {"endpoint_url": moto.url,
                                              "rotate_size": rotate_size,
                                              "rotate_interval": "30m"}})
        try:
            starts_at = starts_at_now()
            ctx.log(f"  daemon: publishing {events:,} events ({mib:.1f} MiB as NDJSON lines)")
            ctx.run("publish_all", {"url": f"{daemon.url}/events", "events": events},
                    timeout=600)
            first_timeout = ctx.size(60.0, 15.0)
            watch = ctx.worker("s3_watch", {**creds, "bucket": "bench-daemon",
                                            "expected": expected, "interval": 0.2,
                                            "first_timeout": first_timeout,
                                            "timeout": ctx.size(300.0, 40.0)})
            watch.line(60)  # ready
            meter = Meter({"daemon": daemon.pid, "moto": moto.pid})
            t0 = time.monotonic_ns()
            status, answer = http("POST", f"{daemon.url}{API_BASE}", {
                "id": "bench-s3", "integration_type": "permanent", "starts_at": starts_at,
                "s3_parameters": {"aws_access_key_id": S3_KEY_ID,
                                  "aws_secret_access_key": S3_SECRET,
                                  "aws_region": "us-east-1", "bucket": "bench-daemon",
                                  "key_prefix": "bench"}}, token=TOKEN)
            if status != 200:
                watch.end()
                return [Row(scenario, "MiB/s uploaded", "MiB/s", None, baseline, None,
                            ">= 0.8 x baseline", None,
                            f"S3 sink not available: creating the integration answered "
                            f"{status}: {str(answer)[:200]}")]
            seen = watch.result(ctx.size(420.0, 60.0))
            wall = (time.monotonic_ns() - t0) / 1e9
            busy = {**meter.busy(wall), "baseline_client": base_busy["loadgen"],
                    "baseline_moto": base_busy["moto"], "baseline_machine": base_busy["machine"]}
        finally:
            daemon.stop()
    finally:
        moto.stop()
    if not seen["total"]:
        return [Row(scenario, "MiB/s uploaded", "MiB/s", None, baseline, None,
                    ">= 0.8 x baseline", None,
                    f"S3 sink not available: nothing uploaded within {first_timeout:g}s",
                    busy)]
    elapsed = (seen["done_ns"] - t0) / 1e9
    value = seen["total"] / MIB / elapsed
    sizes = sorted({size for _, size in seen["objects"]})
    note = (f"{seen['total'] / MIB:.1f} of {mib:.1f} MiB in {len(seen['objects'])} objects "
            f"in {elapsed:.2f}s (bucket polled every 0.2s); object sizes {sizes}; "
            f"baseline {base['mib']:.1f} MiB in {base['wall_s']:.2f}s; the same files as bare "
            f"multipart uploads ({PART_SIZE // MIB} MiB parts, {PART_CONCURRENCY} at once): "
            f"{multipart_rate:.1f} MiB/s, so the daemon does {value / multipart_rate:.2f} "
            f"of the same S3 calls made bare")
    if not seen["reached"]:
        note += " (INCOMPLETE within the time limit)"
    return [ratio_row(scenario, "MiB/s uploaded", "MiB/s", value, baseline, 0.8, note=note,
                      busy=busy)]


def backlog_rss(ctx: Ctx) -> list[Row]:
    """Peak RSS while 10 integrations catch up on the stored backlog.

    In the measured window the 10 webhook integrations get through only a part
    of the log (delivery runs at a few thousand events/s). What their memory
    comes to once the log has been read through is shown by a second phase:
    an 11th integration whose filter matches nothing reads the whole log in
    seconds (every page of the LMDB map is touched, as a full catch-up would).
    """
    scenario = "backlog-rss"
    integrations, seconds = 10, ctx.size(45.0, 3.0)
    settle = ctx.size(3.0, 1.0)  # RssFile unchanged this long: the log has been read
    data_dir, info, starts_at = ctx.copy_template(scenario)
    receiver = ReceiverProc(ctx.children)
    samples: list[dict[str, float]] = []
    scan: list[dict[str, float]] = []
    try:
        daemon = ctx.daemon(scenario, {"storage": {"data_dir": str(data_dir)},
                                       "limits": {"max_integrations": integrations + 1}})
        try:
            idle = daemon.memory()
            ctx.log(f"  {info['events']:,} events stored; {integrations} integrations catch up "
                    f"for {seconds:g}s while RSS is sampled every 0.1s")
            meter = Meter({"daemon": daemon.pid, "receiver": receiver.pid})
            t0 = time.monotonic()
            for k in range(integrations):
                daemon.create_webhook(f"backlog-{k}", f"{receiver.url}/b/{k}", starts_at)
            for _ in ticks(seconds, 0.1):
                samples.append(daemon.memory())
            wall = time.monotonic() - t0
            final = daemon.memory()
            busy = meter.busy(wall)
            delivered = receiver.stats()["count"]
            samples.append(final)

            ctx.log("  then an 11th integration (filter matching nothing) reads the whole log")
            daemon.api("POST", API_BASE, {
                "id": "backlog-scan", "integration_type": "permanent", "starts_at": starts_at,
                "callback_parameters": {"callback_url": f"{receiver.url}/scan"},
                "filter_conditions": {"event_filter": ["return.processed"]}})
            scan_t0 = time.monotonic()
            stable_since, last_file = time.monotonic(), -1.0
            for _ in ticks(ctx.size(90.0, 15.0), 0.1):
                memory = daemon.memory()
                scan.append(memory)
                if abs(memory.get("RssFile", 0.0) - last_file) > 0.5:
                    stable_since, last_file = time.monotonic(), memory.get("RssFile", 0.0)
                elif time.monotonic() - stable_since > settle:
                    break  # file-backed pages stopped growing: the log has been read
            scan_wall = time.monotonic() - scan_t0 - settle
            scan.append(daemon.memory())
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    peak_sample = max(samples, key=lambda m: m.get("VmRSS", 0.0))
    peak = max(final.get("VmHWM", 0.0), peak_sample.get("VmRSS", 0.0))
    peak_anon = max(m.get("RssAnon", 0.0) for m in samples + scan)
    scan_peak = max(scan, key=lambda m: m.get("VmRSS", 0.0))
    note = (f"{info['events']:,} events stored; at the sampled peak: anon "
            f"{peak_sample.get('RssAnon', 0):.0f} MiB + file-backed (LMDB map pages) "
            f"{peak_sample.get('RssFile', 0):.0f} MiB; idle before catch-up "
            f"{idle.get('VmRSS', 0):.0f} MiB; {delivered:,} deliveries in {wall:.1f}s "
            f"({delivered / wall:,.0f}/s), i.e. the integrations read only part of the log")
    scan_note = (f"after the whole log was read once (~{max(scan_wall, 0):.0f}s): anon "
                 f"{scan_peak.get('RssAnon', 0):.0f} MiB + file-backed "
                 f"{scan_peak.get('RssFile', 0):.0f} MiB. File-backed pages are LMDB's "
                 "read-only map: shared page cache the kernel can reclaim, not heap")
    scan_anon = max(m.get("RssAnon", 0.0) for m in scan)
    catch_anon = max(m.get("RssAnon", 0.0) for m in samples)
    return [limit_row(scenario, "peak anonymous RSS (heap), catching up", "MiB", catch_anon,
                      150, note, busy),
            limit_row(scenario, "peak anonymous RSS (heap), log read through", "MiB",
                      scan_anon, 150, scan_note),
            limit_row(scenario, "peak RSS incl. file-backed LMDB pages", "MiB",
                      max(peak, scan_peak.get("VmRSS", 0.0)), None,
                      f"catching up {peak:.0f} MiB; log read through "
                      f"{scan_peak.get('VmRSS', 0):.0f} MiB; anonymous at most {peak_anon:.0f}")]


def restart(ctx: Ctx) -> list[Row]:
    scenario = "restart"
    restarts, integrations = ctx.size(3, 2), 10
    data_dir, info, starts_at = ctx.copy_template(scenario)
    port = free_port()
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = ctx.daemon(scenario, {"storage": {"data_dir": str(data_dir)},
                                       "server": {"port": port}})
        try:
            ctx.log(f"  {info['events']:,} events stored, {integrations} integrations behind; "
                    f"{restarts} restarts (SIGTERM, start, poll /healthz every 5ms)")
            times, stops = _timed_restarts(daemon, port, receiver.url, integrations,
                                           starts_at, restarts)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    floor = _import_floor(ctx)
    note = (f"{info['events']:,} events, {integrations} webhook integrations catching up; "
            f"restarts {', '.join(f'{t:.3f}' for t in times)} s (worst reported); "
            f"graceful stops took {', '.join(f'{t:.2f}' for t in stops)} s; "
            f"interpreter + importing the daemon alone takes {floor:.2f} s")
    return [limit_row(scenario, "seconds until /healthz answers", "s", max(times), 1.5, note)]


def _timed_restarts(daemon: BenchDaemon, port: int, receiver_url: str, integrations: int,
                    starts_at: str, restarts: int) -> tuple[list[float], list[float]]:
    """Create `integrations` webhooks behind the stored events, then `restarts` times:
    SIGTERM, start, poll /healthz every 5 ms. Seconds until it answered, and how long
    each graceful stop took."""
    for k in range(integrations):
        daemon.create_webhook(f"restart-{k}", f"{receiver_url}/r/{k}", starts_at)
    time.sleep(1.0)
    times: list[float] = []
    stops: list[float] = []
    for _ in range(restarts):
        stops.append(daemon.stop())
        t0 = time.monotonic()
        daemon.start(wait=False)
        answered = None
        for _ in ticks(30.0, 0.005):
            try:
                status, _ = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)
            except OSError:
                continue
            if status == 200:
                answered = time.monotonic() - t0
                break
        if answered is None:
            raise RuntimeError("/healthz did not answer within 30s after a restart")
        times.append(answered)
        daemon.wait_ready()
        time.sleep(0.5)
    return times, stops


def _import_floor(ctx: Ctx) -> float:
    """Seconds for a fresh interpreter to import the daemon's modules (a floor for start-up)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import eventstreamd.cli, eventstreamd.daemon.lifecycle"],
                   check=True, timeout=60, cwd=ctx.tmp)
    return time.monotonic() - start


# ------------------------------------------------- the same on the JetStream backend
# The raw baseline of each is bare nats-py against the same nats-server in the same run.


def js_ingest_ndjson(ctx: Ctx) -> list[Row]:
    scenario = "jetstream-ingest-ndjson"
    batches, batch, concurrency = ctx.size(300, 40), 1000, 4
    nats = ctx.nats()

    def run_baseline(n: int, publishers: int) -> dict[str, Any]:
        ctx.log(f"  baseline ({n}): bare nats-py, {batches} atomic batches of {batch}, "
                f"{publishers} publisher(s)")
        return ctx.run("js_ingest_baseline", {
            "nats": nats.url, "prefix": f"base{n}{ctx.jetstream()['jetstream']['prefix']}",
            "mode": "ndjson", "batch": batch, "count": batches, "concurrency": publishers,
            "warmup": 2}, timeout=300)

    # Fsync latency drifts, and concurrent batches help or hurt depending on the disk: one
    # publisher before the daemon, as many as its clients after; the better one counts.
    bases = [run_baseline(1, 1)]
    daemon = ctx.daemon(scenario, ctx.jetstream())
    try:
        ctx.log(f"  daemon: {batches} NDJSON batches of {batch} over {concurrency} connections")
        result, busy = ctx.measure(
            "ingest", {"url": f"{daemon.url}/events", "mode": "ndjson", "batch": batch,
                       "count": batches, "concurrency": concurrency, "warmup": 2},
            {"daemon": daemon.pid, "nats": nats.proc.pid if nats.proc else 0}, timeout=300)
    finally:
        daemon.stop()
    bases.append(run_baseline(2, concurrency))
    rates = [b["events"] / b["wall_s"] for b in bases]
    best = bases[rates.index(max(rates))]
    busy["baseline"] = best["busy"]
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    value = result["events"] / result["wall_s"]
    note = (f"{result['events']:,} events in {result['wall_s']:.2f}s; bare nats-py with 1 / "
            f"{concurrency} publishers {' / '.join(f'{r:,.0f}' for r in rates)} events/s (the "
            "better one counts)"
            + (f"; non-200 answers {bad}" if bad else ""))
    return [ratio_row(scenario, "durable events/s", "events/s", value, max(rates), 0.5,
                      note=note, busy=busy)]


def js_ingest_single(ctx: Ctx) -> list[Row]:
    scenario = "jetstream-ingest-single"
    count, base_count, concurrency = ctx.size(40_000, 3_000), ctx.size(4_000, 600), 32
    nats = ctx.nats()
    # Concurrent single publishes were much slower here than one publisher (each is
    # fsync'd on its own: 1 -> ~1,000/s, 32 -> ~80/s), so both run; the better counts.
    bases = []
    for publishers in (1, concurrency):
        ctx.log(f"  baseline: bare nats-py, {base_count:,} acknowledged publishes of one event, "
                f"{publishers} publisher(s)")
        bases.append(ctx.measure("js_ingest_baseline", {
            "nats": nats.url, "prefix": f"base{ctx.jetstream()['jetstream']['prefix']}",
            "mode": "single", "count": base_count, "concurrency": publishers, "warmup": 64},
            {"nats": nats.proc.pid if nats.proc else 0}, timeout=300))
    rates = [b["events"] / b["wall_s"] for b, _ in bases]
    base_busy = bases[rates.index(max(rates))][1]
    baseline = max(rates)
    daemon = ctx.daemon(scenario, ctx.jetstream())
    try:
        ctx.log(f"  daemon: {count:,} requests of one event, {concurrency} clients")
        result, busy = ctx.measure(
            "ingest", {"url": f"{daemon.url}/events", "mode": "single", "count": count,
                       "concurrency": concurrency, "warmup": 64},
            {"daemon": daemon.pid, "nats": nats.proc.pid if nats.proc else 0}, timeout=300)
    finally:
        daemon.stop()
    busy["baseline_loadgen"] = base_busy["loadgen"]
    busy["baseline_nats"] = base_busy["nats"]
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    value = result["events"] / result["wall_s"]
    note = (f"{result['events']:,} events in {result['wall_s']:.2f}s; bare nats-py with 1 / "
            f"{concurrency} publishers {' / '.join(f'{r:,.0f}' for r in rates)} events/s (the "
            "better counts); the daemon group-commits concurrent requests into atomic batches, "
            "the bare publisher fsyncs each event"
            + (f"; non-200 answers {bad}" if bad else ""))
    return [ratio_row(scenario, "durable events/s", "events/s", value, baseline, 0.5,
                      note=note, busy=busy)]


def js_webhook_8(ctx: Ctx) -> list[Row]:
    scenario, in_flight, per = "jetstream-webhook-inflight-8", 8, ctx.size(20_000, 2_000)
    receiver = ReceiverProc(ctx.children)
    try:
        settings = {**ctx.jetstream(), "webhook": {"max_in_flight": in_flight}}
        prefix = settings["jetstream"]["prefix"]
        daemon = ctx.daemon(scenario, settings)
        try:
            starts_at = starts_at_now()
            ctx.log(f"  daemon: publishing {per:,} events")
            ctx.run("publish_all", {"url": f"{daemon.url}/events", "events": per}, timeout=300)
            ctx.log(f"  baseline: bare nats-py DIRECT.GET reads of those events, each POSTed "
                    f"by a bare aiohttp client, {in_flight} concurrent")
            base, base_busy = ctx.measure("js_webhook_baseline", {
                "nats": ctx.nats().url, "prefix": prefix, "count": per,
                "url": f"{receiver.url}/base", "concurrency": in_flight},
                {"receiver": receiver.pid}, timeout=600)
            stats = receiver.wait_count(per, 30)
            baseline = stats["count"] / ((stats["last_ns"] - base["t0_ns"]) / 1e9)
            receiver.reset()
            ctx.log(f"  daemon: one integration catches up (max_in_flight {in_flight})")
            meter = Meter({"daemon": daemon.pid, "receiver": receiver.pid})
            t0 = time.monotonic_ns()
            daemon.create_webhook("bench-0", f"{receiver.url}/hook/0", starts_at)
            stats = receiver.wait_count(per, max(60.0, per / 300) if not ctx.quick else 40.0)
            t1 = time.monotonic_ns()
            elapsed = ((stats["last_ns"] or t1) - t0) / 1e9
            busy = {**meter.busy((t1 - t0) / 1e9), "baseline_client": base_busy["loadgen"],
                    "baseline_receiver": base_busy["receiver"]}
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    value = stats["count"] / elapsed if stats["count"] else None
    note = f"{stats['count']:,} of {per:,} delivered in {elapsed:.2f}s"
    if stats["count"] < per:
        note += " (INCOMPLETE within the time limit)"
    return [ratio_row(scenario, "delivered events/s", "events/s", value, baseline, 0.5,
                      note=note, busy=busy)]


def _scaleout_run(ctx: Ctx, receiver: ReceiverProc, instances: int, integrations: int,
                  per: int) -> tuple[dict[str, Any], float, dict[str, float]]:
    """`instances` daemons on one fresh prefix: publish `per` events, then create the
    integrations and time until every one has delivered them all."""
    settings = ctx.jetstream()
    settings["jetstream"]["lease_ttl"] = "3s"
    daemons = []
    try:
        for number in range(instances):
            settings["jetstream"]["instance"] = f"bench-{number}"
            daemons.append(ctx.daemon(f"jetstream-scaleout-{instances}-{number}",
                                      {**settings, "jetstream": dict(settings["jetstream"])}))
        time.sleep(2.0)  # every daemon has announced itself: the first to look sees them all
        starts_at = starts_at_now()
        ctx.run("publish_all", {"url": f"{daemons[0].url}/events", "events": per}, timeout=300)
        receiver.reset()
        pids = {f"daemon{n}": d.pid for n, d in enumerate(daemons)}
        nats_proc = ctx.nats().proc
        pids.update(receiver=receiver.pid)
        if nats_proc is not None:
            pids["nats"] = nats_proc.pid
        meter = Meter(pids)
        t0 = time.monotonic_ns()
        for k in range(integrations):
            daemons[k % instances].create_webhook(f"bench-{k}", f"{receiver.url}/hook/{k}",
                                                  starts_at)
        total = integrations * per
        stats = receiver.wait_count(total, max(60.0, total / 200) if not ctx.quick else 40.0)
        t1 = time.monotonic_ns()
        elapsed = ((stats["last_ns"] or t1) - t0) / 1e9
        busy = meter.busy((t1 - t0) / 1e9)
    finally:
        for daemon in daemons:
            daemon.stop()
    return stats, elapsed, busy


def js_scaleout(ctx: Ctx) -> list[Row]:
    scenario, integrations, per = "jetstream-scaleout", 10, ctx.size(3_000, 300)
    receiver = ReceiverProc(ctx.children)
    try:
        ctx.log(f"  1 daemon: {integrations} integrations x {per:,} events")
        one, one_s, one_busy = _scaleout_run(ctx, receiver, 1, integrations, per)
        ctx.log(f"  2 daemons: {integrations} integrations x {per:,} events")
        two, two_s, two_busy = _scaleout_run(ctx, receiver, 2, integrations, per)
    finally:
        receiver.stop()
    total = integrations * per
    rate_one = one["count"] / one_s if one["count"] else None
    rate_two = two["count"] / two_s if two["count"] else None

    def note(stats: dict[str, Any], seconds: float) -> str:
        text = f"{stats['count']:,} of {total:,} delivered in {seconds:.2f}s"
        return text + (" (INCOMPLETE within the time limit)" if stats["count"] < total else "")

    # The runner prints one busyness line per scenario (the first row's): both runs in it.
    both = {**{f"{k} (1 daemon)": v for k, v in one_busy.items() if k != "machine"},
            **{f"{k} (2 daemons)": v for k, v in two_busy.items() if k != "machine"},
            "machine": max(one_busy.get("machine", 0.0), two_busy.get("machine", 0.0))}
    return [
        ratio_row(scenario, "1 daemon: delivered events/s", "events/s", rate_one, None, None,
                  note=note(one, one_s), busy=both),
        ratio_row(scenario, "2 daemons: delivered events/s (baseline: 1 daemon)", "events/s",
                  rate_two, rate_one, 1.3, note=note(two, two_s), busy=two_busy),
    ]


def js_restart(ctx: Ctx) -> list[Row]:
    scenario = "jetstream-restart"
    restarts, integrations, count = ctx.size(3, 2), 10, ctx.size(1_000_000, 50_000)
    settings = {**ctx.jetstream(), "server": {"port": free_port()}}
    port = settings["server"]["port"]
    ctx.log(f"  filling the event stream with {count:,} events (bare nats-py atomic batches)")
    starts_at = starts_at_now(60)
    ctx.run("js_fill", {"nats": ctx.nats().url, "prefix": settings["jetstream"]["prefix"],
                        "count": count}, timeout=900)
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = ctx.daemon(scenario, settings)
        try:
            ctx.log(f"  {count:,} events stored, {integrations} integrations behind; "
                    f"{restarts} restarts (SIGTERM, start, poll /healthz every 5ms)")
            times, _ = _timed_restarts(daemon, port, receiver.url, integrations, starts_at,
                                       restarts)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    floor = _import_floor(ctx)
    bare = _nats_connect_floor(ctx)
    note = (f"{count:,} events in JetStream, {integrations} webhook integrations catching up; "
            f"restarts {', '.join(f'{t:.3f}' for t in times)} s (worst reported); importing "
            f"the daemon alone takes {floor:.2f} s, a bare nats-py connect + stream info "
            f"(fresh interpreter) {bare:.2f} s")
    return [limit_row(scenario, "seconds until /healthz answers", "s", max(times), 2.0, note)]


def _nats_connect_floor(ctx: Ctx) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", (
        "import asyncio, nats\n"
        "async def main():\n"
        f"    nc = await nats.connect({ctx.nats().url!r})\n"
        "    await nc.request('$JS.API.INFO', b'', timeout=5)\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n")], check=True, timeout=60, cwd=ctx.tmp)
    return time.monotonic() - start


SCENARIOS: dict[str, Callable[[Ctx], list[Row]]] = {
    "ingest-ndjson": ingest_ndjson,
    "ingest-single": ingest_single,
    "webhook-inflight-8": webhook_8,
    "webhook-inflight-1": webhook_1,
    "webhook-fanout-10": webhook_fanout,
    "webhook-ordered-strict": webhook_strict,
    "webhook-ordered-keyed": webhook_keyed,
    "webhook-max-rate": webhook_max_rate,
    "latency-1000eps": latency,
    "capacity": capacity,
    "s3-upload": s3_upload,
    "backlog-rss": backlog_rss,
    "restart": restart,
    "jetstream-ingest-ndjson": js_ingest_ndjson,
    "jetstream-ingest-single": js_ingest_single,
    "jetstream-webhook-inflight-8": js_webhook_8,
    "jetstream-restart": js_restart,
    "jetstream-scaleout": js_scaleout,
}
assert tuple(SCENARIOS) == SCENARIO_IDS
