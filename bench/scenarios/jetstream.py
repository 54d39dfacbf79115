"""The scenarios on the JetStream backend, each against bare nats-py on the same
nats-server in the same run: ingest (NDJSON batches, single events), webhook catch-up
(8 in flight), restart time with 1,000,000 events in the stream, and scale-out (the
10-integration fan-out with one daemon and with two on one prefix: its throughput, and
what a delivery costs the daemons in CPU with two against one, also beside 1,000
integrations spread over them)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.helpers.processes import free_port

from ..common import TOKEN, http, ticks
from ..context import Ctx, starts_at_now
from ..daemon import BenchDaemon
from ..integrations_probe import create
from ..processes import ReceiverProc, import_floor, nats_connect_floor, pid_of
from ..rows import Row, cost_row, limit_row, ratio_row
from . import shared


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
    result, busy = shared.daemon_ingest(ctx, scenario, ctx.jetstream(), {
        "mode": "ndjson", "batch": batch, "count": batches, "concurrency": concurrency,
        "warmup": 2}, {"nats": pid_of(nats)})
    bases.append(run_baseline(2, concurrency))
    rates = [shared.events_per_second(b) for b in bases]
    busy["baseline"] = bases[rates.index(max(rates))]["busy"]
    note = (f"{shared.ingest_note(result)}; bare nats-py with 1 / {concurrency} publishers "
            f"{' / '.join(f'{r:,.0f}' for r in rates)} events/s (the better one counts)")
    return [ratio_row(scenario, "durable events/s", "events/s", shared.events_per_second(result),
                      max(rates), 0.5, note=note, busy=busy)]


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
            {"nats": pid_of(nats)}, timeout=300))
    rates = [shared.events_per_second(b) for b, _ in bases]
    base_busy = bases[rates.index(max(rates))][1]
    result, busy = shared.daemon_ingest(ctx, scenario, ctx.jetstream(), {
        "mode": "single", "count": count, "concurrency": concurrency, "warmup": 64},
        {"nats": pid_of(nats)})
    busy["baseline_loadgen"] = base_busy["loadgen"]
    busy["baseline_nats"] = base_busy["nats"]
    note = (f"{shared.ingest_note(result)}; bare nats-py with 1 / {concurrency} publishers "
            f"{' / '.join(f'{r:,.0f}' for r in rates)} events/s (the better counts); the "
            "daemon group-commits concurrent requests into atomic batches, the bare publisher "
            "fsyncs each event")
    return [ratio_row(scenario, "durable events/s", "events/s", shared.events_per_second(result),
                      max(rates), 0.5, note=note, busy=busy)]


def js_webhook_8(ctx: Ctx) -> list[Row]:
    """One webhook catches up on stored events (8 in flight); the baseline reads the same
    events from the daemon's stream with bare nats-py and posts them with a bare client."""
    scenario, in_flight, per = "jetstream-webhook-inflight-8", 8, ctx.size(20_000, 2_000)
    receiver = ReceiverProc(ctx.children)
    try:
        settings = {**ctx.jetstream(), "webhook": {"max_in_flight": in_flight}}
        daemon = ctx.daemon(scenario, settings)
        try:
            starts_at = starts_at_now()
            ctx.log(f"  daemon: publishing {per:,} events")
            ctx.publish(daemon, per)
            ctx.log(f"  baseline: bare nats-py DIRECT.GET reads of those events, each POSTed "
                    f"by a bare aiohttp client, {in_flight} concurrent")
            baseline, base_busy = shared.bare_delivery_rate(ctx, receiver, "js_webhook_baseline", {
                "nats": ctx.nats().url, "prefix": settings["jetstream"]["prefix"],
                "count": per, "url": f"{receiver.url}/base", "concurrency": in_flight}, per)
            receiver.reset()
            ctx.log(f"  daemon: one integration catches up (max_in_flight {in_flight})")
            stats, elapsed, busy = shared.one_daemon_catch_up(
                ctx, daemon, receiver, [("bench-0", f"{receiver.url}/hook/0")], starts_at, per)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    busy.update({"baseline_client": base_busy["loadgen"],
                 "baseline_receiver": base_busy["receiver"]})
    return [shared.delivered_row(scenario, "delivered events/s", stats, per, elapsed,
                                 baseline, 0.5, busy)]


def _scaleout_run(ctx: Ctx, receiver: ReceiverProc, instances: int, integrations: int,
                  per: int, quiet: int = 0) -> ScaleoutRun:
    """`instances` daemons on one fresh prefix (with `quiet` integrations whose filter
    matches nothing, spread over them first): publish `per` events, then create the
    `integrations` and time until every one has delivered them all."""
    settings = ctx.jetstream()
    settings["jetstream"]["lease_ttl"] = "3s"
    settings["limits"] = {"max_integrations": integrations + quiet + 10}
    daemons: list[BenchDaemon] = []
    try:
        for number in range(instances):
            settings["jetstream"]["instance"] = f"bench-{number}"
            daemons.append(ctx.daemon(
                f"jetstream-scaleout-{instances}-{quiet}-{number}",
                {**settings, "jetstream": dict(settings["jetstream"])}))
        time.sleep(ctx.size(2.0, 1.0))  # every daemon beat: the first to look sees them all
        if quiet:
            create(daemons[0], quiet, f"{receiver.url}/quiet", matching=0)
            _wait_spread(daemons[0], quiet, instances, ctx.size(120.0, 30.0),
                         settle=ctx.size(2.0, 0.5))
        starts_at = starts_at_now()
        ctx.publish(daemons[0], per)
        receiver.reset()
        pids = {f"daemon{n}": d.pid for n, d in enumerate(daemons)}
        pids.update(receiver=receiver.pid)
        if ctx.nats().proc is not None:
            pids["nats"] = pid_of(ctx.nats())
        total = integrations * per
        cpu0 = sum(d.cpu() for d in daemons)
        stats, seconds, busy = shared.catch_up(
            receiver, daemons, pids,
            [(f"bench-{k}", f"{receiver.url}/hook/{k}") for k in range(integrations)],
            starts_at, total, max(60.0, total / 200) if not ctx.quick else 40.0)
        return ScaleoutRun(stats, seconds, busy, sum(d.cpu() for d in daemons) - cpu0)
    finally:
        for daemon in daemons:
            daemon.stop()


