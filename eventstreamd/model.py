"""The domain: events, integrations, log entries and rejected events, as typed values.

Decisions:
- Everything here is plain data with no I/O, imported by every layer
  (storage, sinks, daemon); nothing here imports them.
- An event carries its *delivery body* — the exact JSON bytes
  `{"tenant","name","published_at","payload"}` that a webhook POSTs and an S3
  line holds — beside a small header (id, tenant, name, ingest time) that
  filters, keys and retention read. Ingest encodes the body once; no sink
  ever decodes or re-encodes a payload.
- `Integration` is frozen; a change is a new value (`dataclasses.replace`).
  Its `target` is the sink's own parameters type (`TargetParams`), which the
  sink's module defines; the sink registry (`sinks/registry.py`) lists them,
  and whoever decodes a target is handed that registry (`codec.py`, which
  also says how an integration is written to the store or shown by the API).
- `Fence` names the integration *and* the incarnation (and, with several
  daemons, the lease) a write belongs to: every write a sink makes carries
  one, and the store refuses a write whose fence no longer holds, so a sink
  finishing for a deleted (or re-created, or re-owned) integration writes
  nothing into its successor.
- A `Replay` (part of the log delivered again beside the live traffic) is
  kept in its integration's record: created, cancelled and completed by
  transitions of the record, so the per-integration limit is checked in the
  same atomic step, every daemon sees it where it sees the record, and a
  deleted integration takes its replays with it. Its progress (cursor and
  count, `ReplayProgress`) is written often and fenced, apart from the record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

IntegrationType = Literal["permanent", "temporary"]
Status = Literal["running", "stopped"]
# As stored: "running" until it ends. Shown "paused" while its integration is stopped.
ReplayStatus = Literal["running", "completed", "cancelled"]


# ------------------------------------------------------------------- events


@dataclass(slots=True)  # not frozen: ingest makes one per event, and a frozen init costs more
class NewEvent:
    """An event validated by ingest, waiting for its sequence number."""

    id: str
    tenant: str
    name: str
    body: bytes  # the delivery JSON
    # The W3C trace context of the request that published it (`trace.py`), or None.
    trace: bytes | None = None


@dataclass(slots=True)  # not frozen: a frozen init costs ~2 µs per event on every sink's path
class StoredEvent:
    seq: int
    id: str
    tenant: str
    name: str
    ingested_at: int  # ms since the epoch, stamped by the store at commit
    body: bytes  # the delivery JSON, exactly as ingest encoded it
    # Why no sink can send it, for an event an older version stored that today's
    # ingest would refuse (found when the log was migrated); None for every other.
    problem: str | None = None
    trace: bytes | None = None  # the publishing request's trace context (`trace.py`)

    @property
    def entity(self) -> str:
        return self.name.split(".", 1)[0]


# ------------------------------------------------------------- integrations


class UnknownTargetKind(LookupError):
    """A stored or submitted target of a kind no registered sink type knows."""


class TargetParams:
    """Base of every sink type's parameters (a frozen dataclass in the sink's module).

    `api_field` is the key the configuration API and the store use for it
    (`callback_parameters`, `s3_parameters`), `secret_fields` the fields that are
    masked in every view and registered with the log redactor. The sink registry
    (`sinks/registry.py`) lists every parameters type by its `kind`.
    """

    kind: ClassVar[str]
    api_field: ClassVar[str]
    secret_fields: ClassVar[tuple[str, ...]] = ()
    api_fields: ClassVar[tuple[str, ...]] = ()  # the API's field names, in display order
    # Kept in the store, never shown by the API nor taken from a request (a signing
    # secret's rotation state).
    private_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The parameters as the store spells them (secrets in clear, private fields too);
        the API's spelling of every field but the private ones."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetParams:
        raise NotImplementedError

    def describe(self) -> str:
        """Where it delivers, one line, safe to show (no secrets, no userinfo)."""
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Every secret value it holds, for the log redactor."""
        values = self.to_dict()
        return [values[name] for name in self.secret_fields if values.get(name)]

    def shown(self, mask: Callable[[str], str]) -> dict[str, Any]:
        """The API's view: secrets masked with `mask`, private fields left out."""
        shown = self.to_dict()
        for name in self.private_fields:
            shown.pop(name, None)
        for name in self.secret_fields:
            if shown.get(name) is not None:
                shown[name] = mask(shown[name])
        return shown

    def keeping_secrets(self, current: TargetParams,
                        mask: Callable[[str], str]) -> TargetParams:
        """These parameters (from a PATCH) with every secret that was sent back exactly as
        the API showed it (masked) replaced by the stored one in `current`."""
        if type(current) is not type(self):
            return self
        stored, sent = current.to_dict(), self.to_dict()
        kept = {name: stored[name] for name in self.secret_fields
                if stored.get(name) and sent.get(name) is not None
                and sent[name] == mask(stored[name])}
        return type(self).from_dict({**sent, **kept}) if kept else self

    def sink_settings(self) -> object:
        """What a running sink is built from: a change restarts it. Parameters a running
        sink reads live (a rotated signing secret) are left out."""
        return self

    def controls(self) -> DeliveryControls:
        """Its delivery controls worth showing in the status (no secrets)."""
        return DeliveryControls()

    def settled(self, now_ms: int) -> TargetParams:
        """Without state that has expired by `now_ms` (a rotation's previous secret), or
        itself when nothing has: the janitor writes the record when this differs."""
        return self

    def settles_at_ms(self) -> int | None:
        """When `settled` will next drop something (ms), or None."""
        return None


