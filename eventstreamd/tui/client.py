"""The TUI's client for the daemon's control socket (protocol: eventstreamd/daemon/control.py).

Decisions:
- asyncio streams, because Textual runs on asyncio and the client lives in the
  app's loop; one reader task per connection matches responses to requests
  by `id` (requests may be answered out of order) and hands pushes to a
  callback. The task is kept referenced and cancelled on close.
- Every failure the user can meet is one of three exceptions with a message
  fit to show as is: `ControlUnavailable` (cannot connect: wrong path, no
  daemon, permissions), `ConnectionLost` (the daemon went away mid-session)
  and `ControlError` (the daemon refused a request; same error_code and
  message as the HTTP API).
- Every wait is bounded: connecting (`CONNECT_TIMEOUT`) and each request
  (`REQUEST_TIMEOUT`, long enough for a rejected event's retry, which waits
  on the receiver).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 60.0
# A response carries at most one rejected event, whose payload may be as large as
# the daemon's server.max_body (10 MiB by default) plus JSON escaping.
MAX_LINE = 64 * 1024 * 1024

PushHandler = Callable[[dict[str, Any]], None]


class ControlUnavailable(Exception):
    """The control socket cannot be reached; the message says why and what to check."""


class ConnectionLost(Exception):
    """The connection to the daemon ended."""


class ControlError(Exception):
    def __init__(self, error_code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.error_code})"


def explain(path: Path, exc: BaseException) -> str:
    """A one-line, actionable reason why connecting to `path` failed."""
    if isinstance(exc, FileNotFoundError):
        return (f"no control socket at {path}: is the daemon running? "
                "(check --socket, or control.socket / storage.data_dir in --config)")
    if isinstance(exc, PermissionError):
        return (f"permission denied for {path}: the control socket is mode 0600, "
                "so run the TUI as the user that runs the daemon")
    if isinstance(exc, ConnectionRefusedError):
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return f"{path} is not a socket (check --socket or control.socket)"
        return (f"nothing is listening on {path}: the daemon is not running "
                "(the socket file is left from an earlier run)")
    if isinstance(exc, TimeoutError):
        return f"the daemon did not answer on {path} within {CONNECT_TIMEOUT:g}s"
    if isinstance(exc, OSError):
        return f"cannot connect to {path}: {exc.strerror or exc}"
    return f"cannot connect to {path}: {exc}"


class ControlClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_push: PushHandler | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_push = on_push
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closed = asyncio.Event()
        self.close_reason = "the daemon closed the connection"
        self.server: dict[str, Any] = {}  # the daemon's answer to `ping`
        self._task = asyncio.create_task(self._read_forever(), name="control-client:read")

    @classmethod
    async def connect(cls, path: Path, on_push: PushHandler | None = None,
                      within: float = CONNECT_TIMEOUT) -> ControlClient:
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
        except (OSError, TimeoutError) as exc:
            raise ControlUnavailable(explain(path, exc)) from None
        client = cls(reader, writer, on_push)
        try:
            hello = await client.request("ping", within=within)
        except (ConnectionLost, ControlError) as exc:
            await client.close()
            raise ControlUnavailable(f"{path} did not answer as an eventstreamd control "
                                     f"socket: {exc}") from None
        if not isinstance(hello, dict) or hello.get("protocol") != 1:
            await client.close()
            raise ControlUnavailable(f"{path} speaks an unknown control protocol: {hello!r}")
        client.server = hello
        return client

    @property
    def connected(self) -> bool:
        return not self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def request(self, op: str, within: float = REQUEST_TIMEOUT, **fields: Any) -> Any:
        """Send one request and return its result; raise ControlError or ConnectionLost."""
        if self._closed.is_set():
            raise ConnectionLost(self.close_reason)
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(orjson.dumps({"id": request_id, "op": op, **fields}) + b"\n")
            await self._writer.drain()
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:  # before OSError: TimeoutError is one
            raise ControlError("timeout", f"no answer to '{op}' within {within:g}s") from None
        except (ConnectionError, OSError) as exc:
            self._lost(f"the connection broke ({exc})")
            raise ConnectionLost(self.close_reason) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        self._lost("closed")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # ---------------------------------------------------------------- internals

    async def _read_forever(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._dispatch(orjson.loads(line))
        except (ConnectionError, OSError, ValueError) as exc:
            # ValueError: a line over MAX_LINE (asyncio's LimitOverrunError) or bad JSON;
            # either way the stream can no longer be trusted.
            self._lost(f"the connection broke ({exc})")
            return
        self._lost("the daemon closed the connection")

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "event" in message:
            if self._on_push is not None and message.get("event") == "status":
                self._on_push(message.get("data") or {})
            return
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            return  # a late answer to a request that timed out
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            error = message.get("error") or {}
            future.set_exception(ControlError(str(error.get("error_code", "error")),
                                              str(error.get("message", "")),
                                              error.get("status")))

    def _lost(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason))


async def probe(path: Path) -> dict[str, Any]:
    """Connect once and say hello; raise ControlUnavailable with a clear reason otherwise."""
    client = await ControlClient.connect(path)
    try:
        return client.server
    finally:
        await client.close()
