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
- Per-integration delivery controls (`callback_parameters`):
  `signing_secret` signs this integration's deliveries instead of the global
  secret, and `_rotate_secret` rotates it while it runs (`signing.py`);
  `headers` are sent with every delivery (values are secrets: masked on
  read, never logged); `max_rate` paces its requests (`pacing.py`);
  `ordered` / `ordering_key` hand events out in lanes (`lanes.py`);
  `stop_after_failing` bounds a failure streak (`streak.py`).
- Headers: at most `MAX_HEADERS`, names HTTP tokens, values visible ASCII
  (single spaces inside allowed) of at most `MAX_HEADER_VALUE` characters.
  Names the daemon sets itself are refused, case-insensitively
  (`Authorization`, `Content-Type`, `Content-Length`, `Host`,
  `Idempotency-Key`, `User-Agent`, `webhook-*`, `traceparent`,
  `Eventstreamd-Replay`), and so are those that would change how the
  request is framed or carried (`Connection`, `Transfer-Encoding`, ...).
- The request's headers are built in one place (`RequestHeaders`): fixed ones
  once per pipeline, then per attempt the idempotency key, the signature of
  the secrets signing at that moment and the trace context. A second
  pipeline for the same integration (a replay, `build_replay`) builds its own
  with `Eventstreamd-Replay: <replay id>` as an extra header, so a replayed
  delivery is the original request (body, Idempotency-Key, webhook-id,
  signatures) plus that header. It shares the integration's signing state
  and rate limiter (`SinkEnv`), giving way to live deliveries for the
  limiter's slots, plus a limiter of its own for the replay's `max_rate`
  (`pacing.Pace`). It has its own window and workers, so live deliveries
  never wait behind it, and while live deliveries run it keeps only
  `pacing.BESIDE_LIVE` requests in flight (`LiveActivity`); it takes no part
  in auto-stop (the failure streak is
  the live pipeline's). An ordered integration's replay delivers in sequence
  order within the replay (one at a time, or per ordering key), with lanes
  of its own: live deliveries keep their own order beside it, and a replayed
  event may reach a receiver between two live ones of its key.
- Rotation state (the previous secrets, until when, and a version counting
  every change of the secret) is kept in the record as private fields: never
  shown, never taken from a request. A PATCH that changes the secret ends an
  overlap (use `_rotate_secret` for one); a PATCH that sends the masked
  secret back keeps the secret and its rotation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
import anyio
import yarl

from ..codec import REASON_EXCERPT
from ..config import SIGNING_PREFIX, BlockPolicy, Config, parse_duration, valid_signing_secret
from ..logs import shorten
from ..model import (
    DeliveryControls,
    Integration,
    RejectedEvent,
    Replay,
    StoredEvent,
    TargetParams,
)
from ..naming import valid_event_id
from ..storage.base import StoreFull
from ..timeouts import move_on_after
from ..trace import HEADER as TRACEPARENT
from ..trace import child_traceparent
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
from .lanes import Handout, Lanes, OrderingKey, Unordered
from .pacing import BESIDE_LIVE, LiveActivity, Pace, RateLimiter
from .retry import Failure, RetryPolicy, failure_reason, retry_until_stopped
from .signing import SigningState
from .ssrf import BlockedTarget, check_host
from .streak import FailureStreak
from .window import DeliveryWindow

log = logging.getLogger("eventstreamd.webhook")

RESPONSE_EXCERPT = 1024
MAX_HEADERS = 20
MAX_HEADER_VALUE = 1024
REPLAY_HEADER = "Eventstreamd-Replay"  # set on a replay's deliveries
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VISIBLE = re.compile(r"(?:[!-~](?:[ !-~]*[!-~])?)?")  # visible ASCII, spaces only inside
RESERVED_HEADERS = frozenset({
    # set by the daemon on every delivery
    "authorization", "content-type", "content-length", "host", "idempotency-key",
    "user-agent", TRACEPARENT, REPLAY_HEADER.lower(),
    # would change how the request is framed or carried
    "connection", "transfer-encoding", "keep-alive", "te", "trailer", "upgrade", "expect",
    "proxy-connection", "proxy-authorization",
})
RESERVED_PREFIXES = ("webhook-",)  # Standard Webhooks' signature headers
_ORDERING_KEY = re.compile(r"[^.]+(?:\.[^.]+)*")
MAX_ORDERING_KEY = 256
HOLD_BACK_POLL = 0.01  # seconds between looks of a replay held back for live traffic
# Ordered pipelines hold up to this many times `max_in_flight` events, so lanes other
# than a blocked one find work (bounded by `delivery.cursor_every`, as every window).
ORDERED_LOOKAHEAD = 8


def reserved_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES)


