"""The aiohttp runner, with the one error shape even for requests that never reach the app.

A request the HTTP parser refuses (a header over `server.max_header`, a
malformed request line, a broken chunked body) is answered by aiohttp's
protocol layer, below every middleware, as plain text. The contract says every
error response is JSON with `X-Request-Id`, so the request handler's
`handle_error` is replaced here. aiohttp offers no public hook for it; the
subclassing below touches only `Server.__call__` and
`RequestHandler.handle_error`, both stable across aiohttp 3.x, and a test
locks the behaviour.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from .errors import CODES_BY_STATUS, error_response

log = logging.getLogger("eventstreamd.http")


class _JsonErrorRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error body")
        request_id = uuid.uuid4().hex
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(level, "request refused by the HTTP layer: %s %s", status, exc or message,
                exc_info=exc if status >= 500 else None)
        text = "internal server error" if status >= 500 else (
            str(getattr(exc, "message", None) or message or exc or "bad request"))
        response = error_response(status, CODES_BY_STATUS.get(status, "http_error"), text,
                                  request_id)
        response.force_close()
        return response


class _JsonErrorServer(Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class DaemonRunner(web.AppRunner):
    """An AppRunner whose low-level errors use the JSON error body."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
