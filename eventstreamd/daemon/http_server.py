"""The daemon's HTTP server: aiohttp's, plus what overload must not break.

aiohttp's runner, with five additions that all live at the connection level,
below every middleware, where aiohttp has no public hook:

1. One error shape even for requests that never reach the app. A request the
   HTTP parser refuses (a header over `server.max_header`, a malformed request
   line, a broken chunked body) is answered by the protocol layer as plain
   text; `handle_error` here answers with the JSON error body and
   `X-Request-Id` instead.
2. A cap on concurrent connections: `server.max_connections`, lowered to fit
   the open-file limit (see `connection_limits`). A connection over the cap
   gets a fixed `503` (the JSON error body, `Retry-After: 1`, `Connection:
   close`) written straight to the socket, and is closed at once: it never gets
   a parser or a task, and holds its descriptor for microseconds. The response
   goes out before the request is read, so a client still sending may see a
   reset instead; "cheaply possible" was the goal, lingering would hold
   descriptors under a flood.
3. A header deadline (`server.header_timeout`): a request's headers must be
   complete within it, counted from connect for the first request and from
   the first byte of each later one (Go's `ReadHeaderTimeout`); otherwise the
   connection is closed, without an answer (as Go and nginx do).
4. A body deadline (`server.body_timeout`), counted from when the request is
   handed to the app: a body still incomplete then makes every read of it
   raise `BodyTimeout`, a 408 in the JSON shape through the error middleware.
   It is set on the body stream rather than at the read call sites so it
   covers every reader (`request.read()`, `request.content.iter_any()`).
   `BodyTimeout` is also a `TimeoutError`, which aiohttp's lingering read
   after the response treats as "give up": the connection is closed right
   after the 408 instead of draining the slow body for `lingering_time`.
5. A client that goes away (mid-body, or before its answer) is one INFO line
   from the error middleware and no traceback: `handle_error` turns the
   `ConnectionError` back into aiohttp's own "premature disconnection" path.

What aiohttp already covers and is used as it is: `keepalive_timeout` (set
to `server.idle_timeout`) closes a keep-alive connection that has waited that
long after its last response for a complete request (3.14 also arms it at
connect; the header deadline covers that on 3.12 and 3.13). `lingering_time`
(10 s) bounds how long the rest of an unread body is drained after a
response. Not covered: a request pipelined behind another whose headers
stall gets no header deadline of its own (no byte starts it); the idle
timeout still closes it.

Private aiohttp names relied on (pinned `aiohttp>=3.12,<3.15` in pyproject;
read in the 3.12.0, 3.13.0 and 3.14 sources; `tests/test_overload.py` and
`tests/test_security.py::test_oversized_headers_get_the_json_error` lock the
behaviour):
- `web.AppRunner._make_server()`: builds the app's `Server`; `DaemonServer` is
  built from that one's public attributes plus its `_loop` and `_kwargs`.
- `Server.__call__` is the protocol factory `loop.create_server` gets (via
  `BaseSite`); the override returns our handler. aiohttp's own falls back to
  default keyword arguments on `TypeError`, which would silently drop
  `keepalive_timeout` and the header limits; ours has no fallback, and
  `DaemonRunner` builds one handler at set-up so such an error fails start-up.
- `RequestHandler._waiter`: the future `start()` awaits while no complete
  request is queued. "Still waiting for a request" is what aiohttp's own
  keep-alive check (`_process_keepalive`) tests, and what the header deadline
  tests too.
- `RequestHandler.handle_error(request, status, exc, message)`: not
  underscored but undocumented; raising `ConnectionError` from it is aiohttp's
  own way to drop a connection whose response cannot be sent.
Public but low-level: `Server.request_factory` (wrapped to start body
deadlines), `StreamReader.set_exception`/`on_eof`/`is_eof`/`exception`,
`RequestHandler.force_close()`, and the asyncio `Protocol` callbacks.

The event loop's accept loop under EMFILE (measured, not assumed): uvloop
(what the daemon runs on) survives and does not spin: libuv closes a reserve
descriptor, accepts and drops the waiting connections, and retries; uvloop
ignores the error. Plain asyncio (used only without uvloop) survives too, but
CPython 3.11's `_accept_connection` keeps looping after EMFILE, logging a
traceback and scheduling a retry per backlog slot: a log flood and a busy
loop for as long as descriptors stay exhausted. The connection cap keeps HTTP
connections from exhausting descriptors in the first place.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from ..config import ServerConfig
from ..logs import Throttle, kv
from .errors import CODES_BY_STATUS, ApiError, error_response, new_request_id

log = logging.getLogger("eventstreamd.http")

# Descriptors kept free of HTTP connections for everything else the daemon opens:
# LMDB, the lock file, listeners, control clients (32), webhook connections
# (integrations x max_in_flight), S3 spool files and uploads.
FD_RESERVE_MIN = 64
FD_RESERVE_SHARE = 4  # ... or a quarter of the limit, whichever is more
RETRY_AFTER = 1  # seconds, in the 503 of a refused connection


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does; return the
    soft limit now in effect.

    The soft limit is often 1024 for historical reasons (select()'s FD_SETSIZE);
    the daemon uses epoll, and the hard limit is what the administrator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open() or soft  # the kernel refuses "unlimited" for NOFILE
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit",
                        extra=kv(soft=soft, hard=hard, error=str(exc)))
    return soft


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def connection_cap(max_connections: int, open_files: int) -> int:
    """The most HTTP connections to hold: the configured cap, within the open-file limit
    less a reserve for everything else (at least 1)."""
    reserve = max(FD_RESERVE_MIN, open_files // FD_RESERVE_SHARE)
    return max(1, min(max_connections, open_files - reserve))


def connection_limits(server: ServerConfig) -> ConnectionLimits:
    """The limits in effect, after raising the open-file limit; logged once at start-up."""
    open_files = raise_open_file_limit()
    cap = connection_cap(server.max_connections, open_files)
    fields = kv(max_connections=cap, configured=server.max_connections, open_files=open_files,
                header_timeout=server.header_timeout, body_timeout=server.body_timeout,
                idle_timeout=server.idle_timeout)
    if cap < server.max_connections:
        log.warning("HTTP connection cap lowered to fit the open-file limit (raise the hard "
                    "limit, e.g. LimitNOFILE= or ulimit -Hn, to allow more)", extra=fields)
    else:
        log.info("HTTP connection cap", extra=fields)
    return ConnectionLimits(cap, server.header_timeout, server.body_timeout, server.idle_timeout)


class BodyTimeout(ApiError, TimeoutError):
    """The request body did not arrive within `server.body_timeout`: 408 in the JSON shape.

    A `TimeoutError` too: aiohttp's lingering read after the response gives up on it
    quietly and closes the connection.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(408, "request_timeout",
                         f"the request body did not arrive within {timeout:g}s",
                         headers={"Connection": "close"})