@dataclass(frozen=True)
class WebhookTarget(TargetParams):
    kind: ClassVar[str] = "webhook"
    api_field: ClassVar[str] = "callback_parameters"
    secret_fields: ClassVar[tuple[str, ...]] = ("api_key", "signing_secret")
    api_fields: ClassVar[tuple[str, ...]] = (
        "callback_url", "api_key", "signing_secret", "headers", "max_rate", "ordered",
        "ordering_key", "stop_after_failing")
    private_fields: ClassVar[tuple[str, ...]] = (
        "previous_signing_secrets", "previous_signing_until_ms", "signing_version")

    callback_url: str
    api_key: str | None = None
    signing_secret: str | None = None  # None: the global webhook.signing_secret signs
    headers: tuple[tuple[str, str], ...] = ()
    max_rate: float | None = None  # deliveries per second
    ordered: bool = False
    ordering_key: str | None = None  # a dot path into the payload; only with `ordered`
    stop_after_failing: str | None = None  # a duration; None: webhook.stop_after_failing
    # Private: the rotation in progress, and a count of the secret's changes.
    previous_signing_secrets: tuple[str, ...] = ()
    previous_signing_until_ms: int | None = None
    signing_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"callback_url": self.callback_url}
        for name, value, default in (
                ("api_key", self.api_key, None), ("signing_secret", self.signing_secret, None),
                ("headers", dict(self.headers), {}), ("max_rate", self.max_rate, None),
                ("ordered", self.ordered, False), ("ordering_key", self.ordering_key, None),
                ("stop_after_failing", self.stop_after_failing, None),
                ("previous_signing_secrets", list(self.previous_signing_secrets), []),
                ("previous_signing_until_ms", self.previous_signing_until_ms, None),
                ("signing_version", self.signing_version, 0)):
            if value != default:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookTarget:
        headers = data.get("headers") or {}
        rate = data.get("max_rate")
        return cls(callback_url=data["callback_url"], api_key=data.get("api_key"),
                   signing_secret=data.get("signing_secret"),
                   headers=tuple((str(k), str(v)) for k, v in headers.items()),
                   max_rate=float(rate) if rate is not None else None,
                   ordered=bool(data.get("ordered", False)),
                   ordering_key=data.get("ordering_key"),
                   stop_after_failing=data.get("stop_after_failing"),
                   previous_signing_secrets=tuple(data.get("previous_signing_secrets") or ()),
                   previous_signing_until_ms=data.get("previous_signing_until_ms"),
                   signing_version=int(data.get("signing_version") or 0))

    def secrets(self) -> list[str]:
        found = [s for s in (self.api_key, self.signing_secret) if s]
        found += self.previous_signing_secrets
        # A Standard Webhooks secret is also known by its key part alone.
        found += [s.removeprefix(SIGNING_PREFIX) for s in found
                  if s.startswith(SIGNING_PREFIX)]
        return found + [value for _, value in self.headers if value]

    def shown(self, mask: Callable[[str], str]) -> dict[str, Any]:
        shown = super().shown(mask)
        if self.headers:
            shown["headers"] = {name: mask(value) for name, value in self.headers}
        return shown

    def keeping_secrets(self, current: TargetParams,
                        mask: Callable[[str], str]) -> TargetParams:
        """Secrets sent back masked keep the stored ones: the api_key, the signing secret
        (and then its rotation), each header's value (matched by name)."""
        if not isinstance(current, WebhookTarget):
            return self
        kept = super().keeping_secrets(current, mask)
        assert isinstance(kept, WebhookTarget)
        stored = {name.lower(): value for name, value in current.headers}
        headers = tuple(
            (name, stored[name.lower()]
             if name.lower() in stored and value == mask(stored[name.lower()]) else value)
            for name, value in kept.headers)
        if kept.signing_secret == current.signing_secret:
            return dataclasses.replace(
                kept, headers=headers,
                previous_signing_secrets=current.previous_signing_secrets,
                previous_signing_until_ms=current.previous_signing_until_ms,
                signing_version=current.signing_version)
        # A new secret (or none): the old one stops signing at once.
        return dataclasses.replace(kept, headers=headers, previous_signing_secrets=(),
                                   previous_signing_until_ms=None,
                                   signing_version=current.signing_version + 1)

    def sink_settings(self) -> object:
        # The running sink reads the secrets from its SigningState, updated live.
        return dataclasses.replace(self, signing_secret=None, previous_signing_secrets=(),
                                   previous_signing_until_ms=None, signing_version=0)

    def controls(self) -> DeliveryControls:
        ordering = None
        if self.ordered:
            ordering = f"key {self.ordering_key}" if self.ordering_key else "strict"
        return DeliveryControls(max_rate=self.max_rate, ordering=ordering)

    def settled(self, now_ms: int) -> WebhookTarget:
        """Without the previous secrets once their overlap has ended."""
        if self.previous_signing_secrets and (self.previous_signing_until_ms or 0) <= now_ms:
            return dataclasses.replace(self, previous_signing_secrets=(),
                                       previous_signing_until_ms=None)
        return self

    def settles_at_ms(self) -> int | None:
        return self.previous_signing_until_ms if self.previous_signing_secrets else None

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
    _check_controls(params)


