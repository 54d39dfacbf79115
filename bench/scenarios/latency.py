"""End-to-end latency on the default backend: publish-to-receipt percentiles at a steady
1,000 events/s, and the highest steady rate whose p99 stays within 50 ms, against a bare
server that relays each event with a bare client."""

from __future__ import annotations

import time

from ..common import TOKEN, Helper
from ..context import Ctx
from ..processes import ReceiverProc
from ..rows import Row, limit_row, ratio_row


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
