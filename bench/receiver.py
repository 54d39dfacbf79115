"""The webhook receiver: one aiohttp server process that counts what arrives.

`python -m bench.receiver` prints `{"port": N}` once it listens on 127.0.0.1
(an ephemeral port). The daemon and the bare baseline client both post to a
receiver like this one, so both sides of a webhook ratio meet the same kind of
process.

- `POST /<anything>` — answers 200 with an empty body; counts the request
  (in total and per path) and its arrival time (monotonic ns). When the body's
  `payload` carries `t` (a publisher's `time.monotonic_ns()`), the difference
  is kept as a publish-to-receipt latency (at most `MAX_LATENCIES`).
- `GET /_stats?skip=N` — the counters, this process's CPU seconds, and the
  latency percentiles (the first N samples left out as warm-up).
- `POST /_reset` — zero everything.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import orjson
from aiohttp import web

MAX_LATENCIES = 2_000_000


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.bytes = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.paths: dict[str, int] = {}
        self.latencies_ns: list[int] = []
        self.bad_bodies = 0


def _percentiles(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1e6

    return {"n": len(ordered), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "p999_ms": at(0.999), "max_ms": ordered[-1] / 1e6}


def build_app() -> web.Application:
    counters = Counters()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic_ns()
        counters.count += 1
        counters.bytes += len(body)
        if counters.first_ns is None:
            counters.first_ns = now
        counters.last_ns = now
        counters.paths[request.path] = counters.paths.get(request.path, 0) + 1
        try:
            sent = orjson.loads(body)["payload"].get("t")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            counters.bad_bodies += 1
            sent = None
        if isinstance(sent, int) and len(counters.latencies_ns) < MAX_LATENCIES:
            counters.latencies_ns.append(now - sent)
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        skip = int(request.query.get("skip", "0"))
        return web.json_response({
            "count": counters.count, "bytes": counters.bytes,
            "first_ns": counters.first_ns, "last_ns": counters.last_ns,
            "paths": counters.paths, "bad_bodies": counters.bad_bodies,
            "cpu_s": time.process_time(), "latency": _percentiles(counters.latencies_ns[skip:]),
        })

    async def reset(request: web.Request) -> web.Response:
        counters.reset()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", receive)
    return app


async def serve(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    asyncio.run(serve(build_app()))


if __name__ == "__main__":
    main()