def _check_controls(params: WebhookTarget) -> None:
    """The per-integration delivery controls (the spec's extension fields)."""
    where = WebhookTarget.api_field
    if params.signing_secret is not None and not valid_signing_secret(params.signing_secret):
        raise TargetRefused("invalid_signing_secret",
                            f"'{where}.signing_secret' must be \"whsec_\" followed by the "
                            "base64 of 24 to 64 random bytes")
    _check_headers(params.headers)
    if params.max_rate is not None and not params.max_rate > 0:
        raise TargetRefused("invalid_max_rate", f"'{where}.max_rate' must be more than 0")
    if params.ordering_key is not None:
        if not params.ordered:
            raise TargetRefused("ordering_key_without_ordered",
                                f"'{where}.ordering_key' needs '{where}.ordered': true")
        if (len(params.ordering_key) > MAX_ORDERING_KEY
                or not _ORDERING_KEY.fullmatch(params.ordering_key)):
            raise TargetRefused("invalid_ordering_key",
                                f"'{where}.ordering_key' must be a dot path into the payload "
                                f"such as order_id or customer.id (at most {MAX_ORDERING_KEY} "
                                "characters, no empty step)")
    if params.stop_after_failing is not None:
        try:
            parse_duration(params.stop_after_failing)
        except ValueError as exc:
            raise TargetRefused("invalid_stop_after_failing",
                                f"'{where}.stop_after_failing': {exc}") from None


def _check_headers(headers: tuple[tuple[str, str], ...]) -> None:
    where = f"{WebhookTarget.api_field}.headers"
    if len(headers) > MAX_HEADERS:
        raise TargetRefused("invalid_headers", f"'{where}' may hold at most {MAX_HEADERS} "
                                               "headers")
    seen: set[str] = set()
    for name, value in headers:
        shown = shorten(name, 64) if name.isprintable() and name.isascii() else repr(name)[:64]
        if not _TOKEN.fullmatch(name):
            raise TargetRefused("invalid_headers",
                                f"'{where}': {shown} is not an HTTP header name (letters, "
                                "digits and !#$%&'*+-.^_`|~)")
        if reserved_header(name):
            raise TargetRefused("reserved_header",
                                f"'{where}': {shown} is set by the daemon itself and cannot be "
                                "given (Authorization, Content-Type, Content-Length, Host, "
                                "Idempotency-Key, User-Agent, webhook-*, traceparent, "
                                f"{REPLAY_HEADER}, and headers that frame the request)")
        if name.lower() in seen:
            raise TargetRefused("invalid_headers", f"'{where}': {shown} is given twice")
        seen.add(name.lower())
        # The value is a secret: never echoed.
        if len(value) > MAX_HEADER_VALUE or not _VISIBLE.fullmatch(value):
            raise TargetRefused("invalid_headers",
                                f"'{where}.{shown}' must be visible ASCII (spaces only "
                                f"inside), at most {MAX_HEADER_VALUE} characters")


