"""The ingest baseline server: bare aiohttp answering `POST /events` without storing.

`python -m bench.bareserver` prints `{"port": N}` once it listens on 127.0.0.1.
It reads the body, parses it with orjson (NDJSON or JSON, like the daemon),
and answers the daemon's response shape `{"accepted", "first_seq",
"last_seq"}` — everything a publisher sees, minus validation and the durable
write. The load generator cannot tell it from the daemon.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from .receiver import serve

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})


def build_app() -> web.Application:
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
        return web.json_response({"accepted": len(events), "first_seq": first,
                                  "last_seq": state["seq"]})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/events", publish)
    return app


def main() -> None:
    asyncio.run(serve(build_app()))


if __name__ == "__main__":
    main()
