"""The in-flight request-bytes budget (`server.max_inflight_bytes`): bounded request memory.

Decisions:
- Every byte of a request body (publish and configuration API alike) counts
  against one process-wide budget from the moment it is read until the
  request is answered (the encoded events live that long too). A request
  whose declared length would exceed the
  budget gets 503 with `Retry-After` before a byte of its body is read; a
  chunked (or compressed) body reserves as it is read and gets the same
  503 at the point it would exceed. The first request in flight is always
  admitted (the budget is at least `server.max_body`, checked in config),
  so a lone large publish can never be starved.
- The body is read here, not with `request.read()`, so the budget and
  `server.max_body` apply to the *decoded* bytes: a small gzip body that
  inflates past `max_body` gets 413 without ever being held whole.
- 503, not 429: the limit is the daemon's, not the client's; `Retry-After: 1`
  tells well-behaved clients (the `publish` command included) to come back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import hdrs, web

from .errors import ApiError

RETRY_AFTER_S = 1


class BodyBudget:
    def __init__(self, limit: int, max_body: int) -> None:
        self.limit = limit
        self.max_body = max_body
        self.used = 0
        self.refused = 0  # requests answered 503 for want of budget (for status and tests)

    def _take(self, amount: int) -> None:
        if self.used and self.used + amount > self.limit:
            self.refused += 1
            raise ApiError(503, "overloaded",
                           "too many request bytes in flight (server.max_inflight_bytes); "
                           f"retry in {RETRY_AFTER_S}s",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.used += amount

    def _too_large(self) -> ApiError:
        return ApiError(413, "payload_too_large",
                        f"request body larger than the limit of {self.max_body} bytes")

    @asynccontextmanager
    async def body(self, request: web.Request) -> AsyncIterator[bytes]:
        """The request's decoded body, counted against the budget while the block runs."""
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            raise self._too_large()
        held = 0
        try:
            if declared is not None:
                self._take(declared)
                held = declared
            if declared is not None and hdrs.CONTENT_ENCODING not in request.headers:
                body = await request.read()  # exactly `declared` bytes
            else:
                parts: list[bytes] = []
                size = 0
                async for data in request.content.iter_any():
                    size += len(data)
                    if size > self.max_body:
                        raise self._too_large()
                    if size > held:
                        self._take(size - held)
                        held = size
                    parts.append(data)
                body = b"".join(parts)
            yield body
        finally:
            self.used -= held

