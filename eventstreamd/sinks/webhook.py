"""Webhook delivery: one POST per event, bearer api_key, retries, 400 = rejected.

Decisions:
- One attempt is `WebhookClient.attempt`: it never raises for a delivery
  problem, it classifies it (delivered / rejected / retry / unsendable) with a
  cause, so the retry loop, the rejected-event `_retry` and the tests share
  one definition of what a response means.
- Body: the event's stored delivery body, sent as is (never re-encoded).
  Headers: `Content-Type`, `Idempotency-Key: <event id>` (the same on every
  retry and redelivery) and `Authorization: Bearer <api_key>` when one is set;
  with `webhook.signing_secret` set, the Standard Webhooks headers too
  (`signing.py`: `webhook-id`, `webhook-timestamp`, `webhook-signature` over
  exactly the bytes sent).
- At most `RESPONSE_EXCERPT` bytes of a response body are read: a receiver
  cannot make us buffer a large error page. Redirects are not followed (a 3xx
  is retried like any other non-2xx, non-400 answer).
- Each failure is logged as `retry_triggered` with the spec's reason (see
  `retry.py`); the URL is shown without userinfo.
- Registration refuses what could never be requested: not http(s), no host,
  a port outside 1-65535, userinfo in the URL, a literal address the SSRF
  policy blocks (names are checked again at connect time, after resolution),
  control characters in the api_key (it becomes a header).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
import anyio
import yarl

from ..codec import REASON_EXCERPT
from ..config import BlockPolicy, Config
from ..logs import shorten
from ..model import Integration, RejectedEvent, StoredEvent, TargetParams
from ..naming import valid_event_id
from ..storage.base import StoreFull
from .backoff import parse_retry_after
from .base import (
    DeliveryFailed,
    PipelineStatus,
    SinkContext,
    SinkEnv,
    SinkType,
    StopDelivery,
    TargetRefused,
)
from .retry import Failure, RetryPolicy, retry_until_stopped
from .signing import Signer, signer_for
from .ssrf import BlockedTarget, check_host
from .window import DeliveryWindow

log = logging.getLogger("eventstreamd.webhook")

RESPONSE_EXCERPT = 1024


@dataclass(frozen=True)
class WebhookTarget(TargetParams):
    kind: ClassVar[str] = "webhook"
    api_field: ClassVar[str] = "callback_parameters"
    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    api_fields: ClassVar[tuple[str, ...]] = ("callback_url", "api_key")

    callback_url: str
    api_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"callback_url": self.callback_url}
        if self.api_key is not None:
            out["api_key"] = self.api_key
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookTarget:
        return cls(callback_url=data["callback_url"], api_key=data.get("api_key"))

    def describe(self) -> str:
        """Host, port and path: enough to tell two receivers on one host apart; never
        userinfo or the query (either may carry a credential)."""
        try:
            parts = urllib.parse.urlsplit(self.callback_url)
            host = parts.hostname or "?"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "?"
        host = f"[{host}]" if ":" in host else host
        return f"{host}{port}{parts.path}"


def display_url(url: str) -> str:
    """The URL without userinfo, safe for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# ----------------------------------------------------------------- registration


def check(params: TargetParams, config: Config) -> None:
    assert isinstance(params, WebhookTarget)
    field = f"'{WebhookTarget.api_field}.callback_url'"
    url = params.callback_url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises for a port outside 0-65535
        yarl.URL(url).raw_host  # noqa: B018 - what aiohttp will parse it with
    except ValueError:
        raise TargetRefused("invalid_callback_url",
                            f"{field} is not a URL that can be requested (check the host and "
                            "that the port is 1-65535)") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise TargetRefused("invalid_callback_url",
                            f"{field} must be an http:// or https:// URL with a host")
    if port == 0:
        raise TargetRefused("invalid_callback_url", f"{field} must have a port of 1-65535")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("invalid_callback_url",
                            f"{field} must not carry credentials; use 'api_key'")
    try:
        check_host(host, config.security.block_targets)
    except BlockedTarget as exc:
        raise TargetRefused("callback_url_blocked", f"{field}: {exc}") from None
    if params.api_key is not None and any(ord(c) < 32 or ord(c) == 127 for c in params.api_key):
        raise TargetRefused("invalid_api_key",
                            f"'{WebhookTarget.api_field}.api_key' must not contain control "
                            "characters")


# ---------------------------------------------------------------------- attempts


