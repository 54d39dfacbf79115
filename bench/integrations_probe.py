"""What the number of integrations costs the daemon: the measurements, and a probe to run them.

    .venv/bin/python -m bench.integrations_probe [--tree DIR] [--only idle,matching,rss]
                                                 [--integrations 1000] [--idle-seconds 30]
                                                 [--backend lmdb|jetstream]

The measurements (`create`, `idle_cpu`, `deliver_batches`, `peak_rss`, `scrape_while_polled`
in `bench.worker`) take a started daemon and receiver, so the `many-integrations`
scenario (bench/scenarios/many.py) runs them on the suite's daemons, against its
targets. The probe runs them alone, without baselines or targets, as docs/scaling.md
quotes them; `--tree DIR` runs the daemon from another source tree (e.g. an exported
older commit, `git archive REV | tar -x -C DIR`) with this checkout's venv, so the same
probe measures before and after a change.

- `idle`: N webhook integrations whose filter matches nothing, no events; the
  daemon's CPU (utime + stime from /proc) over `--idle-seconds`, after a settle.
- `matching`: 10,000 events of 400 B to 10 matching integrations, alone and
  among N (the others filtered out): seconds from the first publish to the last
  delivery at the receiver, and the daemon's CPU seconds in that window.
- `rss`: N integrations, one matching; 62 MiB of 16 KiB events published in
  requests of `--per-request` (64: 1 MiB); the daemon's peak RSS (VmHWM) and peak anonymous RSS
  (sampled every 0.1 s) until the matching one has them all.

The machine may be busy with other work: figures are wall-clock and CPU of one
run each, with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.helpers.nats_server import NatsServer

from .common import (
    API_BASE,
    TOKEN,
    Children,
    EventFactory,
    cpu_seconds,
    http,
    published_at_now,
    ticks,
)
from .daemon import BenchDaemon
from .processes import ReceiverProc

BIG_EVENT = 16 * 1024
RSS_BYTES = 62 * 1024 * 1024
NO_MATCH = {"event_filter": ["return.processed"]}


# ------------------------------------------------------------------ measurements

def create(daemon: BenchDaemon, count: int, url: str, matching: int,
           offset: int = 0, starts_at: str | None = None) -> None:
    """`count` webhook integrations (ids i00000...), the first `matching` of them without a
    filter, the others with one that matches nothing; 8 requests at a time."""
    def one(k: int) -> None:
        body: dict[str, Any] = {"id": f"i{offset + k:05d}", "integration_type": "permanent",
                                "callback_parameters": {"callback_url": f"{url}/{k}"}}
        if k >= matching:
            body["filter_conditions"] = NO_MATCH
        if starts_at is not None:
            body["starts_at"] = starts_at
        for _ in ticks(120, 0.05):  # JetStream answers 503 to concurrent creates it refuses
            status, payload = http("POST", f"{daemon.url}{API_BASE}", body, token=TOKEN,
                                   timeout=120)
            if status == 201 or status == 200:
                return
            if status != 503:
                raise RuntimeError(f"creating {body['id']} answered {status}: {payload}")
        raise RuntimeError(f"creating {body['id']}: still refused")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def idle_cpu(daemon: BenchDaemon, seconds: float,
             others: dict[str, int] | None = None) -> dict[str, Any]:
    """The daemon's CPU over `seconds` of doing nothing, as % of a core (and of `others`,
    e.g. nats-server)."""
    others = others or {}
    before, t0 = daemon.cpu(), time.monotonic()
    others_before = {name: cpu_seconds(pid) for name, pid in others.items()}
    time.sleep(seconds)
    cpu, wall = daemon.cpu() - before, time.monotonic() - t0
    out = {"seconds": round(wall, 1), "cpu_s": round(cpu, 3),
           "core_pct": round(100 * cpu / wall, 2), "rss_mib": round(
               daemon.memory().get("VmRSS", 0.0), 1)}
    for name, pid in others.items():
        out[f"{name}_core_pct"] = round(100 * (cpu_seconds(pid) - others_before[name]) / wall, 2)
    return out


def deliver_batches(daemon: BenchDaemon, receiver: ReceiverProc, events: int, matching: int,
                    batch: int = 1_000) -> dict[str, Any]:
    """`events` events of 400 B published in NDJSON batches of `batch`; seconds from the
    first publish to the last of the `matching` integrations' deliveries, and the daemon's
    CPU seconds meanwhile."""
    factory = EventFactory(published_at_now())
    bodies = [factory.ndjson(i, min(batch, events - i)) for i in range(0, events, batch)]
    receiver.reset()
    before, t0 = daemon.cpu(), time.monotonic()
    for body in bodies:
        daemon.publish_ndjson(body)
    stats = receiver.wait_count(matching * events, 600)
    cpu = daemon.cpu() - before
    last = stats["last_ns"] / 1e9 if stats["last_ns"] else time.monotonic()
    return {"delivered": stats["count"], "expected": matching * events,
            "seconds": round(last - t0, 2), "cpu_s": round(cpu, 2)}


def peak_rss(daemon: BenchDaemon, receiver: ReceiverProc, total_bytes: int,
             per_request: int) -> dict[str, Any]:
    """`total_bytes` of 16 KiB events published in requests of `per_request` events while
    one integration matches them: the daemon's peak RSS (VmHWM) and peak anonymous RSS
    (sampled after each request and every 0.1 s) until that one has them all."""
    count = total_bytes // BIG_EVENT
    count -= count % per_request  # whole requests only
    note = "x" * (BIG_EVENT - 64)
    line = orjson.dumps({"name": "order.created", "payload": {"note": note}}) + b"\n"
    receiver.reset()
    idle = daemon.memory()
    peak_anon = idle.get("RssAnon", 0.0)
    t0 = time.monotonic()
    for _ in range(count // per_request):
        daemon.publish_ndjson(line * per_request)
        peak_anon = max(peak_anon, daemon.memory().get("RssAnon", 0.0))
    for _ in ticks(300, 0.1):
        peak_anon = max(peak_anon, daemon.memory().get("RssAnon", 0.0))
        if receiver.stats()["count"] >= count:
            break
    mem = daemon.memory()
    return {"events": count, "per_request": per_request,
            "delivered": receiver.stats()["count"],
            "seconds": round(time.monotonic() - t0, 1),
            "idle_rss_mib": round(idle.get("VmRSS", 0.0), 1),
            "idle_anon_mib": round(idle.get("RssAnon", 0.0), 1),
            "peak_rss_mib": round(mem.get("VmHWM", 0.0), 1),
            "peak_anon_mib": round(peak_anon, 1)}


# ------------------------------------------------------------------------ probe

DaemonMaker = Callable[[str, int], BenchDaemon]


def _maker(children: Children, root: Path, tree: str | None,
           nats: NatsServer | None) -> DaemonMaker:
    def make(name: str, integrations: int) -> BenchDaemon:
        env = {"PYTHONPATH": tree} if tree else None
        settings: dict[str, Any] = {"limits": {"max_integrations": integrations + 10},
                                    "server": {"max_body": "8MiB"}}
        if nats is not None:
            settings |= {"storage": {"backend": "jetstream"},
                         "jetstream": {"servers": [nats.url],
                                       "prefix": f"p{uuid.uuid4().hex[:10]}"}}
        return BenchDaemon(children, root / name, settings, env=env).start()
    return make


def probe_idle(children: Children, make: DaemonMaker, n: int, seconds: float,
               nats: NatsServer | None) -> dict[str, Any]:
    receiver = ReceiverProc(children)
    daemon = make("idle", n)
    try:
        empty_rss = daemon.memory().get("VmRSS", 0.0)
        create(daemon, n, receiver.url, matching=0)
        time.sleep(10)  # settle: every sink started
        others = {"nats_server": nats.proc.pid} if nats is not None and nats.proc else {}
        return {"integrations": n, "rss_empty_mib": round(empty_rss, 1),
                **idle_cpu(daemon, seconds, others)}
    finally:
        daemon.stop()
        receiver.stop()


def probe_matching(children: Children, make: DaemonMaker, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, total in (("alone", 10), ("among", n)):
        receiver = ReceiverProc(children)
        daemon = make(f"matching-{label}", total)
        try:
            create(daemon, total, receiver.url, matching=10)
            time.sleep(5 if total > 10 else 1)
            out[label] = {"integrations": total,
                          **deliver_batches(daemon, receiver, 10_000, matching=10)}
        finally:
            daemon.stop()
            receiver.stop()
    out["ratio_alone_over_among"] = round(out["alone"]["seconds"] / out["among"]["seconds"], 2)
    return out


def probe_rss(children: Children, make: DaemonMaker, n: int,
              per_request: int) -> dict[str, Any]:
    receiver = ReceiverProc(children)
    daemon = make("rss", n)
    try:
        create(daemon, n, receiver.url, matching=1)
        time.sleep(5)
        return {"integrations": n, **peak_rss(daemon, receiver, RSS_BYTES, per_request)}
    finally:
        daemon.stop()
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.integrations_probe")
    parser.add_argument("--tree", default=None)
    parser.add_argument("--only", default="idle,matching,rss")
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--backend", choices=("lmdb", "jetstream"), default="lmdb")
    parser.add_argument("--per-request", type=int, default=64,
                        help="16 KiB events per publish request in `rss` (1 MiB)")
    args = parser.parse_args()
    children = Children()
    results: dict[str, Any] = {"tree": args.tree or "this checkout",
                               "load_before": os.getloadavg()}
    nats: NatsServer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="es-probe-") as tmp:
            root = Path(tmp)
            if args.backend == "jetstream":
                nats = NatsServer(root / "nats").start()
                results["backend"] = "jetstream"
            make = _maker(children, root, args.tree, nats)
            for name in args.only.split(","):
                if name == "idle":
                    results[name] = probe_idle(children, make, args.integrations,
                                               args.idle_seconds, nats)
                elif name == "matching":
                    results[name] = probe_matching(children, make, args.integrations)
                elif name == "rss":
                    results[name] = probe_rss(children, make, args.integrations,
                                              args.per_request)
                print(json.dumps({name: results[name]}), flush=True)
    finally:
        children.end_all()
        if nats is not None:
            nats.stop()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