@dataclass
class ScaleoutRun:
    stats: dict[str, Any]  # the receiver's
    seconds: float  # from the first integration created to the last delivery
    busy: dict[str, float]
    cpu_s: float  # every daemon's CPU seconds together, over the same time

    @property
    def rate(self) -> float | None:
        return self.stats["count"] / self.seconds if self.stats["count"] else None

    @property
    def cpu_per_1000(self) -> float | None:
        """Daemon CPU seconds per 1,000 delivered events."""
        return 1000 * self.cpu_s / self.stats["count"] if self.stats["count"] else None


def _wait_spread(daemon: BenchDaemon, count: int, instances: int, timeout: float,
                 settle: float) -> None:
    """Until `count` integrations are each held by a daemon, as evenly as the balancers
    share them (what `/status` of `daemon` says)."""
    share = -(-count // instances)
    owners: dict[str, int] = {}
    for _ in ticks(timeout, 0.25):
        status, snapshot = http("GET", f"{daemon.url}/status", token=TOKEN, timeout=30)
        if status != 200:
            continue
        owners = {}
        for item in snapshot["integrations"]:
            if item.get("owner"):
                owners[item["owner"]] = owners.get(item["owner"], 0) + 1
        if sum(owners.values()) >= count and len(owners) == instances \
                and max(owners.values()) <= share:
            time.sleep(settle)  # every sink started and parked
            return
    raise RuntimeError(f"{count} integrations not spread over {instances} daemons within "
                       f"{timeout:g}s: {owners}")


def js_scaleout(ctx: Ctx) -> list[Row]:
    scenario, integrations, per = "jetstream-scaleout", 10, ctx.size(3_000, 300)
    quiet = ctx.size(990, 40)
    receiver = ReceiverProc(ctx.children)
    try:
        ctx.log(f"  1 daemon: {integrations} integrations x {per:,} events")
        one = _scaleout_run(ctx, receiver, 1, integrations, per)
        ctx.log(f"  2 daemons: {integrations} integrations x {per:,} events")
        two = _scaleout_run(ctx, receiver, 2, integrations, per)
        ctx.log(f"  1 daemon, then 2: the same beside {quiet:,} integrations matching nothing")
        many_one = _scaleout_run(ctx, receiver, 1, integrations, per, quiet)
        many_two = _scaleout_run(ctx, receiver, 2, integrations, per, quiet)
    finally:
        receiver.stop()
    total = integrations * per
    # The runner prints one busyness line per scenario (the first row's): both runs in it.
    both = {**{f"{k} (1 daemon)": v for k, v in one.busy.items() if k != "machine"},
            **{f"{k} (2 daemons)": v for k, v in two.busy.items() if k != "machine"},
            "machine": max(one.busy.get("machine", 0.0), two.busy.get("machine", 0.0))}

    def cpu_note(first: ScaleoutRun, second: ScaleoutRun) -> str:
        return (f"1 daemon {first.cpu_s:.2f} CPU s for {first.stats['count']:,} deliveries, "
                f"2 daemons {second.cpu_s:.2f} CPU s for {second.stats['count']:,} "
                f"(in {first.seconds:.1f} s and {second.seconds:.1f} s)")

    return [
        ratio_row(scenario, "1 daemon: delivered events/s", "events/s", one.rate, None, None,
                  note=shared.delivered_note(one.stats, total, one.seconds), busy=both),
        ratio_row(scenario, "2 daemons: delivered events/s (baseline: 1 daemon)", "events/s",
                  two.rate, one.rate, None,
                  note=shared.delivered_note(two.stats, total, two.seconds)
                  + "; on 2 shared cores the host, not the daemons, bounds this: the CPU "
                  "rows below are the measure of scale-out", busy=two.busy),
        cost_row(scenario, "2 daemons: daemon CPU s per 1,000 delivered (baseline: 1 daemon)",
                 "CPU s", two.cpu_per_1000, one.cpu_per_1000, 1.15, cpu_note(one, two)),
        cost_row(scenario, f"{quiet + integrations:,} integrations over 2 daemons: daemon CPU s "
                 "per 1,000 delivered (baseline: 1 daemon)", "CPU s", many_two.cpu_per_1000,
                 many_one.cpu_per_1000, 1.15,
                 f"{integrations} delivering, {quiet:,} matching nothing spread over the "
                 f"daemons first; " + cpu_note(many_one, many_two)),
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
            times, _ = shared.timed_restarts(daemon, port, receiver.url, integrations, starts_at,
                                      restarts)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    floor = import_floor(ctx.tmp)
    bare = nats_connect_floor(ctx.nats().url, ctx.tmp)
    note = (f"{count:,} events in JetStream, {integrations} webhook integrations catching up; "
            f"restarts {', '.join(f'{t:.3f}' for t in times)} s (worst reported); importing "
            f"the daemon alone takes {floor:.2f} s, a bare nats-py connect + stream info "
            f"(fresh interpreter) {bare:.2f} s")
    return [limit_row(scenario, "seconds until /healthz answers", "s", max(times), 2.0, note)]