# ---------------------------------------------------------------------- attempts


@dataclass(frozen=True)
class AttemptResult:
    # "unsendable": the event can never be sent from our side (its id is no valid
    # header value); like a 400 it is set aside, since retrying cannot change it.
    outcome: Literal["delivered", "rejected", "unsendable"]
    cause: str
    status: int | None = None


class RequestHeaders:
    """The headers of one integration's deliveries (see the module docstring)."""

    def __init__(self, target: WebhookTarget, signing: SigningState | None = None,
                 extra: Mapping[str, str] | None = None) -> None:
        fixed = {"Content-Type": "application/json", **dict(target.headers), **(extra or {})}
        if target.api_key:
            fixed["Authorization"] = f"Bearer {target.api_key}"
        self._fixed = fixed
        self._signing = signing

    def __call__(self, event_id: str, body: bytes, trace: bytes | None = None
                 ) -> dict[str, str]:
        headers = {**self._fixed, "Idempotency-Key": event_id}
        signer = self._signing.signer() if self._signing is not None else None
        if signer is not None:
            headers.update(signer.headers(event_id, body))
        if trace:
            headers[TRACEPARENT] = child_traceparent(trace)
        return headers


def signing_secrets(target: WebhookTarget, config: Config) -> tuple[str, ...]:
    """What signs the integration's deliveries now: its own secret, else the global ones."""
    return (target.signing_secret,) if target.signing_secret else config.webhook.signing_secrets


def signing_state(target: WebhookTarget, config: Config,
                  state: SigningState | None = None) -> SigningState:
    """`state` (a new one when None) updated to what the record says."""
    state = state if state is not None else SigningState()
    state.update(signing_secrets(target, config), target.previous_signing_secrets,
                 target.previous_signing_until_ms, target.signing_version)
    return state


