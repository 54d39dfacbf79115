"""Probe: what the number of integrations costs the daemon (idle CPU, shared reads, memory).

    .venv/bin/python -m bench.integrations_probe [--tree DIR] [--only idle,matching,rss]
                                                 [--integrations 1000] [--idle-seconds 30]
                                                 [--backend lmdb|jetstream]

Not a scenario of the suite (no baseline, no target): three figures measured from
outside, on the real daemon, as the cost model in docs/scaling.md quotes them.
`--tree DIR` runs the daemon from another source tree (e.g. an exported older
commit, `git archive REV | tar -x -C DIR`) with this checkout's venv, so the same
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


def _create(daemon: BenchDaemon, count: int, url: str, matching: int,
            offset: int = 0) -> None:
    """`count` webhook integrations, the first `matching` of them without a filter."""
    def one(k: int) -> None:
        body: dict[str, Any] = {"id": f"i{offset + k:05d}", "integration_type": "permanent",
                                "callback_parameters": {"callback_url": f"{url}/{k}"}}
        if k >= matching:
            body["filter_conditions"] = NO_MATCH
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


NATS: list[str] = []  # the nats-server's URL when --backend jetstream
SERVER: list[NatsServer] = []


def _daemon(children: Children, root: Path, name: str, tree: str | None,
            integrations: int) -> BenchDaemon:
    env = {"PYTHONPATH": tree} if tree else None
    settings: dict[str, Any] = {"limits": {"max_integrations": integrations + 10},
                                "server": {"max_body": "8MiB"}}
    if NATS:
        settings |= {"storage": {"backend": "jetstream"},
                     "jetstream": {"servers": NATS, "prefix": f"p{uuid.uuid4().hex[:10]}"}}
    return BenchDaemon(children, root / name, settings, env=env).start()


def idle(children: Children, root: Path, tree: str | None, n: int,
         seconds: float) -> dict[str, Any]:
    receiver = ReceiverProc(children)
    daemon = _daemon(children, root, "idle", tree, n)
    try:
        empty_rss = daemon.memory().get("VmRSS", 0.0)
        _create(daemon, n, receiver.url, matching=0)
        time.sleep(10)  # settle: every sink started
        full_rss = daemon.memory().get("VmRSS", 0.0)
        nats = SERVER[0].proc.pid if SERVER and SERVER[0].proc else None
        before, t0 = daemon.cpu(), time.monotonic()
        nats_before = cpu_seconds(nats) if nats else 0.0
        time.sleep(seconds)
        cpu, wall = daemon.cpu() - before, time.monotonic() - t0
        out = {"integrations": n, "seconds": round(wall, 1), "cpu_s": round(cpu, 2),
               "core_pct": round(100 * cpu / wall, 2), "rss_empty_mib": round(empty_rss, 1),
               "rss_mib": round(full_rss, 1)}
        if nats:
            out["nats_server_core_pct"] = round(100 * (cpu_seconds(nats) - nats_before) / wall, 2)
        return out
    finally:
        daemon.stop()
        receiver.stop()


def matching(children: Children, root: Path, tree: str | None, n: int) -> dict[str, Any]:
    events, batch = 10_000, 1_000
    factory = EventFactory(published_at_now())
    bodies = [factory.ndjson(i, batch) for i in range(0, events, batch)]
    out: dict[str, Any] = {}
    for label, total in (("alone", 10), ("among", n)):
        receiver = ReceiverProc(children)
        daemon = _daemon(children, root, f"matching-{label}", tree, total)
        try:
            _create(daemon, total, receiver.url, matching=10)
            time.sleep(5 if total > 10 else 1)
            before, t0 = daemon.cpu(), time.monotonic()
            for body in bodies:
                daemon.publish_ndjson(body)
            stats = receiver.wait_count(10 * events, 600)
            cpu = daemon.cpu() - before
            last = stats["last_ns"] / 1e9 if stats["last_ns"] else time.monotonic()
            out[label] = {"integrations": total, "delivered": stats["count"],
                          "seconds": round(last - t0, 2), "cpu_s": round(cpu, 2)}
        finally:
            daemon.stop()
            receiver.stop()
    out["ratio_alone_over_among"] = round(out["alone"]["seconds"] / out["among"]["seconds"], 2)
    return out


def rss(children: Children, root: Path, tree: str | None, n: int,
        per_request: int) -> dict[str, Any]:
    receiver = ReceiverProc(children)
    daemon = _daemon(children, root, "rss", tree, n)
    count = RSS_BYTES // BIG_EVENT
    note = "x" * (BIG_EVENT - 64)
    line = orjson.dumps({"name": "order.created", "payload": {"note": note}}) + b"\n"
    try:
        _create(daemon, n, receiver.url, matching=1)
        time.sleep(5)
        idle_mem = daemon.memory()
        peak_anon = idle_mem.get("RssAnon", 0.0)
        t0 = time.monotonic()
        count -= count % per_request  # whole requests only
        for _ in range(count // per_request):
            daemon.publish_ndjson(line * per_request)
            peak_anon = max(peak_anon, daemon.memory().get("RssAnon", 0.0))
        for _ in ticks(300, 0.1):
            peak_anon = max(peak_anon, daemon.memory().get("RssAnon", 0.0))
            if receiver.stats()["count"] >= count:
                break
        mem = daemon.memory()
        return {"integrations": n, "events": count, "per_request": per_request,
                "delivered": receiver.stats()["count"],
                "seconds": round(time.monotonic() - t0, 1),
                "idle_rss_mib": round(idle_mem.get("VmRSS", 0.0), 1),
                "peak_rss_mib": round(mem.get("VmHWM", 0.0), 1),
                "peak_anon_mib": round(peak_anon, 1)}
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
    try:
        with tempfile.TemporaryDirectory(prefix="es-probe-") as tmp:
            root = Path(tmp)
            if args.backend == "jetstream":
                SERVER.append(NatsServer(root / "nats").start())
                NATS.append(SERVER[0].url)
                results["backend"] = "jetstream"
            for name in args.only.split(","):
                if name == "idle":
                    results[name] = idle(children, root, args.tree, args.integrations,
                                         args.idle_seconds)
                elif name == "matching":
                    results[name] = matching(children, root, args.tree, args.integrations)
                elif name == "rss":
                    results[name] = rss(children, root, args.tree, args.integrations,
                                        args.per_request)
                print(json.dumps({name: results[name]}), flush=True)
    finally:
        children.end_all()
        for server in SERVER:
            server.stop()
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