@dataclass(frozen=True, slots=True)
class DeliveryControls:
    """How an integration paces and orders its deliveries, for the status and dashboard."""

    max_rate: float | None = None  # deliveries per second, when limited
    ordering: str | None = None  # "strict", or "key <path>" for per-key lanes; None: unordered


@dataclass(frozen=True, slots=True)
class EventFilterSpec:
    """`filter_conditions`: an event passes when its name is in `event_filter` OR its
    entity in `entity_filter`; `None` for a list means "not given"."""

    event_filter: tuple[str, ...] | None = None
    entity_filter: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """A part of the log delivered again to an integration: the events ingested from
    `starts_at` to `ends_at` (fixed at creation as the sequence range `start_seq` ..
    `end_seq - 1`) that pass `filter`, `events` of them."""

    id: str  # a subject token and S3 key segment (hex)
    starts_at: str  # RFC 3339, as asked
    ends_at: str
    start_seq: int
    end_seq: int  # exclusive
    events: int  # how many events of the range pass the filter
    created_at: str
    filter: EventFilterSpec | None = None  # the replay's own, or its integration's
    max_rate: float | None = None  # deliveries per second, on top of the integration's
    status: ReplayStatus = "running"
    finished_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a replay got, written with its cursor: `cursor` is the next seq to read;
    `delivered` counts the events of its range before it that were finished (delivered,
    or rejected by the receiver and kept as rejected events)."""

    cursor: int
    delivered: int


@dataclass(frozen=True, slots=True)
class Integration:
    id: str
    type: IntegrationType
    status: Status
    target: TargetParams
    incarnation: str  # random, new for every registration
    created_at: str  # RFC 3339
    starts_at: str | None = None
    ends_at: str | None = None
    filter: EventFilterSpec | None = None
    stopped_at_ms: int | None = None  # the last stop; `_start` applies the restart window with it
    done: bool = False  # a temporary integration that delivered its whole range
    started_at_ms: int | None = None  # created or last `_start`ed (a failure streak's floor)
    # Why the daemon stopped it by itself (deliveries failed for `stop_after_failing`):
    # the last error. None unless the last stop was automatic; `_start` clears it.
    auto_stop: str | None = None
    replays: tuple[Replay, ...] = ()  # oldest first; finished ones are kept a while

    def replay(self, replay_id: str) -> Replay | None:
        return next((r for r in self.replays if r.id == replay_id), None)

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def running(self) -> bool:
        return self.status == "running" and not self.done

    def fence(self, lease: int | None = None) -> Fence:
        return Fence(self.id, self.incarnation, lease)

    def delivery_settings(self) -> tuple[Any, ...]:
        """What a running sink was built from: a change here restarts it."""
        return (self.incarnation, self.type, self.starts_at, self.ends_at, self.filter,
                self.target.sink_settings())


@dataclass(frozen=True, slots=True)
class Fence:
    """Whose write this is: refused by the store once it no longer holds."""

    integration_id: str
    incarnation: str
    lease: int | None = None  # the lease revision, when several daemons share the store


# ------------------------------------------------------ logs and rejections


@dataclass(frozen=True, slots=True)
class LogEntry:
    created_at: str
    action: str
    reason: str

    def to_api(self) -> dict[str, str]:
        return {"created_at": self.created_at, "action": self.action, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RetryClaim:
    """A rejected event being retried: by whom (`token`, one per retry), since and until
    when (epoch ms). While it holds, no other retry of the event starts; one left by a
    daemon that died mid-retry lapses at `until_ms`."""

    token: str
    at_ms: int
    until_ms: int


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """A retry that did not deliver, as its entry records it: the claim it ran under is
    released, and when the attempt reached the receiver one more attempt is counted and
    its `reason` and `status` are kept (the store does both in one atomic step)."""

    token: str
    attempted: bool
    reason: str = ""
    status: int | None = None


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event set aside by a sink: a receiver's 400, or a reason on our side that
    retrying cannot cure. `body` is the delivery JSON; `deliverable` is False for an
    event no retry can send (its body then holds a placeholder payload)."""

    id: str  # derived from integration, seq and event id: a re-rejection replaces it
    created_at: str
    seq: int
    event_id: str
    reason: str
    body: bytes
    status: int | None = None  # the receiver's HTTP status, when it answered
    deliverable: bool = True
    attempts: int | None = None  # delivery attempts up to the rejection, when counted
    trace: bytes | None = None  # the publishing request's trace context: a retry carries it
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    retry_claim: RetryClaim | None = None  # a retry under way (see RetryClaim)

    def claimable(self, at_ms: int) -> bool:
        """No retry holds it at `at_ms` (none started, or the last one's claim lapsed)."""
        return self.retry_claim is None or self.retry_claim.until_ms <= at_ms

    def after_retry(self, outcome: RetryOutcome) -> RejectedEvent:
        """The entry once a retry that did not deliver has ended (see RetryOutcome)."""
        claim = self.retry_claim
        released = None if claim is not None and claim.token == outcome.token else claim
        if not outcome.attempted:
            return replace(self, retry_claim=released)
        return replace(self, retry_claim=released, reason=outcome.reason,
                       status=outcome.status,
                       attempts=None if self.attempts is None else self.attempts + 1)


@dataclass(frozen=True, slots=True)
class Change:
    """What an integration transition writes, in one atomic step."""

    integration: Integration
    cursor: int | None = None  # a new cursor (the restart-window skip), or unchanged
    logs: tuple[LogEntry, ...] = ()
    # Replays dropped from the record: their progress and saved state go with them.
    dropped_replays: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChangeView:
    """What a transition may look at besides the record, read in the same atomic step."""

    cursor: int | None
    head: int