class WebhookClient:
    """Sends one event to one integration's URL and classifies the outcome."""

    def __init__(self, session: aiohttp.ClientSession, target: WebhookTarget,
                 timeout: float, block_policy: BlockPolicy = "none",
                 headers: RequestHeaders | None = None) -> None:
        self._session = session
        self._headers = headers if headers is not None else RequestHeaders(target)
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

    async def attempt(self, event_id: str, body: bytes,
                      trace: bytes | None = None) -> AttemptResult | Failure:
        if self._blocked is not None:
            return Failure(self._blocked)
        if not valid_event_id(event_id):
            return AttemptResult("unsendable", "its id cannot be sent as the Idempotency-Key "
                                               "header (visible ASCII only)")
        headers = self._headers(event_id, body, trace)
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
    `Handout` (a FIFO, or ordered lanes: `lanes.py`) that idle workers wait on
    (one wake-up per event at most, no stream machinery); the window decides when
    the next may be taken in. Every attempt first takes a slot of the
    integration's rate limiter, when it has one; every answer feeds the failure
    streak, which gives up (auto-stop) when it lasts too long.
    """

    def __init__(self, client: WebhookClient, policy: RetryPolicy, window_size: int,
                 unsaved_limit: int | None = None, *, handout: Handout | None = None,
                 pace: Pace | None = None, streak: FailureStreak | None = None,
                 live: LiveActivity | None = None, beside: LiveActivity | None = None,
                 ) -> None:
        self.client = client
        self._policy = policy
        hold = window_size * ORDERED_LOOKAHEAD if handout is not None else window_size
        self.window = DeliveryWindow(window_size, unsaved_limit, hold_limit=hold)
        self._handout: Handout = handout if handout is not None else Unordered()
        self._pace = pace
        self._live = live  # the live pipeline notes its attempts here ...
        self._beside = beside  # ... which a replay's holds back for
        self._streak = streak
        self._active = 0  # events handed over and not yet finished
        self._idle = anyio.Event()
        self._idle.set()
        self._busy = 0  # events being delivered (requests, retries) now
        self._quiet = anyio.Event()
        self._quiet.set()
        self._work = anyio.Event()
        self._draining = False  # stopping: no worker takes another event
        self._closed = False

    async def open(self, ctx: SinkContext) -> None:
        if self._streak is not None:
            self._streak.load(await ctx.load_state(), ctx.integration.id)

    async def serve(self, ctx: SinkContext) -> None:
        async with anyio.create_task_group() as tg:
            for number in range(self.window.size):
                tg.start_soon(self._worker, ctx, name=f"webhook:{ctx.integration.id}:{number}")
            if self._streak is not None:
                tg.start_soon(self._streak.keep_saved, ctx,
                              name=f"webhook-streak:{ctx.integration.id}")

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
        return PipelineStatus(in_flight=self._busy)

    async def release(self) -> None:
        # The ClientSession is the process's; only the hand-over is ours.
        self._closed = True
        self._work.set()

    async def accept(self, events: list[StoredEvent], ctx: SinkContext) -> int:
        window, handout = self.window, self._handout
        for taken, event in enumerate(events):
            if window.full:
                self._work.set()
                if not await ctx.wait_room():
                    return taken
            window.dispatch(event.seq)
            if self._active == 0:
                self._idle = anyio.Event()
            self._active += 1
            handout.add(event)
        self._work.set()
        return len(events)

    async def _worker(self, ctx: SinkContext) -> None:
        handout = self._handout
        while True:
            event = None
            while event is None:
                if self._closed or self._draining:
                    return
                if self._held_back():
                    if await ctx.sleep_unless_stopping(HOLD_BACK_POLL):
                        return
                    continue
                # Taken only when it may go at once (no wait between the check and the
                # take): events are taken, and so paced, in the order they were handed out.
                event = handout.take()
                if event is None:
                    if self._work.is_set():
                        self._work = anyio.Event()
                    await self._work.wait()
            if self._busy == 0:
                self._quiet = anyio.Event()
            self._busy += 1
            try:
                await self._deliver_one(event, ctx)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._quiet.set()

    def _held_back(self) -> bool:
        """A replay's worker takes no event while the integration's live deliveries run and
        `BESIDE_LIVE` of the replay's requests are in flight."""
        beside = self._beside
        return beside is not None and self._busy >= BESIDE_LIVE and beside.running()

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
        # Nothing new goes out; what is under way may finish within the grace period.
        self._draining = True
        self._work.set()
        with move_on_after(grace):
            await self._quiet.wait()
        self._closed = True  # idle workers end; busy ones end after their event
        self._work.set()
        if self._busy:
            log.warning("deliveries still running at stop; abandoning them",
                        extra={"fields": {"integration": ctx.integration.id,
                                          "active": self._busy}})
        if self._streak is not None:
            await self._streak.flush(ctx)

    async def _deliver_one(self, event: StoredEvent, ctx: SinkContext) -> None:
        try:
            await self._deliver(event, ctx)
            self.window.finish(event.seq)
            # Its lane's next event may go now: this worker takes it (or another) next,
            # so no other worker needs waking.
            self._handout.done(event)
            ctx.progressed()
        except StopDelivery:
            pass
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _deliver(self, event: StoredEvent, ctx: SinkContext) -> None:
        attempts = 0
        streak = self._streak

        async def attempt() -> AttemptResult | Failure:
            nonlocal attempts
            attempts += 1
            if self._live is not None:
                self._live.note()
            result = await self.client.attempt(event.id, event.body, event.trace)
            if isinstance(result, Failure):
                if streak is not None and streak.failed():
                    ctx.give_up(self._gave_up(streak, result, event))
                return result
            if streak is not None and result.outcome != "unsendable":
                streak.succeeded()  # the receiver answered
            if result.outcome == "delivered":
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

        pace = self._pace
        result = await retry_until_stopped(
            ctx, attempt, url=self.client.shown_url,
            payload=lambda: event.body.decode(errors="replace"), policy=self._policy,
            pace=(lambda: pace.wait(ctx.sleep_unless_stopping)) if pace is not None else None)
        if result is None:
            raise StopDelivery
        if result.outcome == "delivered":
            ctx.stats.record_delivered(event.ingested_at)

    def _gave_up(self, streak: FailureStreak, failure: Failure, event: StoredEvent) -> str:
        last = failure_reason(self.client.shown_url, failure,
                              event.body.decode(errors="replace"))
        return (f"Every delivery attempt failed for {streak.describe()}; stopped "
                f"automatically, its cursor kept (_start delivers everything it missed). "
                f"Last error: {last}")


# ------------------------------------------------------------------ the sink type


