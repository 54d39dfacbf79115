"""What the scenarios of both backends do alike: measure the daemon's ingest, a bare
client's delivery rate, integrations catching up on stored events, and timed restarts.

A scenario of one backend differs from its twin in its settings, its baseline and its
sizes, which it passes in; the measuring is here once.
"""

from __future__ import annotations

import time
from typing import Any

from ..common import Meter, http, ticks
from ..context import Ctx, starts_at_now
from ..daemon import BenchDaemon
from ..processes import ReceiverProc
from ..rows import Row, ratio_row

INCOMPLETE = " (INCOMPLETE within the time limit)"


# ---------------------------------------------------------------------- ingest

def daemon_ingest(ctx: Ctx, scenario: str, settings: dict[str, Any] | None,
                  args: dict[str, Any], pids: dict[str, int] | None = None,
                  ) -> tuple[dict[str, Any], dict[str, float]]:
    """The `ingest` load generator against a daemon of its own; its result and how busy
    the daemon (and `pids`) were."""
    daemon = ctx.daemon(scenario, settings)
    try:
        what = (f"{args['count']} NDJSON batches of {args['batch']}" if args["mode"] == "ndjson"
                else f"{args['count']:,} requests of one event")
        connections = "connections" if args["mode"] == "ndjson" else "clients"
        ctx.log(f"  daemon: {what} over {args['concurrency']} {connections}")
        return ctx.measure("ingest", {**args, "url": f"{daemon.url}/events"},
                           {"daemon": daemon.pid, **(pids or {})}, timeout=300)
    finally:
        daemon.stop()


def events_per_second(result: dict[str, Any]) -> float:
    return float(result["events"] / result["wall_s"])


def ingest_note(result: dict[str, Any]) -> str:
    """How many events in how long, and any answer that was not 200."""
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    return (f"{result['events']:,} events in {result['wall_s']:.2f}s"
            + (f"; non-200 answers {bad}" if bad else ""))


# ------------------------------------------------------------ webhook delivery

def bare_delivery_rate(ctx: Ctx, receiver: ReceiverProc, command: str, args: dict[str, Any],
                       total: int) -> tuple[float, dict[str, float]]:
    """A bare client's webhook deliveries per second, counted at the receiver from the
    client's start to the last arrival; and how busy the client and receiver were."""
    base, busy = ctx.measure(command, args, {"receiver": receiver.pid}, timeout=600)
    stats = receiver.wait_count(total, 30)
    return stats["count"] / ((stats["last_ns"] - base["t0_ns"]) / 1e9), busy


def catch_up(receiver: ReceiverProc, daemons: list[BenchDaemon], pids: dict[str, int],
             hooks: list[tuple[str, str]], starts_at: str, total: int,
             limit: float, controls: dict[str, Any] | None = None,
             ) -> tuple[dict[str, Any], float, dict[str, float]]:
    """Webhook integrations (name, URL; `controls` in their callback_parameters) created
    behind the stored events, one daemon after another: the receiver's stats once `total`
    requests arrived (or at `limit`), the seconds from the first creation to the last
    arrival, and how busy `pids` were."""
    meter = Meter(pids)
    t0 = time.monotonic_ns()
    for k, (name, url) in enumerate(hooks):
        daemons[k % len(daemons)].create_webhook(name, url, starts_at, controls)
    stats = receiver.wait_count(total, limit)
    t1 = time.monotonic_ns()
    return stats, ((stats["last_ns"] or t1) - t0) / 1e9, meter.busy((t1 - t0) / 1e9)


def one_daemon_catch_up(ctx: Ctx, daemon: BenchDaemon, receiver: ReceiverProc,
                        hooks: list[tuple[str, str]], starts_at: str, total: int,
                        controls: dict[str, Any] | None = None,
                        ) -> tuple[dict[str, Any], float, dict[str, float]]:
    """`catch_up` on one daemon, given as long as 300 deliveries a second would take
    (at least 60 s; 40 s in a quick run)."""
    return catch_up(receiver, [daemon], {"daemon": daemon.pid, "receiver": receiver.pid},
                    hooks, starts_at, total, max(60.0, total / 300) if not ctx.quick else 40.0,
                    controls)


def published_catch_up(ctx: Ctx, scenario: str, receiver: ReceiverProc,
                       hooks: list[tuple[str, str]], per: int, in_flight: int,
                       controls: dict[str, Any] | None = None,
                       settings: dict[str, Any] | None = None,
                       ) -> tuple[dict[str, Any], float, dict[str, float]]:
    """A daemon of its own (`max_in_flight` given, `settings` on top): `per` events
    published, then the webhooks (`controls` in their callback_parameters) catch up
    (`one_daemon_catch_up`)."""
    daemon = ctx.daemon(scenario, {"webhook": {"max_in_flight": in_flight},
                                   **(settings or {})})
    try:
        starts_at = starts_at_now()
        ctx.log(f"  daemon: publishing {per:,} events, then {len(hooks)} integration(s) "
                f"catch up (max_in_flight {in_flight}{f', {controls}' if controls else ''})")
        ctx.publish(daemon, per)
        receiver.reset()
        return one_daemon_catch_up(ctx, daemon, receiver, hooks, starts_at,
                                   len(hooks) * per, controls)
    finally:
        daemon.stop()


def delivered_note(stats: dict[str, Any], total: int, seconds: float) -> str:
    note = f"{stats['count']:,} of {total:,} delivered in {seconds:.2f}s"
    return note + (INCOMPLETE if stats["count"] < total else "")


def delivered_row(scenario: str, figure: str, stats: dict[str, Any], total: int,
                  seconds: float, baseline: float | None, min_ratio: float | None,
                  busy: dict[str, float]) -> Row:
    value = stats["count"] / seconds if stats["count"] else None
    return ratio_row(scenario, figure, "events/s", value, baseline, min_ratio,
                     note=delivered_note(stats, total, seconds), busy=busy)


# --------------------------------------------------------------------- restart

def timed_restarts(daemon: BenchDaemon, port: int, receiver_url: str, integrations: int,
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
        stops.append(daemon.timed_stop())
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
