"""A real local webhook receiver (aiohttp on 127.0.0.1, port 0) whose answers tests script."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when the request arrived
    raw: bytes = b""  # the body exactly as sent (signatures cover these bytes)

    @property
    def key(self) -> str:
        return self.headers.get("Idempotency-Key", "")


Responder = Callable[[Received, int], Awaitable[web.StreamResponse] | web.StreamResponse]


async def ok(_: Received, __: int) -> web.Response:
    return web.Response(status=200)


class Receiver:
    """Records every request; `responder(received, attempt_no)` decides the answer.
    `max_concurrent` is the most requests it was handling at once."""

    def __init__(self, responder: Responder = ok) -> None:
        self.responder = responder
        self.requests: list[Received] = []
        self.delivered: list[Received] = []  # answered 2xx
        self.attempts: dict[str, int] = {}
        self.concurrent = 0
        self.max_concurrent = 0
        self._server: TestServer | None = None
        self._url = ""
        self._changed = anyio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            arrived = time.monotonic()
            raw = await request.read()
            received = Received(orjson.loads(raw), dict(request.headers), arrived, raw)
            self.requests.append(received)
            attempt = self.attempts[received.key] = self.attempts.get(received.key, 0) + 1
            response = self.responder(received, attempt)
            if not isinstance(response, web.StreamResponse):
                response = await response
        finally:
            self.concurrent -= 1
        if 200 <= response.status < 300:
            self.delivered.append(received)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        return response

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()
        self._url = str(self._server.make_url("/events"))
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    @property
    def url(self) -> str:
        return self._url

    @property
    def delivered_keys(self) -> set[str]:
        return {r.key for r in self.delivered}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until predicate() holds (checked after every request), or fail after timeout."""
        with anyio.fail_after(timeout):
            while not predicate():
                with anyio.move_on_after(0.2):
                    await self._changed.wait()