def _stop_after(target: WebhookTarget, config: Config) -> float:
    if target.stop_after_failing is not None:
        return parse_duration(target.stop_after_failing)
    return config.webhook.stop_after_failing


def build(env: SinkEnv, integration: Integration) -> WebhookPipeline:
    target = integration.target
    assert isinstance(target, WebhookTarget)
    limiter = env.rates.get(integration.id, integration.incarnation)
    limiter.configure(target.max_rate)
    return _pipeline(env, integration, Pace(limiter) if target.max_rate else None,
                     FailureStreak(_stop_after(target, env.config), integration.started_at_ms),
                     live=env.live.get(integration.id, integration.incarnation))


def build_replay(env: SinkEnv, integration: Integration, replay: Replay) -> WebhookPipeline:
    """A replay's pipeline (see the module docstring): the same requests plus
    `Eventstreamd-Replay`, its own workers, the integration's rate shared (giving way to
    live deliveries) and the replay's own on top."""
    target = integration.target
    assert isinstance(target, WebhookTarget)
    shared = env.rates.get(integration.id, integration.incarnation)
    shared.configure(target.max_rate)
    own = None
    if replay.max_rate:
        own = RateLimiter()
        own.configure(replay.max_rate)
    pace = Pace(shared if target.max_rate else None, gives_way=True, own=own,
                loop=env.loop_share)
    return _pipeline(env, integration, pace, None, extra={REPLAY_HEADER: replay.id},
                     beside=env.live.get(integration.id, integration.incarnation))


def _pipeline(env: SinkEnv, integration: Integration, pace: Pace | None,
              streak: FailureStreak | None, extra: Mapping[str, str] | None = None,
              live: LiveActivity | None = None, beside: LiveActivity | None = None,
              ) -> WebhookPipeline:
    webhook = env.config.webhook
    target = integration.target
    assert isinstance(target, WebhookTarget)
    signing = signing_state(target, env.config,
                            env.signing.get(integration.id, integration.incarnation))
    handout = None
    if target.ordered:
        handout = Lanes(OrderingKey(target.ordering_key) if target.ordering_key else None)
    client = WebhookClient(env.session, target, webhook.timeout,
                           env.config.security.block_targets,
                           RequestHeaders(target, signing, extra))
    # Strict order sends one request at a time: one worker is all it can use.
    workers = 1 if target.ordered and not target.ordering_key else webhook.max_in_flight
    return WebhookPipeline(client, RetryPolicy(webhook.retry_initial, webhook.retry_max),
                           workers, env.config.delivery.cursor_every,
                           handout=handout, pace=pace, streak=streak, live=live,
                           beside=beside)


def refresh(env: SinkEnv, integration: Integration) -> None:
    """A running sink's record changed without a restart: take the signing secrets."""
    target = integration.target
    assert isinstance(target, WebhookTarget)
    state = env.signing.peek(integration.id, integration.incarnation)
    if state is not None:
        signing_state(target, env.config, state)


def rotate_secret(params: TargetParams, secret: str, now_ms: int,
                  config: Config) -> WebhookTarget:
    """Sign with `secret` from now on; what signed until now signs too for
    `webhook.rotation_overlap` (a second rotation within it replaces that previous
    secret with the one it rotates away from)."""
    assert isinstance(params, WebhookTarget)
    overlap_ms = int(config.webhook.rotation_overlap * 1000)
    previous = tuple(s for s in signing_secrets(params, config) if s != secret) \
        if overlap_ms > 0 else ()
    return dataclasses.replace(
        params, signing_secret=secret, previous_signing_secrets=previous,
        previous_signing_until_ms=now_ms + overlap_ms if previous else None,
        signing_version=params.signing_version + 1)


async def retry_rejected(env: SinkEnv, integration: Integration,
                         entry: RejectedEvent) -> None:
    target = integration.target
    assert isinstance(target, WebhookTarget)
    client = WebhookClient(env.session, target, env.config.webhook.timeout,
                           env.config.security.block_targets,
                           RequestHeaders(target, signing_state(target, env.config)))
    result = await client.attempt(entry.event_id, entry.body, entry.trace)
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
    build_replay=build_replay,
    retry_rejected=retry_rejected,
    stop_grace=lambda config: config.webhook.timeout + 1.0,
    refresh=refresh,
    rotate_secret=rotate_secret,
)