def _refusal(max_connections: int) -> bytes:
    request_id = new_request_id()
    body = orjson.dumps({
        "error_code": "unavailable",
        "message": f"too many connections (at most {max_connections}); retry in {RETRY_AFTER}s",
        "request_id": request_id,
    })
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        f"Retry-After: {RETRY_AFTER}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _DaemonRequestHandler(RequestHandler):
    __slots__ = ("_admitted", "_header_deadline", "_owner")

    def __init__(self, owner: DaemonServer, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._owner = owner
        self._admitted = False
        self._header_deadline: asyncio.TimerHandle | None = None

    # -- the connection cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        if owner.open_connections >= owner.limits.max_connections:
            owner.refuse(transport)  # no parser, no task: this protocol stays inert
            return
        self._admitted = True
        owner.open_connections += 1
        super().connection_made(transport)
        self._arm_header_deadline()  # the first request's headers, counted from connect

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._owner.open_connections -= 1
        self._cancel_header_deadline()
        super().connection_lost(exc)

    # -- the header deadline

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if data and self._header_deadline is None and self._waiting_for_request():
            self._arm_header_deadline()  # the first byte of a later request
        super().data_received(data)
        if self._header_deadline is not None and not self._waiting_for_request():
            self._cancel_header_deadline()  # the headers are complete

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self._loop.call_later(
            self._owner.limits.header_timeout, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self._waiting_for_request():
            self._owner.note_header_timeout()
            self.force_close()

    # -- errors below the app

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError) and request.transport is None:
            # The client went away; the error middleware logged it. Raising
            # ConnectionError makes aiohttp drop the connection without a word.
            raise ConnectionError("the client went away") from exc
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error body")
        request_id = new_request_id()
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(level, "request refused by the HTTP layer: %s %s", status, exc or message,
                exc_info=exc if status >= 500 else None)
        text = "internal server error" if status >= 500 else (
            str(getattr(exc, "message", None) or message or exc or "bad request"))
        response = error_response(status, CODES_BY_STATUS.get(status, "http_error"), text,
                                  request_id)
        response.force_close()
        return response


_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter,
     "asyncio.Task[None]"],
    BaseRequest,
]


