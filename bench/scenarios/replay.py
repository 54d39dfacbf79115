"""A replay beside live traffic on LMDB: live publish-to-receipt p99 at 500 events/s while
a replay of the stored backlog (1,000,000 events) runs unpaced on the same integration,
against the same p99 without the replay; and the replay's own throughput against a plain
catch-up (`webhook-inflight-8`'s figure) measured on the same store, once before the
replay and once after it (their mean is the baseline: a shared host drifts over the
three minutes between them, and one 15-second sample moved the ratio by 0.15 from run to
run; the note gives both). First, how long a
dry run over the whole stored log takes (the issue asks it for 1M events), against a plain
GET of the integration: the count must come from the time index and the per-bucket name
counts, never a scan."""

from __future__ import annotations

import time
from typing import Any

from ..common import API_BASE, Meter, ticks
from ..context import Ctx, starts_at_now
from ..daemon import BenchDaemon
from ..processes import ReceiverProc
from ..rows import Row, at_most_row, cost_row, ratio_row

LIVE_RATE = 500
WARM_UP = 100  # live samples left out of each phase
DRY_RUNS = 30  # timed requests of each kind; the median is reported


def _median_ms(daemon: BenchDaemon, method: str, path: str, body: Any = None) -> float:
    """The median wall time of `DRY_RUNS` requests (after one untimed), in ms."""
    daemon.api(method, path, body)
    times = []
    for _ in range(DRY_RUNS):
        t0 = time.perf_counter()
        daemon.api(method, path, body)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def _dry_run_row(scenario: str, daemon: BenchDaemon, starts_at: str, stored: int) -> Row:
    """How long a dry run over the whole stored log takes, filtered (the per-bucket name
    counts) and not (the range's length), against a plain read of the integration."""
    path = f"{API_BASE}/live/_replay"
    plain = _median_ms(daemon, "GET", f"{API_BASE}/live")
    whole = _median_ms(daemon, "POST", path, {"starts_at": starts_at, "dry_run": True})
    filtered = _median_ms(daemon, "POST", path, {
        "starts_at": starts_at, "dry_run": True,
        "filter_conditions": {"entity_filter": ["order"]}})
    counted = daemon.api("POST", path, {"starts_at": starts_at, "dry_run": True,
                                        "filter_conditions": {"entity_filter": ["order"]}})
    return cost_row(scenario, f"dry run over {stored:,} events, filtered", "ms", filtered,
                    plain, 10.0,
                    note=(f"median of {DRY_RUNS}; counted {counted['events']:,}; unfiltered "
                          f"{whole:.2f} ms; baseline: GET of the integration"))


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
            ctx.log(f"  dry runs over the {stored:,} stored events")
            dry_run = _dry_run_row(scenario, daemon, starts_at, stored)
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
            live_end_ns = time.monotonic_ns()  # the receiver's clock too (CLOCK_MONOTONIC)
            for _ in ticks(ctx.size(1800.0, 120.0), 0.5):
                stats = receiver.stats()
                if stats["replayed"] >= events:
                    break
            replay_busy = meter.busy(time.monotonic() - t0)
            time.sleep(1.0)  # the replay's last requests are answered
            ctx.log(f"  baseline again: a plain catch-up, {count:,} events at 8 in flight")
            catch_up_after = _catch_up_rate(daemon, receiver, starts_at, count,
                                            ctx.size(300.0, 60.0))
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    replayed, first, last = stats["replayed"], stats["replayed_first_ns"], \
        stats["replayed_last_ns"]
    rate = replayed / ((last - first) / 1e9) if replayed > 1 and first and last else None
    # Once live traffic has stopped the replay is no longer paced by the loop's share.
    after = (replayed - beside_live[0]) / ((last - live_end_ns) / 1e9) \
        if last and last > live_end_ns else None
    after_note = f"; after live traffic stopped {after:,.0f}/s" if after else ""
    catch_ups = [rate for rate in (catch_up, catch_up_after) if rate]
    baseline = sum(catch_ups) / len(catch_ups) if catch_ups else None
    catch_up_note = " and ".join(f"{rate:,.0f}" for rate in (catch_up, catch_up_after) if rate)
    note = (f"{alone.get('n', 0):,} / {beside.get('n', 0):,} live samples after {WARM_UP} "
            f"warm-up; p50 {alone.get('p50_ms', 0):.1f} -> {beside.get('p50_ms', 0):.1f} ms, "
            f"max {alone.get('max_ms', 0):.1f} -> {beside.get('max_ms', 0):.1f} ms; live "
            f"achieved {result['achieved_rate']:.0f}/s; the replay delivered "
            f"{beside_live[0]:,} beside live traffic ({beside_live[0] / beside_live[1]:,.0f}/s)"
            f" and {replayed:,} of {events:,} in all")
    return [
        dry_run,
        at_most_row(scenario, "live publish-to-receipt p99 while a replay runs", "ms",
                    beside.get("p99_ms"), alone.get("p99_ms"), 2.0, note, busy),
        ratio_row(scenario, "replay throughput (unpaced)", "events/s", rate, baseline, 0.8,
                  note=(f"{replayed:,} of {events:,} replayed events, first to last arrival"
                        f"{after_note}; baseline: the mean of a plain catch-up on the same "
                        f"store before the replay and after it ({catch_up_note}/s; its first "
                        f"{count:,} events, 8 in flight)"
                        + ("" if replayed >= events else " (INCOMPLETE)")),
                  busy=replay_busy),
    ]
