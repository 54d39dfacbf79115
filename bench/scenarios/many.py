"""`many-integrations`: what a thousand integrations cost the daemon, measured with the
integrations probe's measurements (bench/integrations_probe.py) against the targets.

Rows (a quick run uses 50 integrations, a second of idling and small sizes):
- idle CPU with N integrations whose filter matches nothing, no events: LMDB
  (≤ 2 % of a core) and JetStream (≤ 5 %; nats-server's share in the note);
- a /metrics scrape with N integrations (median of several, ≤ 100 ms) and the
  slowest /healthz answered during one (≤ 20 ms), on the idle LMDB daemon;
- 10 matching integrations among N, delivering live traffic (NDJSON batches),
  against the same 10 alone (≥ 0.8 ×);
- peak anonymous RSS while 62 MiB of 16 KiB events flow to N integrations of
  which one matches (≤ 200 MiB);
- a fan-out to 100 matching integrations catching up on stored events, against
  a bare aiohttp client at 100 × 8 in flight (≥ 0.8 ×).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..context import Ctx
from ..daemon import BenchDaemon
from ..integrations_probe import RSS_BYTES, create, deliver_batches, idle_cpu, peak_rss
from ..processes import ReceiverProc, pid_of
from ..rows import Row, limit_row, ratio_row
from .lmdb import webhook_catch_up

SCENARIO = "many-integrations"


def many_integrations(ctx: Ctx) -> list[Row]:
    n = ctx.size(1_000, 50)
    return [*_idle_and_scrape(ctx, n), *_idle_jetstream(ctx, n), *_matching(ctx, n),
            *_rss(ctx, n), *_fanout(ctx)]


def _settings(n: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"limits": {"max_integrations": n + 10}, "server": {"max_body": "8MiB"},
            **(extra or {})}


def _daemon(ctx: Ctx, part: str, n: int, extra: dict[str, Any] | None = None) -> BenchDaemon:
    return ctx.daemon(SCENARIO, _settings(n, extra), workdir=ctx.workdir(f"{SCENARIO}-{part}"))


def _settle(ctx: Ctx) -> None:
    """Every sink started and waiting at the head (and, on JetStream, every lease taken)."""
    time.sleep(ctx.size(10.0, 1.0))


def _idle_and_scrape(ctx: Ctx, n: int) -> list[Row]:
    seconds = ctx.size(30.0, 1.0)
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = _daemon(ctx, "idle", n)
        try:
            ctx.log(f"  {n:,} idle integrations (LMDB): daemon CPU over {seconds:g}s, "
                    "then /metrics scrapes with /healthz polled meanwhile")
            create(daemon, n, receiver.url, matching=0)
            _settle(ctx)
            idle = idle_cpu(daemon, seconds)
            scrapes = ctx.run("scrape_while_polled", {"url": daemon.url,
                                                      "scrapes": ctx.size(7, 2)}, timeout=120)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    scrape_ms, healthz_ms = scrapes["scrape_ms"], sorted(scrapes["healthz_ms"])
    return [
        limit_row(SCENARIO, f"{n:,} integrations idle (LMDB): daemon CPU", "% of a core",
                  idle["core_pct"], 2.0,
                  f"{idle['cpu_s']} CPU s in {idle['seconds']} s; RSS {idle['rss_mib']} MiB"),
        limit_row(SCENARIO, f"/metrics scrape, {n:,} integrations (median)", "ms",
                  statistics.median(scrape_ms), 100.0,
                  f"{len(scrape_ms)} scrapes of {scrapes['bytes']:,} bytes: "
                  + ", ".join(f"{t:.0f}" for t in scrape_ms) + " ms"),
        limit_row(SCENARIO, "/healthz during a scrape (slowest)", "ms",
                  healthz_ms[-1] if healthz_ms else None, 20.0,
                  f"{len(healthz_ms)} answered during the scrapes; median "
                  f"{statistics.median(healthz_ms):.1f} ms" if healthz_ms else "none answered"),
    ]


def _idle_jetstream(ctx: Ctx, n: int) -> list[Row]:
    seconds = ctx.size(30.0, 1.0)
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = _daemon(ctx, "idle-jetstream", n, ctx.jetstream())
        try:
            ctx.log(f"  {n:,} idle integrations (JetStream): daemon and nats-server CPU "
                    f"over {seconds:g}s")
            create(daemon, n, receiver.url, matching=0)
            _settle(ctx)
            idle = idle_cpu(daemon, seconds, {"nats_server": pid_of(ctx.nats())})
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    return [limit_row(SCENARIO, f"{n:,} integrations idle (JetStream): daemon CPU",
                      "% of a core", idle["core_pct"], 5.0,
                      f"nats-server {idle['nats_server_core_pct']} % of a core beside it "
                      "(its share is the server's, reported, not counted); "
                      f"{idle['cpu_s']} daemon CPU s in {idle['seconds']} s")]


def _matching(ctx: Ctx, n: int) -> list[Row]:
    events = ctx.size(10_000, 1_000)
    runs: dict[str, dict[str, Any]] = {}
    for label, total in (("alone", 10), ("among", n)):
        receiver = ReceiverProc(ctx.children)
        try:
            daemon = _daemon(ctx, f"matching-{label}", total)
            try:
                ctx.log(f"  {events:,} events to 10 matching integrations "
                        + ("alone" if total == 10 else f"among {total:,}"))
                create(daemon, total, receiver.url, matching=10)
                _settle(ctx)
                runs[label] = deliver_batches(daemon, receiver, events, matching=10)
            finally:
                daemon.stop()
        finally:
            receiver.stop()

    def rate(run: dict[str, Any]) -> float | None:
        return run["delivered"] / run["seconds"] if run["seconds"] > 0 else None

    alone, among = runs["alone"], runs["among"]
    note = (f"{events:,} events of 400 B in NDJSON batches of 1,000; 10 alone: "
            f"{alone['delivered']:,} delivered in {alone['seconds']} s ({alone['cpu_s']} CPU s); "
            f"among {n:,}: {among['delivered']:,} in {among['seconds']} s "
            f"({among['cpu_s']} CPU s)")
    return [ratio_row(SCENARIO, f"10 matching among {n:,}: delivered events/s "
                      "(baseline: the 10 alone)", "events/s", rate(among), rate(alone), 0.8,
                      note=note)]


def _rss(ctx: Ctx, n: int) -> list[Row]:
    total = ctx.size(RSS_BYTES, 4 * 1024 * 1024)
    receiver = ReceiverProc(ctx.children)
    try:
        daemon = _daemon(ctx, "rss", n)
        try:
            ctx.log(f"  {total // (1024 * 1024)} MiB of 16 KiB events to {n:,} integrations, "
                    "one matching: peak RSS")
            create(daemon, n, receiver.url, matching=1)
            _settle(ctx)
            found = peak_rss(daemon, receiver, total, per_request=64)
        finally:
            daemon.stop()
    finally:
        receiver.stop()
    note = (f"{found['events']:,} events in requests of 64 (1 MiB), {found['delivered']:,} "
            f"delivered in {found['seconds']} s; idle before: RSS {found['idle_rss_mib']} MiB "
            f"(anonymous {found['idle_anon_mib']}); peak RSS incl. LMDB's file-backed pages "
            f"{found['peak_rss_mib']} MiB")
    return [limit_row(SCENARIO, f"peak anonymous RSS, {total // (1024 * 1024)} MiB to {n:,} "
                      "integrations", "MiB", found["peak_anon_mib"], 200.0, note)]


def _fanout(ctx: Ctx) -> list[Row]:
    integrations, per = 100, ctx.size(300, 10)
    return webhook_catch_up(ctx, SCENARIO, 8, integrations, per, 0.8,
                            figure="fan-out to 100 matching integrations: delivered events/s",
                            settings={"limits": {"max_integrations": integrations}})
