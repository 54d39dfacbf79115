"""The NATS connection of the JetStream backend, and the raw JetStream requests nats-py lacks.

Decisions:
- One connection per daemon, made with a start-up deadline
  (`jetstream.connect_timeout`): `nats.connect` with unlimited reconnects is
  wrapped in `asyncio.wait_for`, so a server that is down makes start-up fail
  with one line naming the servers and the last error, while a server that
  goes away later is reconnected to for ever (every 0.5 s).
- `pending_size=0`: while disconnected every publish fails at once
  (`OutboundBufferLimitError`) instead of waiting in nats-py's reconnect
  buffer and landing minutes later; the store turns that into
  `StoreUnavailable` (503). Pings every 5 s notice a silent server within
  ~15 s (nats-py's default, 2 minutes, would leave publishes hanging on
  timeouts that long).
- Outcomes are three, and every caller must tell them apart: *answered*
  (an ack or a JetStream API error, `JsApiError`), *not sent*
  (`NotSent`: disconnected before the request left, or no responders — the
  write did not happen) and *unknown* (`Unknown`: the request may have
  reached the server, no answer came; the write may or may not have
  happened, so it is re-sent with the same `Nats-Msg-Id` or re-read).
- Raw requests where nats-py 2.16 has no API: atomic batch publish (the
  batch headers, non-commit messages without a reply, the commit as a
  request), batched and multi-last `DIRECT.GET` (one reply per message until
  a `204 EOB` status), last-by-subject `DIRECT.GET`, and the stream API as
  JSON (create/update/info/purge), so every field the server knows
  (`allow_atomic`, `republish`, ...) is sent as the server spells it.
- Multi-message replies (DIRECT.GET batches) come through one long-lived
  wildcard inbox subscription, routed by the last token of the reply subject
  to the waiting request; no subscribe/unsubscribe round trip per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ...config import JetStreamConfig
from ...logs import kv, redactor
from ..base import StoreHealth, StoreUnavailable

log = logging.getLogger("eventstreamd.jetstream")

RECONNECT_WAIT = 0.5
PING_INTERVAL = 5
WAIT_SLICE = 0.25  # seconds; see wait_connected
API = "$JS.API"

# Header names (NATS spells them so).
MSG_ID = "Nats-Msg-Id"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQ = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
EXPECT_LAST_SEQ = "Nats-Expected-Last-Sequence"
EXPECT_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECT_SUBJ = "Nats-Expected-Last-Subject-Sequence-Subject"
ROLLUP = "Nats-Rollup"
SEQUENCE = "Nats-Sequence"
TIME_STAMP = "Nats-Time-Stamp"
SUBJECT = "Nats-Subject"
STATUS = "Status"

# JetStream API error codes this backend acts on.
WRONG_LAST_SEQUENCE = 10071
STREAM_NOT_FOUND = 10059
MAX_BYTES = 10077
DUPLICATE_MSG_ID = 10201
# A cluster still forming: its meta leader is elected but not every peer has
# reported in ("no suitable peers for placement, peer offline"), or the meta
# layer is between leaders. Both clear by waiting; at start-up they are retried
# within connect_timeout, and a cluster that can never place the stream (more
# replicas than servers) fails at that deadline with the server's own words.
CLUSTER_FORMING = frozenset({10005, 10008})

_NOT_SENT = (nats.errors.OutboundBufferLimitError, nats.errors.ConnectionClosedError,
             nats.errors.ConnectionReconnectingError, nats.errors.ConnectionDrainingError,
             nats.errors.NoRespondersError, nats.errors.StaleConnectionError)


class NotSent(StoreUnavailable):
    """The request never reached JetStream: nothing was written."""


class Unknown(StoreUnavailable):
    """No answer: the write may or may not have happened."""


class JsApiError(Exception):
    """JetStream answered with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (JetStream error {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class Out:
    """One message to publish: subject, payload, headers."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int  # the last stored sequence (of the batch)
    count: int = 1
    duplicate: bool = False

    @property
    def first(self) -> int:
        return self.seq - self.count + 1


def _ack(raw: bytes) -> Ack:
    answer = orjson.loads(raw) if raw else {}
    error = answer.get("error")
    if error:
        raise JsApiError(int(error.get("code", 0)), int(error.get("err_code", 0)),
                         str(error.get("description", "")))
    if "seq" not in answer:
        raise JsApiError(0, 0, f"unexpected answer {raw[:200]!r}")
    return Ack(int(answer["seq"]), int(answer.get("count", 1)),
               bool(answer.get("duplicate", False)))


def _found(msg: Msg) -> Msg | None:
    """A DIRECT.GET answer: the message, None for "no such message", or the error."""
    status = _status(msg)
    if status is None:
        return msg
    if status == "404":
        return None
    raise JsApiError(int(status), 0, _description(msg))


def last_token(headers: dict[str, str] | None) -> str:
    """The last token of a DIRECT.GET answer's subject (`...int.<id>` -> `<id>`)."""
    return str((headers or {}).get(SUBJECT, "")).rpartition(".")[2]


def _status(msg: Msg) -> str | None:
    return msg.headers.get(STATUS) if msg.headers else None


class _Collector:
    __slots__ = ("done", "error", "msgs")

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.done = asyncio.get_running_loop().create_future()
        self.error: str | None = None


class JsClient:
    def __init__(self, config: JetStreamConfig) -> None:
        self.config = config
        self.timeout = config.request_timeout
        self._nc: NatsClient | None = None
        self._error: str | None = None
        self._connected = asyncio.Event()
        self._listeners: list[Callable[[bool], None]] = []
        self._mux_prefix = ""
        self._mux_ids = itertools.count(1)
        self._waiting: dict[str, _Collector] = {}
        self._closing = False
        redactor.add(config.token)
        for url in config.servers:  # nats://user:password@host, nats://token@host
            parts = urlsplit(url)
            redactor.add(parts.password)
            redactor.add(parts.username)

    # ------------------------------------------------------------- connection

    def describe(self) -> str:
        """The configured servers, without any user:password@ they carry."""
        return ", ".join(_without_userinfo(url) for url in self.config.servers)

    async def connect(self) -> None:
        """Connect within `connect_timeout`, or raise StoreUnavailable naming the servers."""
        options: dict[str, Any] = {}
        if self.config.token:
            options["token"] = self.config.token
        if self.config.credentials:
            options["user_credentials"] = self.config.credentials
        try:
            self._nc = await asyncio.wait_for(nats.connect(
                servers=list(self.config.servers), name="eventstreamd",
                connect_timeout=max(0.5, min(2.0, self.config.connect_timeout)),
                allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT, pending_size=0,
                ping_interval=PING_INTERVAL, max_outstanding_pings=2,
                error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected, closed_cb=self._on_closed,
                **options), self.config.connect_timeout)
        except TimeoutError:
            cause = f" ({self._error})" if self._error else ""
            raise StoreUnavailable(
                f"no NATS server answered at {self.describe()} within "
                f"{self.config.connect_timeout:g}s{cause}") from None
        except (OSError, nats.errors.Error) as exc:
            raise StoreUnavailable(
                f"NATS at {self.describe()} refused the connection: {_describe(exc)}") from None
        self._error = None
        self._connected.set()
        self._mux_prefix = self._nc.new_inbox()
        await self._nc.subscribe(self._mux_prefix + ".*", cb=self._on_reply,
                                 pending_msgs_limit=1_000_000, pending_bytes_limit=0)
        log.info("connected to NATS", extra=kv(server=self.server_url()))

    async def close(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        for waiting in self._waiting.values():
            if not waiting.done.done():
                waiting.done.set_exception(NotSent("the store is closing"))

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise NotSent("the store is closing")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None else 1024 * 1024

    def server_url(self) -> str:
        url = self._nc.connected_url if self._nc is not None else None
        if url is None:
            return self.describe()
        return f"{url.scheme}://{url.hostname}:{url.port}"

    def health(self) -> StoreHealth:
        connected = self.connected
        return StoreHealth("jetstream", connected, self.server_url(),
                           None if connected else (self._error or "not connected"))

    def on_connection(self, listener: Callable[[bool], None]) -> None:
        """`listener(connected)` after every disconnect and reconnect."""
        self._listeners.append(listener)

    async def wait_connected(self, within: float) -> bool:
        """Until the connection is up again, for at most `within` seconds.

        nats-py marks the connection as reconnecting at once but calls the disconnect
        callback (which clears `_connected`) only after closing the socket, a few ms
        later: in between the event still says "connected". So the event is only a
        wake-up; the connection's own state decides, checked again at least every
        `WAIT_SLICE` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while not self.connected:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            if self._connected.is_set():
                self._connected.clear()  # stale: the disconnect callback has not run yet
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._connected.wait(), min(left, WAIT_SLICE))
        return True

    async def _on_error(self, exc: Exception) -> None:
        self._error = _describe(exc)
        if not self._closing:
            log.debug("NATS connection error", extra=kv(error=self._error))

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if self._closing:
            return
        self._error = self._error or "disconnected"
        log.warning("disconnected from NATS; reconnecting", extra=kv(
            servers=self.describe(), error=self._error))
        for listener in self._listeners:
            listener(False)

    async def _on_reconnected(self) -> None:
        self._error = None
        self._connected.set()
        log.info("reconnected to NATS", extra=kv(server=self.server_url()))
        for listener in self._listeners:
            listener(True)

    async def _on_closed(self) -> None:
        self._connected.clear()
        if not self._closing:
            self._error = self._error or "connection closed"

    # --------------------------------------------------------------- requests

    async def publish(self, out: Out) -> None:
        """A message without a reply (a non-commit message of an atomic batch)."""
        try:
            await self.nc.publish(out.subject, out.data, headers=out.headers)
        except _NOT_SENT as exc:
            raise NotSent(f"NATS is not reachable ({_describe(exc)})") from None

    async def request(self, subject: str, data: bytes = b"",
                      headers: dict[str, str] | None = None,
                      within: float | None = None) -> Msg:
        try:
            return await self.nc.request(subject, data, timeout=within or self.timeout,
                                         headers=headers)
        except nats.errors.TimeoutError:
            raise Unknown(f"no answer from NATS within {within or self.timeout:g}s") from None
        except nats.errors.NoRespondersError:
            raise NotSent("JetStream did not take the request (no responders: the stream has "
                          "no leader right now, e.g. during an election)") from None
        except _NOT_SENT as exc:
            raise NotSent(f"NATS is not reachable ({_describe(exc)})") from None

    async def store(self, out: Out, within: float | None = None) -> Ack:
        """Publish one message to a stream and wait for its ack."""
        return _ack((await self.request(out.subject, out.data, out.headers, within)).data)

    async def commit(self, messages: Sequence[Out], batch_id: str,
                     within: float | None = None) -> Ack:
        """All of `messages` or none of them (a JetStream atomic batch; one message is a
        plain publish). `NotSent` when the commit never left; `Unknown` after it did."""
        if len(messages) == 1:
            return await self.store(messages[0], within)
        last = len(messages)
        for number, out in enumerate(messages, 1):
            headers = dict(out.headers) if out.headers else {}
            headers[BATCH_ID] = batch_id
            headers[BATCH_SEQ] = str(number)
            if number == last:
                headers[BATCH_COMMIT] = "1"
                return _ack((await self.request(out.subject, out.data, headers, within)).data)
            await self.publish(Out(out.subject, out.data, headers))
        raise AssertionError("unreachable")

    async def api(self, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API request (`STREAM.INFO.name`, ...); its JSON answer."""
        msg = await self.request(f"{API}.{endpoint}",
                                 orjson.dumps(body) if body is not None else b"")
        answer: dict[str, Any] = orjson.loads(msg.data) if msg.data else {}
        error = answer.get("error")
        if error:
            raise JsApiError(int(error.get("code", 0)), int(error.get("err_code", 0)),
                             str(error.get("description", "")))
        return answer

    async def direct_last(self, stream: str, subject: str) -> Msg | None:
        """The newest message on `subject`, or None."""
        return _found(await self.request(f"{API}.DIRECT.GET.{stream}.{subject}"))

    async def direct_get(self, stream: str, request: dict[str, Any]) -> Msg | None:
        """One message by `seq` or `start_time`, or None."""
        return _found(await self.request(f"{API}.DIRECT.GET.{stream}", orjson.dumps(request)))

    async def direct_batch(self, stream: str, request: dict[str, Any],
                           within: float | None = None) -> list[Msg]:
        """Every reply of a batched or multi-last DIRECT.GET (an empty list for 404)."""
        token = str(next(self._mux_ids))
        collector = _Collector()
        self._waiting[token] = collector
        try:
            try:
                await self.nc.publish(f"{API}.DIRECT.GET.{stream}", orjson.dumps(request),
                                      reply=f"{self._mux_prefix}.{token}")
            except _NOT_SENT as exc:
                raise NotSent(f"NATS is not reachable ({_describe(exc)})") from None
            try:
                await asyncio.wait_for(asyncio.shield(collector.done), within or self.timeout)
            except TimeoutError:
                raise Unknown(f"no answer from NATS within {within or self.timeout:g}s") \
                    from None
        finally:
            self._waiting.pop(token, None)
        if collector.error is not None:
            status, _, text = collector.error.partition(" ")
            if status == "404":
                return []
            raise JsApiError(int(status) if status.isdigit() else 0, 0, text)
        return collector.msgs

    async def _on_reply(self, msg: Msg) -> None:
        collector = self._waiting.get(msg.subject.rpartition(".")[2])
        if collector is None or collector.done.done():
            return
        status = _status(msg)
        if status is None:
            collector.msgs.append(msg)
        elif status == "204":  # end of batch
            collector.done.set_result(None)
        else:
            collector.error = f"{status} {_description(msg)}"
            collector.done.set_result(None)

    # ---------------------------------------------------------------- streams

    async def ensure_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create the stream, or bring an existing one's settings in line; its info."""
        name = config["name"]
        try:
            info = await self.api(f"STREAM.INFO.{name}")
        except JsApiError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            log.info("creating stream", extra=kv(stream=name))
            return await self.api(f"STREAM.CREATE.{name}", config)
        current = info.get("config", {})
        if any(current.get(key) != value for key, value in config.items()):
            log.info("updating stream settings", extra=kv(stream=name))
            return await self.api(f"STREAM.UPDATE.{name}", {**current, **config})
        return info

    async def purge(self, stream: str, subject: str, before_seq: int | None = None) -> int:
        """Remove the messages on `subject` (wildcards allowed), those below `before_seq`
        only when given; how many went."""
        body: dict[str, Any] = {"filter": subject}
        if before_seq is not None:
            body["seq"] = before_seq
        answer = await self.api(f"STREAM.PURGE.{stream}", body)
        return int(answer.get("purged", 0))


def _description(msg: Msg) -> str:
    if not msg.headers:
        return ""
    return str(msg.headers.get("Description", ""))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("nats: "):
        text = text[6:]
    return text


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
