"""The webhook receiver of the benchmarks: the tests' receiver (tests/helpers/receiver.py)
keeping nothing and counting what arrives, in a process of its own.

`python -m bench.receiver` prints `{"port": N}` once it listens on 127.0.0.1
(an ephemeral port). The daemon and the bare baseline client both post to a
receiver like this one, so both sides of a webhook ratio meet the same kind of
process. It runs on the daemon's event loop (uvloop: `common.run_on_daemon_loop`).

- `POST /<anything>` — answers 200 with an empty body; counts the request
  (in total and per path) and its arrival time (monotonic ns). When the body's
  `payload` carries `t` (a publisher's `time.monotonic_ns()`), the difference
  is kept as a publish-to-receipt latency (at most `MAX_LATENCIES`). A
  replayed delivery (header `Eventstreamd-Replay`) is counted apart as well
  (`replayed`: count, first and last arrival) and gives no latency sample.
- `GET /_stats?skip=N` — the counters, this process's CPU seconds, and the
  latency percentiles (the first N samples left out as warm-up).
- `POST /_reset` — zero everything.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tests.helpers.receiver import Received, Receiver

from .bareserver import announce, until_signalled
from .common import run_on_daemon_loop

MAX_LATENCIES = 2_000_000
REPLAY_HEADER = "Eventstreamd-Replay"


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
        self.replayed = 0
        self.replayed_first_ns: int | None = None
        self.replayed_last_ns: int | None = None


def _percentiles(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1e6

    return {"n": len(ordered), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "p999_ms": at(0.999), "max_ms": ordered[-1] / 1e6}


class CountingReceiver(Receiver):
    """Answers 200 and keeps only counters (millions of requests arrive in a run)."""

    def __init__(self) -> None:
        super().__init__(keep=False)
        self.counters = Counters()

    def arrived(self, received: Received) -> int:
        now = time.monotonic_ns()
        counters = self.counters
        counters.count += 1
        counters.bytes += len(received.raw)
        if counters.first_ns is None:
            counters.first_ns = now
        counters.last_ns = now
        counters.paths[received.path] = counters.paths.get(received.path, 0) + 1
        if REPLAY_HEADER in received.headers:
            counters.replayed += 1
            if counters.replayed_first_ns is None:
                counters.replayed_first_ns = now
            counters.replayed_last_ns = now
            return 1
        try:
            sent = received.body["payload"].get("t")
        except (ValueError, KeyError, TypeError, AttributeError):
            counters.bad_bodies += 1
            sent = None
        if isinstance(sent, int) and len(counters.latencies_ns) < MAX_LATENCIES:
            counters.latencies_ns.append(now - sent)
        return 1

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_stats", self._stats)
        router.add_post("/_reset", self._reset)

    async def _stats(self, request: web.Request) -> web.Response:
        skip = int(request.query.get("skip", "0"))
        counters = self.counters
        return web.json_response({
            "count": counters.count, "bytes": counters.bytes,
            "first_ns": counters.first_ns, "last_ns": counters.last_ns,
            "paths": counters.paths, "bad_bodies": counters.bad_bodies,
            "replayed": counters.replayed, "replayed_first_ns": counters.replayed_first_ns,
            "replayed_last_ns": counters.replayed_last_ns,
            "cpu_s": time.process_time(), "latency": _percentiles(counters.latencies_ns[skip:]),
        })

    async def _reset(self, request: web.Request) -> web.Response:
        self.counters.reset()
        return web.json_response({"ok": True})


async def serve() -> None:
    receiver = await CountingReceiver().start()
    announce(receiver.port)
    await until_signalled()
    await receiver.close()


def main() -> None:
    run_on_daemon_loop(serve())


if __name__ == "__main__":
    main()
