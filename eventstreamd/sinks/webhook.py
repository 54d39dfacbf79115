"""Webhook delivery: one POST per event, bearer api_key, retries, 400 = rejected.

Decisions:
- One attempt is `WebhookTarget.attempt`: it never raises for a delivery
  problem, it classifies it (delivered / rejected / retry) with a reason, so
  the retry loop, the rejected-event `_retry` endpoint and the tests share one
  definition of what a response means.
- Body exactly `{"tenant", "name", "published_at", "payload"}`; headers
  `Content-Type`, `Idempotency-Key: <event id>` (the same on every retry and
  redelivery) and `Authorization: Bearer <api_key>` when one is set.
- At most `RESPONSE_EXCERPT` bytes of a response body are read: a receiver
  cannot make us buffer a large error page. Redirects are not followed (a 3xx
  is retried like any other non-2xx, non-400 answer).
- Each failure is logged as `retry_triggered` with the seed's reason:
  `Request to URL <url> failed. Reason: <reason> (HTTP status code <code>).
  Payload: <event JSON, shortened>`. The URL is shown without userinfo.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import anyio
import orjson
from anyio.abc import TaskGroup

from ..logs import kv
from ..naming import valid_event_id
from ..storage.lmdb_store import StoreFull
from ..storage.records import StoredEvent
from .backoff import backoff_delay, parse_retry_after
from .loop import SinkLoop, StopDelivery
from .ssrf import BlockedTarget, check_host
from .window import DeliveryWindow

log = logging.getLogger("eventstreamd.webhook")

RESPONSE_EXCERPT = 1024
PAYLOAD_EXCERPT = 256

# "unsendable": the event can never be sent from our side (its id is no valid header
# value); like a 400 it is set aside, since retrying cannot change it.
Outcome = Literal["delivered", "rejected", "retry", "unsendable"]


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    reason: str
    status: int | None = None
    retry_after: float | None = None


def display_url(url: str) -> str:
    """The URL without userinfo, safe for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def shorten(text: str, limit: int = PAYLOAD_EXCERPT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_reason(url: str, reason: str, status: int | None, body: bytes) -> str:
    code = status if status is not None else "none"
    payload = shorten(body.decode(errors="replace"))
    return (f"Request to URL {display_url(url)} failed. Reason: {reason} "
            f"(HTTP status code {code}). Payload: {payload}")


def encode_body(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


class WebhookTarget:
    def __init__(self, session: aiohttp.ClientSession, params: dict[str, Any],
                 timeout: float, block_policy: str = "none") -> None:
        self._session = session
        self.url: str = params["callback_url"]
        # A literal address is judged once here; names at connect time (ssrf.py).
        self._blocked: str | None = None
        try:
            check_host(urllib.parse.urlsplit(self.url).hostname, block_policy)
        except BlockedTarget as exc:
            self._blocked = str(exc)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._headers = {"Content-Type": "application/json"}
        if params.get("api_key"):
            self._headers["Authorization"] = f"Bearer {params['api_key']}"

    @property
    def describe(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or self.url

    async def attempt(self, event_id: str, body: bytes) -> AttemptResult:
        if self._blocked is not None:
            return AttemptResult("retry", self._blocked)
        if not valid_event_id(event_id):
            return AttemptResult("unsendable", "its id cannot be sent as the Idempotency-Key "
                                               "header (visible ASCII only)")
        headers = {**self._headers, "Idempotency-Key": event_id}
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                excerpt = await response.content.read(RESPONSE_EXCERPT)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return AttemptResult("retry", f"timed out after {self._timeout_s:g}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedTarget):
                return AttemptResult("retry", str(exc.os_error))
            return AttemptResult("retry", f"cannot connect ({exc.os_error.strerror or exc})")
        except aiohttp.ServerDisconnectedError:
            return AttemptResult("retry", "server closed the connection")
        except aiohttp.ClientError as exc:
            return AttemptResult("retry", f"{type(exc).__name__}: {exc}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            return AttemptResult("retry", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # Whatever else goes wrong in one attempt (a header aiohttp refuses, a
            # bug) must fail that attempt, not the whole sink.
            log.warning("unexpected error delivering", exc_info=True)
            return AttemptResult("retry", f"{type(exc).__name__}: {exc}")
        text = shorten(excerpt.decode(errors="replace").strip(), 200)
        if 200 <= status < 300:
            return AttemptResult("delivered", "delivered", status)
        if status == 400:
            return AttemptResult("rejected", text or "Bad Request", status)
        reason = f"HTTP {status}" + (f": {text}" if text else "")
        return AttemptResult("retry", reason, status, retry_after)


class WebhookPipeline:
    """Delivers events with `window_size` long-lived worker tasks, with retries.

    Workers, not a task per event: spawning a task per delivery was a measurable
    share of the loop's time (bench/README.md). A zero-buffer stream hands each
    event to an idle worker; the window still decides when the next may go.
    """

    def __init__(self, target: WebhookTarget, retry_initial: float, retry_max: float,
                 window_size: int) -> None:
        self.target = target
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.window = DeliveryWindow(window_size)
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._send, self._receive = anyio.create_memory_object_stream[StoredEvent](0)
        self._workers_started = False

    async def open(self, sink: SinkLoop) -> None:
        return None

    async def tick(self, sink: SinkLoop) -> None:
        return None

    def blocked(self) -> bool:
        return self.window.full

    def safe_cursor(self, read_position: int) -> int:
        return self.window.safe_cursor(read_position)

    def committed(self, cursor: int) -> None:
        self.window.committed(cursor)

    def status(self) -> dict[str, Any]:
        return {"in_flight": self.window.in_flight, "target": self.target.describe}

    async def release(self) -> None:
        # The ClientSession is the supervisor's; only the hand-over stream is ours.
        self._send.close()
        self._receive.close()

    async def accept(self, event: StoredEvent, sink: SinkLoop, tg: TaskGroup) -> bool:
        while self.window.full and not sink.stopping.is_set():
            await sink.wait_progress()
        if sink.stopping.is_set():
            return False
        if not self._workers_started:
            self._workers_started = True
            for number in range(self.window.size):
                tg.start_soon(self._worker, sink, name=f"webhook:{sink.integration_id}:{number}")
        self.window.dispatch(event.seq)
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        await self._send.send(event)
        return True

    async def _worker(self, sink: SinkLoop) -> None:
        async with self._receive.clone() as events:
            async for event in events:
                await self._deliver_one(event, sink)

    async def close(self, sink: SinkLoop, outcome: str, grace: float) -> None:
        if outcome == "completed":
            # A temporary integration is done only when every event is finished,
            # however long retries take; a stop request ends that wait.
            async with anyio.create_task_group() as tg:
                async def until_idle() -> None:
                    await self._idle.wait()
                    tg.cancel_scope.cancel()
                tg.start_soon(until_idle)
                await sink.stopping.wait()
                tg.cancel_scope.cancel()
        with anyio.move_on_after(grace):
            await self._idle.wait()
        self._send.close()  # idle workers end; busy ones end after their event
        if self._active:
            log.warning("deliveries still running at stop; abandoning them",
                        extra=kv(integration=sink.integration_id, active=self._active))

    async def _deliver_one(self, event: StoredEvent, sink: SinkLoop) -> None:
        try:
            await self._deliver(event, sink)
            self.window.finish(event.seq)
            sink.progressed()
        except StopDelivery:
            pass
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _deliver(self, event: StoredEvent, sink: SinkLoop) -> None:
        try:
            body = encode_body(event.delivery_body())
        except (TypeError, ValueError) as exc:  # orjson: nesting beyond 254 levels
            await self._set_aside(event, sink, f"it cannot be encoded as JSON ({exc})",
                                  None, encodable=False)
            return
        attempt = 0
        while True:
            result = await self.target.attempt(event.id, body)
            if result.outcome == "delivered":
                sink.stats.delivered += 1
                return
            if result.outcome in ("rejected", "unsendable"):
                if await self._set_aside(event, sink, shorten(result.reason, 200),
                                         result.status):
                    return
                result = AttemptResult("retry", f"{result.reason}; but the store is full: "
                                                "the rejection cannot be kept yet")
            attempt += 1
            reason = retry_reason(self.target.url, result.reason, result.status, body)
            sink.record_failure(reason)
            log.warning("delivery failed, will retry", extra=kv(
                integration=sink.integration_id, seq=event.seq, attempt=attempt,
                reason=result.reason))
            await sink.add_log("retry_triggered", reason)
            # Retry-After is honoured as a lower bound: "0" must not become a tight loop.
            delay = max(result.retry_after or 0.0,
                        backoff_delay(attempt, self._retry_initial, self._retry_max))
            if await sink.sleep_unless_stopping(delay):
                raise StopDelivery

    @staticmethod
    async def _set_aside(event: StoredEvent, sink: SinkLoop, reason: str, status: int | None,
                         *, encodable: bool = True) -> bool:
        """Keep the event as rejected; False when the store is full (it stays unfinished)."""
        try:
            await sink.set_aside(event, reason, status=status, encodable=encodable)
        except StoreFull:
            return False
        return True
