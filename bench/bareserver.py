"""The bare-library servers the ingest and capacity baselines measure against.

`python -m bench.bareserver` prints `{"port": N}` once it listens on 127.0.0.1.
It reads the body, parses it with orjson (NDJSON or JSON, like the daemon),
and answers the daemon's response shape `{"accepted", "first_seq",
"last_seq"}` — everything a publisher sees, minus validation and the durable
write. The load generator cannot tell it from the daemon.

`python -m bench.bareserver --relay URL [--in-flight N]` is the capacity
baseline's "bare server + bare client": it answers the same way, then POSTs
each event's delivery body to URL with a bare aiohttp client, `N` requests at
a time (the daemon's `max_in_flight`), from a bounded queue — the work the
daemon does end to end, minus validation, storage, cursors and retries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import aiohttp
import orjson
from aiohttp import web

from .common import run_on_daemon_loop

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})


def build_app(relay: asyncio.Queue[bytes] | None = None) -> web.Application:
    state = {"seq": 0}

    async def publish(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type in NDJSON_TYPES:
            events = [orjson.loads(line) for line in body.split(b"\n") if line.strip()]
        else:
            parsed = orjson.loads(body)
            events = parsed if isinstance(parsed, list) else [parsed]
        first = state["seq"] + 1
        state["seq"] += len(events)
        if relay is not None:
            for event in events:
                await relay.put(orjson.dumps({
                    "tenant": event.get("tenant", "default"), "name": event["name"],
                    "published_at": event.get("published_at", ""), "payload": event["payload"]}))
        return web.json_response({"accepted": len(events), "first_seq": first,
                                  "last_seq": state["seq"]})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/events", publish)
    return app


async def serve(app: web.Application) -> None:
    """Serve `app` on a free loopback port, say which, and stop on SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    announce(next(a[1] for a in runner.addresses if isinstance(a, tuple)))
    await until_signalled()
    await runner.cleanup()


def announce(port: int) -> None:
    """The line the orchestrator waits for (`Helper.line`): the server is listening."""
    print(json.dumps({"port": port}), flush=True)


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def forward(queue: asyncio.Queue[bytes], url: str, in_flight: int) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while True:
                body = await queue.get()
                async with session.post(url, data=body, headers=headers, timeout=timeout,
                                        allow_redirects=False) as response:
                    await response.content.read(1024)

        await asyncio.gather(*(worker() for _ in range(in_flight)))


async def relay_main(url: str, in_flight: int) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100_000)
    task = asyncio.create_task(forward(queue, url, in_flight))
    try:
        await serve(build_app(queue))
    finally:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", help="forward every event to this URL")
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    if args.relay:
        run_on_daemon_loop(relay_main(args.relay, args.in_flight))
    else:
        run_on_daemon_loop(serve(build_app()))


if __name__ == "__main__":
    main()