@dataclass(frozen=True)
class AttemptResult:
    # "unsendable": the event can never be sent from our side (its id is no valid
    # header value); like a 400 it is set aside, since retrying cannot change it.
    outcome: Literal["delivered", "rejected", "unsendable"]
    cause: str
    status: int | None = None


class WebhookClient:
    """Sends one event to one integration's URL and classifies the outcome."""

    def __init__(self, session: aiohttp.ClientSession, target: WebhookTarget,
                 timeout: float, block_policy: BlockPolicy = "none",
                 signer: Signer | None = None) -> None:
        self._session = session
        self._signer = signer
        self.url = target.callback_url
        self.shown_url = display_url(target.callback_url)
        # A literal address is judged once here; names at connect time (ssrf.py).
        self._blocked: str | None = None
        try:
            check_host(urllib.parse.urlsplit(self.url).hostname, block_policy)
        except BlockedTarget as exc:
            self._blocked = str(exc)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._headers = {"Content-Type": "application/json"}
        if target.api_key:
            self._headers["Authorization"] = f"Bearer {target.api_key}"

    async def attempt(self, event_id: str, body: bytes) -> AttemptResult | Failure:
        if self._blocked is not None:
            return Failure(self._blocked)
        if not valid_event_id(event_id):
            return AttemptResult("unsendable", "its id cannot be sent as the Idempotency-Key "
                                               "header (visible ASCII only)")
        headers = {**self._headers, "Idempotency-Key": event_id}
        if self._signer is not None:
            headers.update(self._signer.headers(event_id, body))
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                excerpt = await response.content.read(RESPONSE_EXCERPT)
                status, phrase = response.status, response.reason or ""
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return Failure(f"timed out after {self._timeout_s:g}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedTarget):
                return Failure(str(exc.os_error))
            return Failure(f"cannot connect ({exc.os_error.strerror or exc})")
        except aiohttp.ServerDisconnectedError:
            return Failure("server closed the connection")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return Failure(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # Whatever else goes wrong in one attempt (a bug) must fail that
            # attempt, not the whole sink.
            log.warning("unexpected error delivering", exc_info=True)
            return Failure(f"{type(exc).__name__}: {exc}")
        text = shorten(excerpt.decode(errors="replace").strip(), REASON_EXCERPT)
        if 200 <= status < 300:
            return AttemptResult("delivered", "delivered", status)
        if status == 400:
            return AttemptResult("rejected", text or phrase or "Bad Request", status)
        # The status is in the reason's "(HTTP status code N)" already: say what came back.
        return Failure(text or phrase or "no answer body", status, retry_after)


# ---------------------------------------------------------------------- pipeline


class WebhookPipeline:
    """Delivers events with `window_size` long-lived worker tasks, with retries.

    Workers, not a task per event: spawning a task per delivery was a measurable
    share of the loop's time (bench/README.md). Events are handed over through a
    deque that idle workers wait on (one wake-up per event at most, no stream
    machinery); the window decides when the next may go.
    """

    def __init__(self, client: WebhookClient, policy: RetryPolicy, window_size: int,
                 unsaved_limit: int | None = None) -> None:
        self.client = client
        self._policy = policy
        self.window = DeliveryWindow(window_size, unsaved_limit)
        self._active = 0  # events handed over and not yet finished
        self._idle = anyio.Event()
        self._idle.set()
        self._pending: deque[StoredEvent] = deque()
        self._work = anyio.Event()
        self._closed = False

    async def open(self, ctx: SinkContext) -> None:
        return None

    async def serve(self, ctx: SinkContext) -> None:
        async with anyio.create_task_group() as tg:
            for number in range(self.window.size):
                tg.start_soon(self._worker, ctx, name=f"webhook:{ctx.integration.id}:{number}")

    async def tick(self, ctx: SinkContext) -> float | None:
        return None

    def blocked(self) -> bool:
        return self.window.full

    def waits_for_cursor(self) -> bool:
        return self.window.waits_for_cursor

    def safe_cursor(self, read_position: int) -> int:
        return self.window.safe_cursor(read_position)

    def committed(self, cursor: int) -> None:
        self.window.committed(cursor)

    def status(self) -> PipelineStatus:
        return PipelineStatus(in_flight=self.window.in_flight)

    async def release(self) -> None:
        # The ClientSession is the process's; only the hand-over is ours.
        self._closed = True
        self._work.set()

    async def accept(self, events: list[StoredEvent], ctx: SinkContext) -> int:
        window, pending = self.window, self._pending
        for taken, event in enumerate(events):
            if window.full:
                self._work.set()
                if not await ctx.wait_room():
                    return taken
            window.dispatch(event.seq)
            if self._active == 0:
                self._idle = anyio.Event()
            self._active += 1
            pending.append(event)
        self._work.set()
        return len(events)

    async def _worker(self, ctx: SinkContext) -> None:
        while True:
            while not self._pending:
                if self._closed:
                    return
                if self._work.is_set():
                    self._work = anyio.Event()
                await self._work.wait()
            await self._deliver_one(self._pending.popleft(), ctx)

    async def close(self, ctx: SinkContext, outcome: str, grace: float) -> None:
        if outcome == "completed":
            # A temporary integration is done only when every event is finished,
            # however long retries take; a stop request ends that wait.
            async with anyio.create_task_group() as tg:
                async def until_idle() -> None:
                    await self._idle.wait()
                    tg.cancel_scope.cancel()
                tg.start_soon(until_idle)
                await ctx.stopping.wait()
                tg.cancel_scope.cancel()
        with anyio.move_on_after(grace):
            await self._idle.wait()
        self._closed = True  # idle workers end; busy ones end after their event
        self._work.set()
        if self._active:
            log.warning("deliveries still running at stop; abandoning them",
                        extra={"fields": {"integration": ctx.integration.id,
                                          "active": self._active}})

    async def _deliver_one(self, event: StoredEvent, ctx: SinkContext) -> None:
        try:
            await self._deliver(event, ctx)
            self.window.finish(event.seq)
            ctx.progressed()
        except StopDelivery:
            pass
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _deliver(self, event: StoredEvent, ctx: SinkContext) -> None:
        attempts = 0

        async def attempt() -> AttemptResult | Failure:
            nonlocal attempts
            attempts += 1
            result = await self.client.attempt(event.id, event.body)
            if isinstance(result, Failure) or result.outcome == "delivered":
                return result
            try:
                await ctx.set_aside(event, result.cause, status=result.status,
                                    attempts=attempts)
            except StoreFull:
                # Not stored, so not finished: deliver again later (it stays before
                # the cursor) instead of crashing the sink.
                return Failure(f"{result.cause}; but the store is full: the rejection "
                               "cannot be kept yet", result.status)
            return result

        result = await retry_until_stopped(
            ctx, attempt, url=self.client.shown_url,
            payload=lambda: event.body.decode(errors="replace"), policy=self._policy)
        if result is None:
            raise StopDelivery
        if result.outcome == "delivered":
            ctx.stats.record_delivered(event.ingested_at)


# ------------------------------------------------------------------ the sink type


def build(env: SinkEnv, integration: Integration) -> WebhookPipeline:
    webhook = env.config.webhook
    assert isinstance(integration.target, WebhookTarget)
    client = WebhookClient(env.session, integration.target, webhook.timeout,
                           env.config.security.block_targets,
                           signer_for(webhook.signing_secrets))
    return WebhookPipeline(client, RetryPolicy(webhook.retry_initial, webhook.retry_max),
                           webhook.max_in_flight, env.config.delivery.cursor_every)


async def retry_rejected(env: SinkEnv, integration: Integration,
                         entry: RejectedEvent) -> None:
    assert isinstance(integration.target, WebhookTarget)
    client = WebhookClient(env.session, integration.target, env.config.webhook.timeout,
                           env.config.security.block_targets,
                           signer_for(env.config.webhook.signing_secrets))
    result = await client.attempt(entry.event_id, entry.body)
    if isinstance(result, Failure):
        code = f" (HTTP status code {result.status})" if result.status is not None else ""
        raise DeliveryFailed(f"delivery failed: {result.cause}{code}", status=result.status)
    if result.outcome == "rejected":
        raise DeliveryFailed(f"the receiver rejected the event again (HTTP 400): "
                             f"{result.cause}", status=result.status)
    if result.outcome == "unsendable":
        raise DeliveryFailed(f"this event cannot be delivered: {result.cause}",
                             attempted=False)


SINK = SinkType(
    params=WebhookTarget,
    description="one HTTP POST per event to callback_url, bearer api_key, retried with backoff",
    check=check,
    build=build,
    retry_rejected=retry_rejected,
    stop_grace=lambda config: config.webhook.timeout + 1.0,
)