class DaemonServer(Server):
    """aiohttp's low-level server with the limits above; one per daemon."""

    def __init__(self, handler: Any, *, request_factory: _RequestFactory,
                 limits: ConnectionLimits, **kwargs: Any) -> None:
        self.limits = limits
        self.open_connections = 0
        self.refused = 0  # connections refused over the cap, since start
        self.header_timeouts = 0  # connections closed for slow or missing headers
        self._refusals = Throttle()
        self._header_log = Throttle()
        inner = request_factory

        def with_body_deadline(message: RawRequestMessage, payload: StreamReader,
                               protocol: RequestHandler, writer: AbstractStreamWriter,
                               task: asyncio.Task[None]) -> BaseRequest:
            request = inner(message, payload, protocol, writer, task)
            if not payload.is_eof():  # a body is still to come
                self._start_body_deadline(payload)
            return request

        super().__init__(handler, request_factory=with_body_deadline, **kwargs)

    def __call__(self) -> RequestHandler:
        return _DaemonRequestHandler(self, loop=self._loop, **self._kwargs)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        self.refused += 1
        if count := self._refusals.hit():
            log.warning("connection limit reached: refusing new connections with 503",
                        extra=kv(max_connections=self.limits.max_connections, refused=count))
        try:
            cast(asyncio.Transport, transport).write(_refusal(self.limits.max_connections))
        finally:
            transport.close()  # after the write is flushed; nothing of the request is read

    def note_header_timeout(self) -> None:
        self.header_timeouts += 1
        if count := self._header_log.hit():
            log.info("closed connections whose request headers did not arrive in time",
                     extra=kv(header_timeout=self.limits.header_timeout, closed=count))

    def _start_body_deadline(self, payload: StreamReader) -> None:
        timeout = self.limits.body_timeout

        def expire() -> None:
            if not payload.is_eof() and payload.exception() is None:
                payload.set_exception(BodyTimeout(timeout))

        payload.on_eof(self._loop.call_later(timeout, expire).cancel)


class DaemonRunner(web.AppRunner):
    """An AppRunner whose server is a `DaemonServer` with these limits."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits,
                 **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.idle_timeout, **kwargs)
        self.limits = limits

    async def _make_server(self) -> Server:
        built = await super()._make_server()
        server = DaemonServer(
            built.request_handler, request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation, loop=built._loop,
            limits=self.limits, **built._kwargs,
        )
        try:
            server()  # one handler now, so that an argument aiohttp refuses fails start-up
        except TypeError as exc:
            raise RuntimeError(f"the installed aiohttp refuses the HTTP settings: {exc}") from exc
        return server
