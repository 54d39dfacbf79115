"""The store: one interface of domain operations, whatever keeps the data (LMDB, JetStream).

Decisions:
- Every operation is atomic on its own; no transaction, cursor or backend
  handle leaves `storage/`. A backend may fold several operations into one
  commit internally (LMDB's group commit does), but callers never rely on two
  operations landing together.
- Operations a sink performs for an integration take a `Fence`
  (integration id + incarnation, and a lease revision when several daemons
  share the store) and return False instead of writing when the fence no
  longer holds: the integration was deleted, re-created under the same id,
  or is now delivered by another daemon.
- Integration transitions are `change_integration(id, change)`: the store
  reads the current record (and the cursor and head the rule may need), calls
  the pure function `change` and writes what it returns — record, cursor and
  log entries — in one atomic step. The function may raise to refuse; it may
  be called more than once (a backend with compare-and-set retries it on a
  conflict), so it must not have side effects. The rules themselves live in
  the integration service, never here.
- Reads are `async` even where LMDB answers at once, so a networked backend
  implements the same interface. The head is cached in memory (`head`) and
  `wait_for_head` waits for it to move: no caller polls the backend. What
  status and /metrics show of every integration at once (records, cursors,
  rejected counts) has a read of its own that answers for all of them
  (`list_integrations`, `cursors`, `rejected_counts`): their cost must not
  be one store read per integration.
- A rejected event's retry claims the entry first (`claim_rejected`, a
  check-and-set), so one retry at a time delivers it; a retry that did not
  deliver releases the claim and counts its attempt in one atomic step
  (`update_rejected`), never a read-modify-write by the caller. The head
  goes back only when the log itself was replaced (JetStream: the stream
  deleted and created anew); a reader whose position is then past the head
  asks `resume_past_head` where to go on.
- `StoreFull` (nothing was stored; retry later or free space) and
  `StoreUnavailable` (the backend cannot be reached; nothing is known to be
  stored) are the only failures a caller must handle; the HTTP layer maps
  them to 507 and 503 (and `append`'s `EventTooLarge` to 413).
- `health()` says whether the backend is reachable now (always for LMDB),
  for `/healthz` and the status snapshot.
- Opening a store fails with `StoreOpenError` (its message one line for the
  user: a data dir in a newer format is `StoreFormatError`) or
  `StoreUnavailable` (the backend cannot be reached); no backend's own
  exception leaves `storage/`, so start-up never names a backend.
- Replays: their definitions live in the integration record (changed by
  `change_integration`, whose `Change.dropped_replays` removes a replay's
  progress and saved state in the same atomic step); their progress
  (`ReplayProgress`: cursor and count) and a replay pipeline's own state
  (an S3 replay's recorded files) are fenced writes like the live sink's
  cursor and state, removed with the integration. `count_events` counts a
  range by name without reading it (`counts.py`).
- `leases` is the `LeaseBook` of a store several daemons may share
  (`leases.py`), None for one a single daemon owns.
- A store decodes integration records with the sink registry it is opened
  with (`targets`, `codec.TargetTypes`); one opened without it (a tool that
  reads only events) refuses to read an integration, naming its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from ..config import Backend
from ..logs import clean_text
from ..model import (
    Change,
    ChangeView,
    Fence,
    Integration,
    LogEntry,
    NewEvent,
    RejectedEvent,
    ReplayProgress,
    RetryClaim,
    RetryOutcome,
    StoredEvent,
    TargetParams,
)
from .leases import LeaseBook


class _NoTargets:
    def params_types(self) -> tuple[type[TargetParams], ...]:
        return ()


NO_TARGETS = _NoTargets()


def kept_log(entry: LogEntry) -> LogEntry:
    """A log entry as a store keeps it: reasons quote receivers and exceptions, so
    secrets are scrubbed first."""
    return LogEntry(entry.created_at, entry.action, clean_text(entry.reason))


def rejected_dropped_log(created_at: str, rejected_id: str, keep: int) -> LogEntry:
    """What a store logs when a rejected event gives way to newer ones."""
    return LogEntry(created_at, "rejected_event_dropped",
                    f"Rejected event {rejected_id} was removed to keep the newest {keep}.")


class StoreOpenError(Exception):
    """The store cannot be opened; the message says why in one line."""


class StoreFormatError(StoreOpenError):
    """The data holds a format this version cannot read; the message says what to do."""


class StoreFull(Exception):
    """The store has no room (LMDB map or disk full); nothing of the failed write was stored."""


class StoreUnavailable(Exception):
    """The store cannot be reached or is shutting down; the write was not acknowledged."""


class StoreReplaced(StoreUnavailable):
    """At start: what this daemon stored before is gone from the backend (JetStream's
    streams wiped or deleted, or created anew); going on would silently begin with an
    empty store. The message says so and how to accept it."""


class EventTooLarge(Exception):
    """An event the backend cannot hold as one record (JetStream: over the server's
    `max_payload`); nothing of the request was stored."""


class RetryInProgress(Exception):
    """`claim_rejected` while another retry of that rejected event holds its claim."""

    def __init__(self, claim: RetryClaim) -> None:
        super().__init__(claim.token)
        self.claim = claim


class IntegrationExists(Exception):
    """`create_integration` for an id that exists."""


class IntegrationLimitReached(Exception):
    """`create_integration` when `limit` integrations exist already."""


class IntegrationMissing(Exception):
    """`change_integration` for an id that does not exist."""


Transition = Callable[[Integration, ChangeView], Change]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Figures for /metrics and status; `None` where a backend cannot tell."""

    events: int
    first_seq: int
    head: int
    size_bytes: int | None
    capacity_bytes: int | None
    free_bytes: int | None


