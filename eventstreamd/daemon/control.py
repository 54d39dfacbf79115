"""The control socket: local, token-free access to the daemon for `eventstreamd tui`.

Access control is the socket file's mode (0600, the daemon's user only), so
anyone who can connect may act: the socket offers watching (status and its
subscription), the integration reads the TUI shows, and start, stop, retry and
delete of rejected events. Creating, updating and deleting integrations stay
on the HTTP API.

Protocol (version 1; full reference in docs/control-protocol.md)
----------------------------------------------------------------
Newline-delimited JSON over a Unix stream socket, UTF-8, one object per line.

Request:  `{"id": 7, "op": "stop", "integration_id": "w1"}`
  `id` (optional, a string or an integer) is echoed in the response so a
  client can have several requests in flight; requests from one client run
  concurrently (at most `REQUESTS_PER_CLIENT` at a time), so responses may
  come back in a different order.
Success:  `{"id": 7, "ok": true, "result": {...}}`
Failure:  `{"id": 7, "ok": false, "error": {"error_code": "...", "message": "...",
           "status": 404}}` -- for API rules the same error_code, message and HTTP
  status the HTTP API gives; for protocol mistakes one of `invalid_json`,
  `invalid_request`, `unknown_op`, `missing_field`, `line_too_long`,
  `too_many_clients`, `internal_error`.
Push:     `{"event": "status", "data": {...snapshot...}}`, every push interval
  (1 s) while the client is subscribed; it may arrive before the `subscribe`
  response, whose result is itself a snapshot.

Operations (fields in brackets): `ping`, `status`, `subscribe`, `unsubscribe`,
`list`, `get` [integration_id], `logs` [integration_id], `rejected`
[integration_id], `rejected_event` [integration_id, event_id], `start`
[integration_id], `stop` [integration_id], `retry_rejected` [integration_id,
event_id], `delete_rejected` [integration_id, event_id], `replays`
[integration_id], `replay` [integration_id, replay: the `_replay` body],
`cancel_replay` [integration_id, replay_id].

Decisions:
- Every operation calls `IntegrationService` (the HTTP API's service), the
  `ReplayService` or the `StatusSampler`; there is no second implementation
  of any rule, and an `ApiError` becomes the error response field for field.
  A field is a string, except `replay`'s body (an object, checked by the
  replay service as the HTTP API checks it).
- Bounded everywhere. Each client has one outgoing queue of `queue_size`
  lines, written by one writer task. Responses and pushes are offered to it
  without waiting: a full queue means the client stopped reading (its kernel
  buffer is full too), and the client is dropped -- the daemon never buffers
  more for a stuck client. Request lines are capped at `max_line` bytes (a
  longer one gets `line_too_long` and the connection is closed, because the
  rest of that line cannot be framed), requests in flight per client at
  `REQUESTS_PER_CLIENT` (the reader stops reading meanwhile: back-pressure),
  and clients at `max_clients`.
- Idle clients make room. A client with no request in flight and no
  subscription is idle; one idle for `control.idle_timeout` is closed, and when
  `max_clients` are connected a newcomer evicts the longest-idle one. Only when
  every client is busy or subscribed is the newcomer refused
  (`too_many_clients`): idle connections can never lock the TUI out. A
  subscribed client that stops reading is dropped by its full queue, so no
  client holds a slot without using it. Activity is a request received or
  answered; a partial line does not count, so a client trickling bytes
  without ever finishing a line is idle too.
- Out of descriptors (EMFILE and the like) the accept loop backs off (0.1 s,
  doubling to 1 s) and keeps going, with one warning per few seconds; the
  pending connections wait in the backlog until descriptors free up. A
  client going away is one INFO line saying why, never a traceback.
- One sampler task serves every subscriber: it ticks the rate sampler and
  encodes each snapshot once, whatever the number of clients.
- A malformed line (bad JSON, not an object, unknown op, a missing or
  mistyped field) gets an error response and the connection stays usable;
  an unexpected exception in an operation is logged and answered with
  `internal_error`. Nothing a client sends can end the server.
- Creating the socket: a socket file left by a dead daemon is replaced; a
  live one (someone answers) or a path that is not a socket is refused with
  `ControlSocketError`, so a second daemon never steals the first one's
  socket. The socket is bound in a fresh 0700 directory next to the target,
  made 0600 and renamed into place: there is no moment at which it exists
  at its path with a wider mode (umask is process-wide and not ours to
  change). It is removed on stop if it is still ours (same inode).
- A client that half-closes (EOF after its requests, as `socat` does) still
  gets its pending responses: the server waits for them (bounded by
  `DRAIN_TIMEOUT`), flushes, then closes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import __version__
from ..config import ControlConfig
from ..logs import Throttle, kv
from ..timeouts import move_on_after
from .errors import ApiError
from .integrations import IntegrationService
from .replays import ReplayService
from .status import StatusSampler

log = logging.getLogger("eventstreamd.control")

PROTOCOL_VERSION = 1
QUEUE_SIZE = 32  # lines queued per client; a TUI reading normally holds one or two
PUSH_INTERVAL = 1.0  # seconds between status pushes ("at least once a second")
MAX_CLIENTS = 32
MAX_LINE = 64 * 1024  # requests are small; this only has to fit ids
REQUESTS_PER_CLIENT = 4
DRAIN_TIMEOUT = 30.0  # seconds a half-closed client's pending requests may take
STOP_TIMEOUT = 5.0
BACKLOG = 64
ACCEPT_BACKOFF = (0.1, 1.0)  # first and longest pause after a failed accept
OBJECT = "*"  # marks an operation's field that is an object, not a string


class ControlSocketError(Exception):
    """The control socket cannot be created; the message says why and names the path."""


@dataclass(eq=False)
class _Client:
    number: int
    outbox: MemoryObjectSendStream[bytes]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    requests: anyio.Semaphore = field(
        default_factory=lambda: anyio.Semaphore(REQUESTS_PER_CLIENT))
    flushed: anyio.Event = field(default_factory=anyio.Event)
    subscribed: bool = False
    dropped: bool = False
    in_flight: int = 0  # requests received and not yet answered
    last_active: float = field(default_factory=anyio.current_time)
    closed_because: str = "disconnected"

    @property
    def idle(self) -> bool:
        return not self.subscribed and self.in_flight == 0


Handler = Callable[..., Awaitable[Any]]


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def error_message(request_id: Any, error_code: str, message: str,
                  status: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"error_code": error_code, "message": message}
    if status is not None:
        error["status"] = status
    return {"id": request_id, "ok": False, "error": error}


class ControlServer:
    def __init__(
        self,
        path: Path,
        service: IntegrationService,
        sampler: StatusSampler,
        *,
        queue_size: int = QUEUE_SIZE,
        push_interval: float = PUSH_INTERVAL,
        max_clients: int = MAX_CLIENTS,
        max_line: int = MAX_LINE,
        idle_timeout: float = ControlConfig.idle_timeout,
    ) -> None:
        self.path = Path(path)
        self.service = service
        self.replays = ReplayService(service)
        self.sampler = sampler
        self.queue_size = queue_size
        self.push_interval = push_interval
        self.max_clients = max_clients
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.clients: set[_Client] = set()
        self.dropped = 0  # clients dropped for not reading
        self.evicted = 0  # idle clients closed to make room for a new one
        self.accept_failures = 0
        self.high_water = 0  # the most lines any client's queue ever held
        self._numbers = itertools.count(1)
        self._scope = anyio.CancelScope()
        self._finished = anyio.Event()
        self._inode: int | None = None
        # op -> (required string fields, handler(client, *fields))
        self._ops: dict[str, tuple[tuple[str, ...], Handler]] = {
            "ping": ((), self._ping),
            "status": ((), self._status),
            "subscribe": ((), self._subscribe),
            "unsubscribe": ((), self._unsubscribe),
            "list": ((), self._list),
            "get": (("integration_id",), self._get),
            "logs": (("integration_id",), self._logs),
            "rejected": (("integration_id",), self._rejected),
            "rejected_event": (("integration_id", "event_id"), self._rejected_event),
            "start": (("integration_id",), self._start),
            "stop": (("integration_id",), self._stop),
            "retry_rejected": (("integration_id", "event_id"), self._retry_rejected),
            "delete_rejected": (("integration_id", "event_id"), self._delete_rejected),
            "replays": (("integration_id",), self._replays),
            "replay": (("integration_id", OBJECT + "replay"), self._replay),
            "cancel_replay": (("integration_id", "replay_id"), self._cancel_replay),
        }

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                listener = await SocketListener.from_socket(self._bind())
                log.info("control socket listening", extra=kv(path=str(self.path)))
                async with listener, anyio.create_task_group() as tg:
                    tg.start_soon(self._push_forever, name="control:push")
                    tg.start_soon(self._close_idle_forever, name="control:idle")
                    task_status.started()
                    await self._accept_forever(listener, tg)
        finally:
            self._remove_socket()
            self._finished.set()

    async def stop(self) -> None:
        """Close every client and the socket, and remove the socket file. Safe to call twice."""
        self._scope.cancel()
        with move_on_after(STOP_TIMEOUT):
            await self._finished.wait()
        self._remove_socket()

    def _bind(self) -> socket.socket:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _clear_stale(path)
        # A short private directory name keeps the temporary path within AF_UNIX's
        # ~108 bytes whenever the final path is.
        private = tempfile.mkdtemp(prefix=".c", dir=path.parent)
        temporary = os.path.join(private, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(temporary)
            os.chmod(temporary, 0o600)
            os.rename(temporary, path)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot create the control socket {path}: "
                                     f"{exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(private, ignore_errors=True)
        self._inode = os.stat(path).st_ino
        return sock

    def _remove_socket(self) -> None:
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None

    async def _accept_forever(self, listener: SocketListener, tg: TaskGroup) -> None:
        throttle = Throttle()
        backoff = ACCEPT_BACKOFF[0]
        while True:
            try:
                stream = await listener.accept()
            except (anyio.BrokenResourceError, OSError) as exc:
                # Out of file descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS,
                # ENOMEM): anyio raises BrokenResourceError from the OSError, but the
                # listener is intact. Wait rather than spin or die; the connection
                # stays in the backlog and is accepted once descriptors free up.
                self.accept_failures += 1
                if count := throttle.hit():
                    cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
                    log.warning("control socket accept failed; retrying", extra=kv(
                        error=str(cause or exc), failures=count, backoff=backoff))
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF[1])
                continue
            backoff = ACCEPT_BACKOFF[0]
            tg.start_soon(self._serve_client, stream, name="control:client")

    # ------------------------------------------------------------------ clients

    async def _serve_client(self, stream: SocketStream) -> None:
        async with stream:
            if len(self.clients) >= self.max_clients and not self._evict_one():
                log.info("control client refused: every client is busy or subscribed",
                         extra=kv(clients=len(self.clients)))
                with contextlib.suppress(Exception):
                    await stream.send(encode(error_message(
                        None, "too_many_clients",
                        f"at most {self.max_clients} control clients at once, all busy")))
                return
            send, receive = anyio.create_memory_object_stream[bytes](self.queue_size)
            client = _Client(next(self._numbers), send)
            self.clients.add(client)
            log.debug("control client connected", extra=kv(client=client.number))
            try:
                with client.scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._write_loop, stream, receive, client)
                        await self._read_loop(stream, client, tg)
                        # The client half-closed (or broke a rule that ends the
                        # connection): answer what it asked, flush, then close.
                        client.subscribed = False
                        with move_on_after(DRAIN_TIMEOUT):
                            for _ in range(REQUESTS_PER_CLIENT):
                                await client.requests.acquire()
                            send.close()
                            await client.flushed.wait()
                        tg.cancel_scope.cancel()
            except Exception:
                client.closed_because = "error"
                log.exception("control client failed", extra=kv(client=client.number))
            finally:
                self.clients.discard(client)
                send.close()
                reason = client.closed_because
                if reason == "disconnected" and self._scope.cancel_called:
                    reason = "the daemon is stopping"
                log.info("control client gone", extra=kv(client=client.number, reason=reason))

    def _close(self, client: _Client, reason: str) -> None:
        """End a client's connection from the server side; its task logs the reason."""
        client.closed_because = reason
        self.clients.discard(client)  # its slot is free now, not when its task winds down
        client.scope.cancel()

    def _evict_one(self) -> bool:
        """Close the longest-idle client to make room; False if every client is busy."""
        idle = [c for c in self.clients if c.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.evicted += 1
        self._close(victim, "evicted: idle, and a new client needed its slot")
        return True

    async def _close_idle_forever(self) -> None:
        while True:
            await anyio.sleep(min(1.0, self.idle_timeout / 4))
            now = anyio.current_time()
            for client in [c for c in self.clients if c.idle]:
                if now - client.last_active >= self.idle_timeout:
                    self._close(client, f"idle for {self.idle_timeout:g}s")

    async def _write_loop(self, stream: SocketStream,
                          receive: MemoryObjectReceiveStream[bytes], client: _Client) -> None:
        try:
            async with receive:
                async for line in receive:
                    await stream.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            client.scope.cancel()  # the client went away: stop its requests too
        finally:
            client.flushed.set()

    async def _read_loop(self, stream: SocketStream, client: _Client, tg: TaskGroup) -> None:
        buffered = BufferedByteReceiveStream(stream)
        while True:
            try:
                line = await buffered.receive_until(b"\n", self.max_line)
            except anyio.IncompleteRead:
                line = bytes(buffered.buffer)  # a last request without its newline
                if line.strip():
                    await client.requests.acquire()
                    client.in_flight += 1
                    tg.start_soon(self._handle_line, client, line, name="control:request")
                return
            except anyio.DelimiterNotFound:
                client.closed_because = "line too long"
                self._offer(client, encode(error_message(
                    None, "line_too_long",
                    f"a request line may be at most {self.max_line} bytes; closing")))
                return
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                return
            if not line.strip():
                continue
            await client.requests.acquire()  # back-pressure: stop reading while busy
            client.in_flight += 1
            client.last_active = anyio.current_time()
            tg.start_soon(self._handle_line, client, line, name="control:request")

    async def _handle_line(self, client: _Client, line: bytes) -> None:
        try:
            response = await self.respond(client, line)
        finally:
            client.requests.release()
            client.in_flight -= 1
            client.last_active = anyio.current_time()
        try:
            data = encode(response)
        except TypeError:
            log.exception("control response not serializable")
            data = encode(error_message(response.get("id"), "internal_error",
                                        "the response could not be encoded"))
        self._offer(client, data)

    def _offer(self, client: _Client, line: bytes) -> None:
        """Queue a line for the client without waiting; drop the client if it is full."""
        if client.dropped:
            return
        try:
            client.outbox.send_nowait(line)
        except anyio.WouldBlock:
            client.dropped = True
            client.closed_because = "not reading its messages"
            self.dropped += 1
            log.warning("control client dropped: it is not reading its messages",
                        extra=kv(client=client.number, queued=self.queue_size))
            client.scope.cancel()
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # already leaving
        used = client.outbox.statistics().current_buffer_used
        self.high_water = max(self.high_water, used)

    # ----------------------------------------------------------------- requests

    async def respond(self, client: _Client, line: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return error_message(None, "invalid_json", f"the line is not valid JSON ({exc})")
        if not isinstance(request, dict):
            return error_message(None, "invalid_request",
                                 "a request is a JSON object such as {\"id\": 1, \"op\": \"ping\"}")
        request_id = request.get("id")
        if request_id is not None and (isinstance(request_id, bool)
                                       or not isinstance(request_id, str | int)):
            return error_message(None, "invalid_request", "'id' must be a string or an integer")
        op = request.get("op")
        if op is None:
            return error_message(request_id, "missing_field", "the request has no 'op'")
        spec = self._ops.get(op) if isinstance(op, str) else None
        if spec is None:
            return error_message(request_id, "unknown_op",
                                 f"unknown op {str(op)[:64]!r}; known: {', '.join(self._ops)}")
        fields, handler = spec
        args = []
        for field_spec in fields:
            name = field_spec.removeprefix(OBJECT)
            value = request.get(name)
            if value is None:
                return error_message(request_id, "missing_field",
                                     f"op '{op}' needs '{name}'")
            if name != field_spec:
                if not isinstance(value, dict):
                    return error_message(request_id, "invalid_request",
                                         f"'{name}' must be an object")
            elif not isinstance(value, str):
                return error_message(request_id, "invalid_request", f"'{name}' must be a string")
            args.append(value)
        try:
            result = await handler(client, *args)
        except ApiError as exc:
            return error_message(request_id, exc.error_code, exc.message, exc.status)
        except Exception:
            log.exception("control request failed", extra=kv(op=op))
            return error_message(request_id, "internal_error", "internal error; see the daemon log")
        return {"id": request_id, "ok": True, "result": result}

    async def _ping(self, client: _Client) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "version": __version__}

    async def _status(self, client: _Client) -> dict[str, Any]:
        return await self.sampler.snapshot()

    async def _subscribe(self, client: _Client) -> dict[str, Any]:
        client.subscribed = True
        return await self.sampler.snapshot()

    async def _unsubscribe(self, client: _Client) -> dict[str, Any]:
        client.subscribed = False
        return {}

    async def _list(self, client: _Client) -> dict[str, Any]:
        return {"integrations": await self.service.list_integrations()}

    async def _get(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return await self.service.get(integration_id)

    async def _logs(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return {"entries": await self.service.logs(integration_id)}

    async def _rejected(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return {"rejected_events": await self.service.list_rejected(integration_id)}

    async def _rejected_event(self, client: _Client, integration_id: str,
                              event_id: str) -> orjson.Fragment:
        return await self.service.get_rejected(integration_id, event_id)

    async def _start(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return await self.service.start(integration_id)

    async def _stop(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return await self.service.stop(integration_id)

    async def _retry_rejected(self, client: _Client, integration_id: str,
                              event_id: str) -> dict[str, Any]:
        await self.service.retry_rejected(integration_id, event_id)
        return {}

    async def _delete_rejected(self, client: _Client, integration_id: str,
                               event_id: str) -> dict[str, Any]:
        await self.service.delete_rejected(integration_id, event_id)
        return {}

    async def _replays(self, client: _Client, integration_id: str) -> dict[str, Any]:
        return await self.replays.list(integration_id)

    async def _replay(self, client: _Client, integration_id: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        return (await self.replays.replay(integration_id, body))[1]

    async def _cancel_replay(self, client: _Client, integration_id: str,
                             replay_id: str) -> dict[str, Any]:
        return await self.replays.cancel(integration_id, replay_id)

    # -------------------------------------------------------------------- push

    async def _push_forever(self) -> None:
        while True:
            try:
                await self.sampler.tick()
                subscribers = [c for c in self.clients if c.subscribed and not c.dropped]
                if subscribers:
                    line = encode({"event": "status", "data": await self.sampler.snapshot()})
                    for client in subscribers:
                        self._offer(client, line)
            except Exception:
                # A bad sample must not end the pushes (or, through the task group, the daemon).
                log.exception("status snapshot failed")
            await anyio.sleep(self.push_interval)


def _clear_stale(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse a live socket or any other file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it "
                                 "(set control.socket to another path or remove the file)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a daemon that did not stop cleanly
        log.info("removed a stale control socket", extra=kv(path=str(path)))
        return
    except OSError as exc:
        raise ControlSocketError(f"cannot check the existing control socket {path}: "
                                 f"{exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise ControlSocketError(f"another process is listening on the control socket {path} "
                             "(is another daemon running with this data_dir or control.socket?)")
