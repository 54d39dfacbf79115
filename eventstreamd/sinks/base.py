"""What a sink type is made of: the pipeline protocol, the narrow context a pipeline gets,
the shared resources, and the registry entry (`SinkType`).

Decisions:
- A pipeline sees a `SinkContext`, not the sink loop: the stop signal, its
  counters, "record a failure", "add a log entry", "set an event aside",
  "save my state" (each write fenced by the integration's incarnation) and
  "read the log" (the S3 pipeline rebuilds recorded files from it).
- Long-lived work of a pipeline (the webhook's workers) runs in `serve()`,
  which the loop starts in its own task group and cancels at the end; the
  pipeline never receives a task group.
- `SinkType` is everything the daemon needs to know of a kind of sink:
  its parameters type (`TargetParams`: API field, secret fields, how it
  shows), a one-line description, the registration check, the pipeline
  builder, the rejected-event retry and the stop grace; optionally how it
  rotates a signing secret and how a running sink takes a changed record
  that needs no restart (`refresh`), and how it replays part of the log
  (`build_replay`: a pipeline of the replay's own; `replay_ended` frees
  what a finished replay left). `registry.py` lists them (README "Layout"
  says what else names a sink type).
- A pipeline may give up (`SinkContext.give_up`): its deliveries have failed
  for longer than the integration allows. The loop then ends with the
  outcome `gave_up`, and the supervisor asks the integration service (the
  one writer of records) to stop the integration; the sink never writes the
  record itself.
- `SinkEnv` also holds what belongs to an integration rather than to one
  run of its sink, shared by every pipeline that delivers for it (a replay
  beside the live one) and surviving a sink restart: its rate limiter, its
  signing secrets and when its live deliveries last ran, each keyed by
  integration id and incarnation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
import anyio

from ..config import Config
from ..histogram import Histogram
from ..model import Integration, RejectedEvent, Replay, StoredEvent, TargetParams
from .pacing import LiveActivity, LoopShare, RateLimiter
from .per_integration import PerIntegration
from .signing import SigningState

# "gave_up": the pipeline gave up (SinkContext.give_up); the integration is to be stopped.
Outcome = Literal["stopped", "completed", "gave_up"]
Clock = Callable[[], float]


class StopDelivery(Exception):
    """The sink is stopping; the event was not finished and stays after the cursor."""


class DeliveryFailed(Exception):
    """A delivery attempt (a rejected event's retry) did not succeed; `str()` says why,
    without secrets. `attempted` is False when nothing was sent (the event cannot be);
    `status` is the receiver's HTTP status when one answered."""

    def __init__(self, reason: str, *, status: int | None = None,
                 attempted: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.attempted = attempted


class TargetRefused(ValueError):
    """Registration parameters no delivery could ever succeed with."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


# Upper bounds (seconds) of the delivery latency histogram's buckets; +Inf follows.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)


@dataclass
class SinkStats:
    """Counters of one integration's sink; they outlive each run of its loop, so a
    crash-looping sink shows its failures. Status and /metrics read them where the
    sink counts, so neither keeps a copy that could drift.

    The latency histogram: ingest to delivered; an S3 file's events from when the file
    was opened."""

    delivered: int = 0
    rejected: int = 0
    failures: int = 0
    cursor_resets: int = 0  # cursors found past the log's head (a replaced or restored log)
    last_error: str | None = None
    last_error_at: float | None = None
    last_cause: str | None = None  # the last failure in a few words (the dashboard's column)
    started_at: float = field(default_factory=time.time)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def record_failure(self, reason: str, at: float, cause: str | None = None) -> None:
        self.failures += 1
        self.last_error = reason
        self.last_error_at = at
        self.last_cause = cause or reason

    def record_delivered(self, since_ms: int | None, count: int = 1) -> None:
        """`count` events delivered; `since_ms` (epoch ms) is when they were ingested."""
        self.delivered += count
        if since_ms is not None:
            self.latency.observe(max(0.0, time.time() - since_ms / 1000), count)


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """Live figures a pipeline reports; `None` where they do not apply."""

    in_flight: int | None = None  # requests under way
    buffered_bytes: int | None = None  # held before going out (an S3 sink's open files)
    buffered_since: float | None = None  # wall clock of the oldest buffered byte
    pending_uploads: int | None = None
    uploads: int | None = None


class LeaseHold(Protocol):
    """An integration's lease as its sink sees it (several daemons on one JetStream): the
    claim its fenced writes name, and whether its holder may still act on it by its own
    clock (daemon/ownership.py)."""

    @property
    def seq(self) -> int: ...

    def valid(self) -> bool: ...


class SinkContext(Protocol):
    """What a pipeline may do besides delivering."""

    @property
    def integration(self) -> Integration: ...

    @property
    def stopping(self) -> anyio.Event: ...

    @property
    def stats(self) -> SinkStats: ...

    def clock(self) -> float: ...

    def record_failure(self, reason: str, cause: str | None = None) -> None: ...

    def progressed(self) -> None:
        """The safe cursor may have moved: wake the loop and the cursor flusher."""
        ...

    async def wait_progress(self) -> None: ...

    async def wait_room(self) -> bool:
        """Wait while the pipeline is blocked (asking for a durable cursor meanwhile);
        False when the sink is stopping, or when it stayed blocked so long that the loop
        takes back the rest of the batch (`accept` then returns how many it took, and
        the rest comes again later)."""
        ...

    async def sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep up to `delay`; True when the sink is stopping."""
        ...

    def may_deliver(self) -> bool:
        """Asked right before every delivery attempt: False (and the sink stops) when the
        integration's lease is no longer this daemon's to act on; always True without."""
        ...

    def give_up(self, reason: str) -> None:
        """Stop the sink, and have the integration stopped (status `stopped`, a log entry
        `auto_stopped` with `reason`); its cursor stays where it is."""
        ...

    async def add_log(self, action: str, reason: str) -> None: ...

    async def set_aside(self, event: StoredEvent, reason: str, *, status: int | None = None,
                        deliverable: bool = True, attempts: int | None = None) -> None:
        """Keep `event` as a rejected event; raises StoreFull when it cannot be kept."""
        ...

    async def save_state(self, state: dict[str, object]) -> bool:
        """The pipeline's durable bookkeeping; False when the integration is gone."""
        ...

    async def load_state(self) -> dict[str, object] | None: ...

    async def read_events(self, from_seq: int, limit: int, max_bytes: int) -> list[StoredEvent]:
        ...


class Pipeline(Protocol):
    async def open(self, ctx: SinkContext) -> None:
        """Before the first event (the S3 pipeline re-uploads recorded files here)."""

    async def serve(self, ctx: SinkContext) -> None:
        """Long-lived work for the pipeline's lifetime; cancelled when the loop ends."""

    async def accept(self, events: list[StoredEvent], ctx: SinkContext) -> int:
        """Take a batch of matching events, in sequence order; how many were taken (fewer
        than all only when `ctx.wait_room()` said no: stopping, or the loop taking the
        rest back). Called per batch, not per event: per-event work belongs in the
        pipeline's own tight loop."""

    async def tick(self, ctx: SinkContext) -> float | None:
        """Called between batches, and when the time it last returned has come: time-based
        work such as file rotation. Returns when (by `ctx.clock()`) it next needs a tick
        even if no event arrives, or None when only new events can give it work: an idle
        sink then sleeps until an event its filter matches is appended. While `blocked()`
        the loop waits for progress (`ctx.progressed()`) or that time, so a pipeline that
        unblocks by time alone must return when."""

    def blocked(self) -> bool:
        """True while the pipeline cannot take another event (the loop waits for progress)."""

    def waits_for_cursor(self) -> bool:
        """True while it is blocked until a durable cursor write releases events: the loop
        then saves the cursor at once instead of at the next interval. Not merely blocked:
        a pipeline at its concurrency limit is freed by answers, and saving the cursor
        each time would put an fsync behind every delivery."""

    def safe_cursor(self, read_position: int) -> int:
        """The lowest sequence number not yet finished for good."""

    def committed(self, cursor: int) -> None:
        """A cursor write of `cursor` is durable."""

    async def close(self, ctx: SinkContext, outcome: Outcome, grace: float) -> None:
        """Finish what can be finished within `grace` seconds."""

    async def release(self) -> None:
        """Free resources (clients, files); safe to call after close() and after a crash."""

    def status(self) -> PipelineStatus: ...


@dataclass(frozen=True)
class SinkEnv:
    """Resources every sink of the process shares, built once by the daemon."""

    config: Config
    session: aiohttp.ClientSession  # keep-alive HTTP for every webhook sink and retry
    spool_root: Path  # where sinks that spool keep their files, one directory each
    # Per integration, shared by every pipeline delivering for it (live and replay):
    rates: PerIntegration[RateLimiter] = field(
        default_factory=lambda: PerIntegration(RateLimiter))
    signing: PerIntegration[SigningState] = field(
        default_factory=lambda: PerIntegration(SigningState))
    live: PerIntegration[LiveActivity] = field(init=False)
    # The daemon's: how fast replays may send while live traffic runs anywhere.
    loop_share: LoopShare = field(default_factory=LoopShare)

    def __post_init__(self) -> None:
        # An integration's live activity counts as the daemon's too.
        share = self.loop_share
        object.__setattr__(self, "live", PerIntegration(
            lambda: LiveActivity(also=share.live)))

    def forget(self, integration_id: str) -> None:
        """The integration is gone: drop what was kept for it."""
        self.rates.forget(integration_id)
        self.signing.forget(integration_id)
        self.live.forget(integration_id)


def _nothing_to_refresh(env: SinkEnv, integration: Integration) -> None:
    return None


def _nothing_left(env: SinkEnv, integration_id: str, replay_id: str) -> None:
    return None


@dataclass(frozen=True)
class SinkType:
    params: type[TargetParams]
    description: str  # one line, for help texts and `eventstreamd integrations`
    check: Callable[[TargetParams, Config], None]  # raises TargetRefused
    build: Callable[[SinkEnv, Integration], Pipeline]
    retry_rejected: Callable[[SinkEnv, Integration, RejectedEvent], Awaitable[None]]
    stop_grace: Callable[[Config], float]  # seconds a stopping sink may take to finish
    # How much older than usual its oldest undelivered event may be before status calls
    # it lagging: a sink that holds events by design (S3's open file) is not late.
    lag_allowance: Callable[[Config], float] = lambda config: 0.0
    # The integration's record changed without changing its sink settings
    # (`TargetParams.sink_settings`): the running sink takes what changed (a rotated
    # signing secret) from the env's per-integration state instead of restarting.
    refresh: Callable[[SinkEnv, Integration], None] = _nothing_to_refresh
    # `POST .../_rotate_secret`: the parameters signing with `secret` from `now_ms` on
    # (the previous secret signing too for `webhook.rotation_overlap`); None for a sink
    # type that signs nothing.
    rotate_secret: Callable[[TargetParams, str, int, Config], TargetParams] | None = None
    # A replay's pipeline: the integration's target, delivering the replay's range beside
    # the live pipeline (sinks/replay.py); None for a sink type that cannot replay.
    build_replay: Callable[[SinkEnv, Integration, Replay], Pipeline] | None = None
    # A replay completed or was cancelled: free what it keeps outside the store.
    replay_ended: Callable[[SinkEnv, str, str], None] = _nothing_left

    @property
    def kind(self) -> str:
        return self.params.kind