@dataclass(frozen=True, slots=True)
class StoreHealth:
    backend: Backend
    connected: bool
    server: str | None = None  # where it is (JetStream: the server connected to)
    error: str | None = None  # why it is not reachable

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "connected": self.connected, "server": self.server,
                "error": self.error}


class Store(Protocol):
    # ----------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    # --------------------------------------------------------------- events

    @property
    def head(self) -> int:
        """The newest committed sequence number (0 before the first event)."""
        ...

    @property
    def log_epoch(self) -> int:
        """Counts the times the log was replaced while the store is open (JetStream: the
        event stream deleted and created anew under the daemon); 0 while it never was."""
        ...

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        """Wait until the head moves past `after`, the log is replaced (`log_epoch`
        moves), or `max_wait` passes; the head."""
        ...

    async def append(self, events: Sequence[NewEvent]) -> tuple[int, int]:
        """Store events durably, all or none; (first_seq, last_seq)."""
        ...

    async def read_events(self, from_seq: int, limit: int,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:
        """Events with seq >= from_seq, oldest first: at most `limit`, and about `max_bytes`
        of bodies (always at least one event when any is there)."""
        ...

    async def first_seq(self) -> int:
        """The oldest stored sequence number, or head + 1 when the log is empty."""
        ...

    async def resume_past_head(self, position: int) -> int | None:
        """None while `position` (a reader's next seq) is at most one past the newest
        event, as the backend has it now (not the cached `head`, which may lag behind
        another writer). Beyond that the log is not the one the position was counted in
        (replaced, or restored from an older copy): the seq where such a reader goes on
        without missing an event the log got since."""
        ...

    async def seq_at_or_after(self, ingested_ms: int) -> int:
        """The first seq ingested at or after `ingested_ms` (head + 1 when none)."""
        ...

    async def last_ingested_ms(self) -> int:
        """The ingest time stamped on the newest commit (0 before the first)."""
        ...

    async def count_events(self, from_seq: int, end_seq: int,
                           matches: Callable[[str], bool] | None = None) -> int:
        """How many stored events of `from_seq` .. `end_seq - 1` there are (those whose
        name `matches`, when given), without reading the whole range (`counts.py`)."""
        ...

    async def prune(self, cutoff_ms: int) -> int:
        """Remove events ingested before `cutoff_ms`, in bounded steps; how many went."""
        ...

    async def stats(self) -> StoreStats: ...

    def health(self) -> StoreHealth: ...

    @property
    def leases(self) -> LeaseBook | None:
        """The leases, when several daemons may share this store; None when one owns it."""
        ...

    # --------------------------------------------------------- integrations

    async def list_integrations(self) -> list[Integration]: ...

    async def get_integration(self, integration_id: str) -> Integration | None: ...

    async def create_integration(self, integration: Integration, *, cursor: int, limit: int,
                                 log: LogEntry) -> None:
        """Insert it with its first cursor and a log entry; raises IntegrationExists, or
        IntegrationLimitReached when `limit` exist (checked in the same atomic step)."""
        ...

    async def change_integration(self, integration_id: str, change: Transition) -> Integration:
        """Apply a transition atomically (see the module docstring); the new record.
        Raises IntegrationMissing, or whatever `change` raises."""
        ...

    async def delete_integration(self, integration_id: str,
                                 incarnation: str | None = None) -> bool:
        """Remove it with its cursor, sink state, logs, rejected events and its replays'
        progress and state; only that incarnation when one is given. False when there
        was nothing to delete."""
        ...

    # ------------------------------------------- per-integration, fenced writes

    async def get_cursor(self, integration_id: str) -> int | None: ...

    async def set_cursor(self, fence: Fence, next_seq: int) -> bool: ...

    async def get_sink_state(self, integration_id: str) -> dict[str, object] | None: ...

    async def put_sink_state(self, fence: Fence, state: dict[str, object]) -> bool: ...

    async def add_log(self, fence: Fence, entry: LogEntry) -> bool: ...

    async def get_replay_progress(self, integration_id: str,
                                  replay_id: str) -> ReplayProgress | None: ...

    async def list_replay_progress(self, integration_id: str) -> dict[str, ReplayProgress]:
        """The progress of every replay of the integration that saved some, by replay id."""
        ...

    async def set_replay_progress(self, fence: Fence, replay_id: str,
                                  progress: ReplayProgress) -> bool: ...

    async def get_replay_state(self, integration_id: str,
                               replay_id: str) -> dict[str, object] | None: ...

    async def put_replay_state(self, fence: Fence, replay_id: str,
                               state: dict[str, object]) -> bool: ...

    async def list_logs(self, integration_id: str, limit: int) -> list[LogEntry]:
        """The newest `limit` entries, newest first."""
        ...

    async def add_rejected(self, fence: Fence, entry: RejectedEvent, log: LogEntry) -> bool:
        """Keep a rejected event (replacing one with the same id) with its log entry; the
        oldest beyond the bound are dropped, each with a `rejected_event_dropped` entry."""
        ...

    async def list_rejected(self, integration_id: str) -> list[RejectedEvent]:
        """Newest first."""
        ...

    async def get_rejected(self, integration_id: str, rejected_id: str) -> RejectedEvent | None:
        ...

    async def count_rejected(self, integration_id: str) -> int: ...

    async def cursors(self) -> dict[str, int]:
        """Every integration's saved cursor, in one read (status and /metrics, which must
        not read the store once per integration)."""
        ...

    async def rejected_counts(self) -> dict[str, int]:
        """How many rejected events each integration keeps (one without any may be
        absent), in one read."""
        ...

    async def delete_rejected(self, integration_id: str, rejected_id: str) -> bool: ...

    async def resolve_rejected(self, fence: Fence, rejected_id: str | None,
                               log: LogEntry) -> bool:
        """A retry's outcome: remove the entry (when delivered) and log, fenced."""
        ...

    async def claim_rejected(self, integration_id: str, rejected_id: str,
                             claim: RetryClaim) -> RejectedEvent | None:
        """Mark a kept rejected event as being retried under `claim`, in one atomic step
        with the check that no other retry holds it; the entry (claimed). None when there
        is no such entry; `RetryInProgress` while another claim holds it."""
        ...

    async def update_rejected(self, fence: Fence, rejected_id: str, outcome: RetryOutcome,
                              log: LogEntry) -> bool:
        """A retry that did not deliver: its entry, where it stands in the list, becomes
        `entry.after_retry(outcome)` (claim released; one more attempt, the latest status
        and reason when it reached the receiver), read and written in one atomic step so
        concurrent retries never lose an attempt; and the log entry, fenced. An entry
        deleted in the meantime stays deleted; the log entry is written either way."""
        ...
