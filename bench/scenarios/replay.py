"""A replay beside live traffic on LMDB: live publish-to-receipt p99 at 500 events/s while
a replay of the stored backlog (1,000,000 events) runs unpaced on the same integration,
against the same p99 without the replay; and the replay's own throughput against a plain
catch-up (`webhook-inflight-8`'s figure) measured on the same store."""

from __future__ import annotations

import time
from typing import Any

from ..common import API_BASE, Meter, ticks
from ..context import Ctx, starts_at_now
from ..daemon import BenchDaemon
from ..processes import ReceiverProc
from ..rows import Row, at_most_row, ratio_row

LIVE_RATE = 500
WARM_UP = 100  # live samples left out of each phase


def _live_p99(ctx: Ctx, daemon: BenchDaemon, receiver: ReceiverProc,
              duration: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """The paced publisher at `LIVE_RATE` for `duration` (the receiver reset before): its
    result, the live latencies (percentiles) and how busy everyone was."""
    result, busy = ctx.measure(
        "paced", {"url": f"{daemon.url}/events", "rate": LIVE_RATE, "duration": duration},
        {"daemon": daemon.pid, "receiver": receiver.pid}, timeout=duration + 120)
    for _ in ticks(30.0, 0.05):  # every live event has arrived (a replay may still run)
        stats = receiver.stats(skip=WARM_UP)
        if stats["latency"].get("n", 0) + WARM_UP >= result["sent"]:
            break
    return result, stats["latency"], busy


def _catch_up_rate(daemon: BenchDaemon, receiver: ReceiverProc, starts_at: str,
                   count: int, limit: float) -> float | None:
    """A fresh integration catching up on the stored events (8 in flight), counted for its
    first `count` deliveries, then deleted; deliveries per second."""
    receiver.reset()
    t0 = time.monotonic_ns()
    daemon.create_webhook("catch-up", f"{receiver.url}/catch-up", starts_at)
    stats = receiver.wait_count(count, limit)
    daemon.api("DELETE", f"{API_BASE}/catch-up")
    if not stats["count"] or not stats["last_ns"]:
        return None
    return float(stats["count"] / ((stats["last_ns"] - t0) / 1e9))


def replay(ctx: Ctx) -> list[Row]:
    scenario = "replay"
    duration = ctx.size(20.0, 3.0)
    settings: dict[str, Any] = {"webhook": {"max_in_flight": 8}}
    if ctx.quick:  # a small log of its own
        data_dir, starts_at, stored = None, starts_at_now(), 60_000
    else:
        data_dir, info, starts_at = ctx.copy_template(scenario)
        stored = int(info["events"])
        settings["storage"] = {"data_dir": str(data_dir)}
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = ctx.daemon(scenario, settings)
        try:
            if data_dir is None:
                ctx.publish(daemon, stored)
            count = ctx.size(100_000, 2_000)
            ctx.log(f"  baseline: a plain catch-up, {count:,} events at 8 in flight")
            catch_up = _catch_up_rate(daemon, receiver, starts_at, count, ctx.size(300.0, 60.0))
            time.sleep(1.0)  # its last requests are answered
            daemon.create_webhook("live", f"{receiver.url}/live", None)
            time.sleep(0.5)  # the sink starts
            ctx.log(f"  live only: {LIVE_RATE} events/s for {duration:g}s")
            receiver.reset()
            _, alone, _ = _live_p99(ctx, daemon, receiver, duration)
            receiver.reset()
            started = daemon.api("POST", f"{API_BASE}/live/_replay",
                                 {"starts_at": starts_at}, expect=202)
            events = int(started["events"])
            meter = Meter({"daemon": daemon.pid, "receiver": receiver.pid})
            t0 = time.monotonic()
            ctx.log(f"  live beside a replay of {events:,} events (unpaced)")
            result, beside, busy = _live_p99(ctx, daemon, receiver, duration)
            stats = receiver.stats()
            beside_live = (stats["replayed"], time.monotonic() - t0)
            for _ in ticks(ctx.size(1800.0, 120.0), 0.5):
                stats = receiver.stats()
                if stats["replayed"] >= events:
                    break
            replay_busy = meter.busy(time.monotonic() - t0)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    replayed, first, last = stats["replayed"], stats["replayed_first_ns"], \
        stats["replayed_last_ns"]
    rate = replayed / ((last - first) / 1e9) if replayed > 1 and first and last else None
    note = (f"{alone.get('n', 0):,} / {beside.get('n', 0):,} live samples after {WARM_UP} "
            f"warm-up; p50 {alone.get('p50_ms', 0):.1f} -> {beside.get('p50_ms', 0):.1f} ms, "
            f"max {alone.get('max_ms', 0):.1f} -> {beside.get('max_ms', 0):.1f} ms; live "
            f"achieved {result['achieved_rate']:.0f}/s; the replay delivered "
            f"{beside_live[0]:,} beside live traffic ({beside_live[0] / beside_live[1]:,.0f}/s)"
            f" and {replayed:,} of {events:,} in all")
    return [
        at_most_row(scenario, "live publish-to-receipt p99 while a replay runs", "ms",
                    beside.get("p99_ms"), alone.get("p99_ms"), 2.0, note, busy),
        ratio_row(scenario, "replay throughput (unpaced)", "events/s", rate, catch_up, 0.8,
                  note=(f"{replayed:,} of {events:,} replayed events, first to last arrival; "
                        f"baseline: a plain catch-up on the same store (8 in flight)"
                        + ("" if replayed >= events else " (INCOMPLETE)")),
                  busy=replay_busy),
    ]
