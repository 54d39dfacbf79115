"""Integrations, cursors, sink state, logs and rejected events: one JetStream stream.

Decisions:
- Everything but the events lives in one stream, `{prefix}_state`, one
  subject per piece (`{prefix}.st.` + `int.<id>`, `inc.<id>`, `cur.<id>`,
  `sink.<id>`, `log.<id>`, `rejx.<id>`, `rej.<id>.<rejected id>`, and
  `index`). One stream, because a JetStream atomic batch cannot span
  streams, and the store's operations each write several pieces at once,
  as the LMDB store does in one transaction: a new integration is its
  record, its fence marker, its cursor, its empty rejected index and its
  first log line, all or nothing. Not the KV API: a KV bucket is such a
  stream too, but nats-py's KV can neither batch several keys atomically nor
  check one key while writing another.
- Single values (record, marker, cursor, sink state, index, each rejected
  event) are written with `Nats-Rollup: sub` (the subject keeps only its
  newest message); logs rely on the stream's `max_msgs_per_subject` =
  `limits.log_entries`, so JetStream keeps the newest 50 by itself. A
  deleted single value is a tombstone (header `Esd-Op: del`) until purged.
- Compare-and-set everywhere, never read-then-write: every write that
  depends on what was read names the sequence it read with
  `Nats-Expected-Last-Subject-Sequence` (plus `...-Subject` to check a
  subject the batch does not write); a mismatch (10071) fails the whole
  batch and the operation re-reads and tries again (bounded). So two
  requests cannot both pass a check: the integration limit is a CAS on the
  `index` (the list of ids) written in the same batch as the record; PATCH,
  start, stop and completion are a CAS on the record; a rejected event is
  kept with a CAS on its integration's rejected index; a retry's claim and
  its outcome (attempts + 1) are a CAS on the entry and the index together.
- Fencing: `inc.<id>` holds the incarnation, written only when the
  integration is created and replaced by a tombstone when it is deleted.
  Every fenced write (cursor, sink state, log, rejected events) carries
  "the last message on `inc.<id>` is still seq M", M being the marker of the
  fence's incarnation: after a delete, or a delete and re-create under the
  same id, it fails and the store answers False without writing anything.
  A mismatch is re-checked before it counts (in a cluster JetStream also
  refuses an expectation on a subject another in-flight batch checks), and
  fenced writes of one integration are serialised in the process.
  Leases (several daemons on one stream, `lease.py`): a `Fence.lease` names
  the sequence of the claim message on `lease.<id>` (a claim is made for one incarnation and a
  delete tombstones the subject, so it implies the marker); fenced writes
  then expect that subject instead (`_fence_headers`), and a mismatch that
  the re-check confirms (the lease moved: claimed by another daemon,
  released, deleted) answers False at once instead of retrying.
- Replays live in the record; their progress and saved state are fenced
  single values on subjects of their own (`rpp.<id>.<replay id>`,
  `rps.<id>.<replay id>`), tombstoned in the batch that drops the replay
  from the record and purged with the integration.
- Delete: one batch tombstones the record, the marker, the rejected index
  and the lease subject and drops the id from the index (CAS on record and index); then the
  integration's subjects are purged up to that batch (`seq` bound, so a new
  integration created meanwhile under the same id keeps its own). A delete
  interrupted before its purge leaves tombstones, which read as absent and
  are purged by the next create of that id or the next start.
- Every compare-and-set retries through one helper, `_cas`: a lost race
  (`Conflict`) re-reads and tries again after a short backoff, at most
  `CAS_ATTEMPTS` times, then answers `StoreUnavailable` (503).
- Subject names are `subjects.py`'s; `LeaseBook` (lease.py) writes through
  `commit`, `expect` and the header marks defined here.
- Reads are `DIRECT.GET`s (any replica; last-by-subject for single values,
  `multi_last` for all records or one integration's rejected events,
  `next_by_subj` batches for its log). Logs are at most
  `limits.log_entries` long, so "newest first" is the batch reversed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgpack
import orjson
from nats.aio.msg import Msg

from ... import codec
from ...codec import TargetTypes
from ...logs import kv
from ...model import (
    Change,
    ChangeView,
    Fence,
    Integration,
    LogEntry,
    RejectedEvent,
    ReplayProgress,
    RetryClaim,
    RetryOutcome,
)
from ..base import (
    IntegrationExists,
    IntegrationLimitReached,
    IntegrationMissing,
    RetryInProgress,
    StoreFull,
    StoreUnavailable,
    Transition,
    kept_log,
    rejected_dropped_log,
)
from .client import (
    EXPECT_SUBJ,
    EXPECT_SUBJ_SEQ,
    MAX_BYTES,
    ROLLUP,
    SEQUENCE,
    WRONG_LAST_SEQUENCE,
    Ack,
    JsApiError,
    JsClient,
    Out,
    last_token,
)
from .subjects import (
    CURSOR,
    INTEGRATION_KINDS,
    LEASE,
    LOG,
    MARKER,
    RECORD,
    REJECTED_INDEX,
    REPLAY_KINDS,
    REPLAY_PROGRESS,
    REPLAY_STATE,
    SINK_STATE,
    StateSubjects,
    is_token,
)

log = logging.getLogger("eventstreamd.jetstream")

OP = "Esd-Op"  # our header: `del` marks a tombstone
DELETED = "del"
ROLL = {ROLLUP: "sub"}  # the subject keeps only this, its newest message
TOMBSTONE = {**ROLL, OP: DELETED}
CAS_ATTEMPTS = 25  # re-reads of a compare-and-set that lost a race
HEADROOM = 1024
T = TypeVar("T")


class Conflict(Exception):
    """A compare-and-set lost: what it read changed before it wrote."""


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    data: bytes
    deleted: bool


def _log_bytes(entry: LogEntry) -> bytes:
    return orjson.dumps(codec.log_to_store(kept_log(entry)))


def _record(integration: Integration) -> bytes:
    return orjson.dumps(codec.to_store(integration))


def _ids(entry: Entry | None) -> list[str]:
    if entry is None or entry.deleted or not entry.data:
        return []
    return [str(i) for i in orjson.loads(entry.data)]


def _progress(raw: dict[str, Any]) -> ReplayProgress:
    return ReplayProgress(int(raw["cursor"]), int(raw["delivered"]))


def expect(seq: int, subject: str | None = None) -> dict[str, str]:
    """Headers that make a write fail (`Conflict`) unless the last message on `subject`
    (default: the one written) is still `seq` (0: none)."""
    headers = {EXPECT_SUBJ_SEQ: str(seq)}
    if subject is not None:
        headers[EXPECT_SUBJ] = subject
    return headers


class StateStore:
    def __init__(self, client: JsClient, prefix: str, replicas: int, targets: TargetTypes, *,
                 log_entries: int, rejected_events: int) -> None:
        self.client = client
        self.targets = targets
        self.subjects = StateSubjects.of(prefix)
        self.replicas = replicas
        self.log_entries = log_entries
        self.rejected_events = rejected_events
        self._markers: dict[str, tuple[str, int]] = {}  # id -> (incarnation, marker seq)
        self._decoded: dict[str, tuple[int, Integration]] = {}  # id -> (record seq, record)
        self.created: str | None = None  # the stream's creation time: which stream it is
        self._locks: dict[str, asyncio.Lock] = {}

    def stream_config(self) -> dict[str, Any]:
        return {
            "name": self.subjects.stream,
            "subjects": [self.subjects.every],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "max_msgs_per_subject": self.log_entries,
            "discard": "old",
            "allow_atomic": True,
            "allow_direct": True,
            "allow_rollup_hdrs": True,
        }

    async def open(self) -> None:
        info = await self.client.ensure_stream(self.stream_config())
        self.created = str(info.get("created") or "") or None
        # Deletes that stopped before their purge left tombstones: finish them.
        for msg in await self.multi_last(RECORD):
            headers = msg.headers or {}
            if headers.get(OP) == DELETED:
                integration_id = last_token(headers)
                if is_token(integration_id):
                    await self._purge_integration(integration_id, int(headers[SEQUENCE]) + 1)

    def _integration(self, data: bytes) -> Integration:
        return codec.from_store(self.targets, orjson.loads(data))

    def replaced(self, created: str) -> None:
        """The stream was deleted and created anew: what was cached of the old one goes."""
        self.created = created
        self._markers.clear()

    def _subject(self, kind: str, integration_id: str) -> str:
        return self.subjects.kind(kind, integration_id)

    # ------------------------------------------------------------ raw access

    async def multi_last(self, kind: str) -> list[Msg]:
        """The newest message of every subject of `kind`."""
        return await self.client.direct_batch(
            self.subjects.stream, {"multi_last": [self._subject(kind, "*")]})

    async def _last(self, subject: str) -> Entry | None:
        msg = await self.client.direct_last(self.subjects.stream, subject)
        if msg is None:
            return None
        headers = msg.headers or {}
        return Entry(int(headers[SEQUENCE]), msg.data, headers.get(OP) == DELETED)

    async def commit(self, messages: Sequence[Out]) -> Ack:
        """Write `messages` as one atomic batch; `Conflict` when an expectation failed."""
        try:
            return await self.client.commit(messages, uuid.uuid4().hex)
        except JsApiError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Conflict(str(exc)) from None
            if exc.err_code == MAX_BYTES:
                raise StoreFull(f"JetStream has no room for the write: {exc}") from None
            raise StoreUnavailable(f"JetStream refused the write: {exc}") from None

    async def _cas(self, attempt: Callable[[], Awaitable[T]], give_up: str) -> T:
        """Run `attempt` (reads, then a compare-and-set write) until it does not lose a
        race (`Conflict`), with a short growing pause between tries; `StoreUnavailable`
        saying `give_up` after `CAS_ATTEMPTS` tries."""
        for tries in range(CAS_ATTEMPTS):
            try:
                return await attempt()
            except Conflict:
                await anyio.sleep(min(0.05, 0.002 * tries))
        raise StoreUnavailable(give_up)

    async def _purge_integration(self, integration_id: str, before_seq: int) -> bool:
        """Purge what a deleted integration left; False (logged) when NATS refused."""
        # Each kind by name: a wildcard `<base>.*.<id>` would also take `inst.<id>`, the
        # announcement of a daemon whose instance name happens to equal the id.
        subjects = [self.subjects.rejected(integration_id, "*"),
                    *(self.subjects.replay(kind, integration_id, "*") for kind in REPLAY_KINDS),
                    *(self._subject(kind, integration_id) for kind in INTEGRATION_KINDS)]
        try:
            for subject in subjects:
                await self.client.purge(self.subjects.stream, subject, before_seq)
        except (StoreUnavailable, JsApiError) as exc:
            log.warning("could not purge a deleted integration's state; it is purged on the "
                        "next start", extra=kv(integration=integration_id, error=str(exc)))
            return False
        return True

    async def _purge_rejected(self, integration_id: str, rejected_ids: Sequence[str],
                              before_seq: int) -> None:
        for rejected_id in rejected_ids:
            try:
                await self.client.purge(self.subjects.stream,
                                        self.subjects.rejected(integration_id, rejected_id),
                                        before_seq)
            except (StoreUnavailable, JsApiError) as exc:
                log.debug("could not purge a removed rejected event", extra=kv(
                    integration=integration_id, rejected_id=rejected_id, error=str(exc)))

    # ----------------------------------------------------------- integrations

    async def list_integrations(self) -> list[Integration]:
        """Every record; one whose message is unchanged since the last list is not decoded
        again (status lists them every second)."""
        decoded = self._decoded
        kept: dict[str, tuple[int, Integration]] = {}
        for m in await self.multi_last(RECORD):
            headers = m.headers or {}
            if headers.get(OP) == DELETED or not m.data:
                continue
            subject, seq = last_token(headers), int(headers[SEQUENCE])
            known = decoded.get(subject)
            kept[subject] = (known if known is not None and known[0] == seq
                             else (seq, self._integration(m.data)))
        self._decoded = kept
        return sorted((integration for _, integration in kept.values()), key=lambda i: i.id)

    async def cursors(self) -> dict[str, int]:
        return {last_token(m.headers or {}): int(m.data) for m in await self.multi_last(CURSOR)
                if (m.headers or {}).get(OP) != DELETED and m.data}

    async def rejected_counts(self) -> dict[str, int]:
        counts = {}
        for m in await self.multi_last(REJECTED_INDEX):
            headers = m.headers or {}
            if headers.get(OP) != DELETED and m.data and m.data != b"[]":
                counts[last_token(headers)] = len(orjson.loads(m.data))
        return counts

    async def get_integration(self, integration_id: str) -> tuple[Integration, int] | None:
        if not is_token(integration_id):
            return None
        entry = await self._last(self._subject(RECORD, integration_id))
        if entry is None or entry.deleted:
            return None
        return self._integration(entry.data), entry.seq

    async def create_integration(self, integration: Integration, *, cursor: int, limit: int,
                                 log: LogEntry) -> int:
        """Returns the marker's seq."""
        integration_id = integration.id
        if not is_token(integration_id):
            raise ValueError(f"{integration_id!r} cannot name a JetStream subject")
        async def attempt() -> int:
            index = await self._last(self.subjects.index)
            ids = _ids(index)
            if integration_id in ids:
                raise IntegrationExists(integration_id)
            record = await self._last(self._subject(RECORD, integration_id))
            if record is not None and not record.deleted:
                raise IntegrationExists(integration_id)
            if record is not None:  # an unfinished delete: finish it first, then look again
                if not await self._purge_integration(integration_id, record.seq + 1):
                    raise StoreUnavailable(f"the earlier delete of {integration_id!r} "
                                           "could not be finished; try again")
                raise Conflict("an unfinished delete was finished")
            if len(ids) >= limit:
                raise IntegrationLimitReached(limit)
            ack = await self.commit([
                Out(self.subjects.index, orjson.dumps([*ids, integration_id]),
                    {**ROLL, **expect(index.seq if index else 0)}),
                Out(self._subject(RECORD, integration_id), _record(integration),
                    {**ROLL, **expect(0)}),
                Out(self._subject(MARKER, integration_id), integration.incarnation.encode(), ROLL),
                Out(self._subject(CURSOR, integration_id), str(cursor).encode(), ROLL),
                Out(self._subject(REJECTED_INDEX, integration_id), b"[]", ROLL),
                Out(self._subject(LOG, integration_id), _log_bytes(log)),
            ])
            return ack.first + 2

        marker = await self._cas(attempt, "too many concurrent changes of the integrations; "
                                          "try again")
        self._markers[integration_id] = (integration.incarnation, marker)
        return marker

    async def change_integration(self, integration_id: str, change: Transition,
                                 head: Callable[[], Awaitable[int]]) -> tuple[Change, Ack | None]:
        if not is_token(integration_id):
            raise IntegrationMissing(integration_id)
        record_subject = self._subject(RECORD, integration_id)
        async def attempt() -> tuple[Change, Ack | None]:
            record = await self._last(record_subject)
            if record is None or record.deleted:
                raise IntegrationMissing(integration_id)
            current = self._integration(record.data)
            cursor = await self.get_cursor(integration_id)
            result = change(current, ChangeView(cursor=cursor, head=await head()))
            messages: list[Out] = []
            if result.integration != current:
                messages.append(Out(record_subject, _record(result.integration),
                                    {**ROLL, **expect(record.seq)}))
            if result.cursor is not None:
                messages.append(Out(self._subject(CURSOR, integration_id),
                                    str(result.cursor).encode(), ROLL))
            messages += [Out(self._subject(LOG, integration_id), _log_bytes(entry))
                         for entry in result.logs]
            messages += [Out(self.subjects.replay(kind, integration_id, replay_id), b"",
                             TOMBSTONE)
                         for replay_id in result.dropped_replays if is_token(replay_id)
                         for kind in REPLAY_KINDS]
            if not messages:
                return result, None
            if result.integration == current:  # check the record without rewriting it
                first = messages[0]
                messages[0] = Out(first.subject, first.data,
                                  {**(first.headers or {}), **expect(record.seq, record_subject)})
            return result, await self.commit(messages)

        return await self._cas(attempt, "too many concurrent changes of this integration; "
                                        "try again")

    async def delete_integration(self, integration_id: str, incarnation: str | None) -> bool:
        if not is_token(integration_id):
            return False
        record_subject = self._subject(RECORD, integration_id)
        async def attempt() -> Ack | None:
            record = await self._last(record_subject)
            if record is None or record.deleted:
                return None
            if (incarnation is not None
                    and self._integration(record.data).incarnation != incarnation):
                return None
            index = await self._last(self.subjects.index)
            return await self.commit([
                Out(self.subjects.index,
                    orjson.dumps([i for i in _ids(index) if i != integration_id]),
                    {**ROLL, **expect(index.seq if index else 0)}),
                Out(record_subject, b"", {**TOMBSTONE, **expect(record.seq)}),
                Out(self._subject(MARKER, integration_id), b"", TOMBSTONE),
                Out(self._subject(REJECTED_INDEX, integration_id), b"", TOMBSTONE),
                # No lease outlives its integration (the lease fences expect it).
                Out(self._subject(LEASE, integration_id), b"", TOMBSTONE),
            ])

        ack = await self._cas(attempt, "too many concurrent changes of this integration; "
                                       "try again")
        if ack is None:
            return False
        self._markers.pop(integration_id, None)
        self._locks.pop(integration_id, None)
        await self._purge_integration(integration_id, ack.seq + 1)
        return True

    # ------------------------------------------------------------- cursors

    async def get_cursor(self, integration_id: str) -> int | None:
        if not is_token(integration_id):
            return None
        entry = await self._last(self._subject(CURSOR, integration_id))
        if entry is None or entry.deleted or not entry.data:
            return None
        return int(entry.data)

    async def get_sink_state(self, integration_id: str) -> dict[str, object] | None:
        if not is_token(integration_id):
            return None
        entry = await self._last(self._subject(SINK_STATE, integration_id))
        if entry is None or entry.deleted or not entry.data:
            return None
        state: dict[str, object] = msgpack.unpackb(entry.data)
        return state

    # -------------------------------------------------------------- fencing

    def _lock(self, integration_id: str) -> asyncio.Lock:
        lock = self._locks.get(integration_id)
        if lock is None:
            lock = self._locks[integration_id] = asyncio.Lock()
        return lock

    async def _marker(self, fence: Fence) -> int | None:
        """The seq of the fence's incarnation marker; None when the fence no longer holds."""
        cached = self._markers.get(fence.integration_id)
        if cached is not None and cached[0] == fence.incarnation:
            return cached[1]
        entry = await self._last(self._subject(MARKER, fence.integration_id))
        if entry is None or entry.deleted or entry.data.decode() != fence.incarnation:
            return None
        self._markers[fence.integration_id] = (fence.incarnation, entry.seq)
        return entry.seq

    async def _lease_holds(self, fence: Fence) -> bool:
        entry = await self._last(self._subject(LEASE, fence.integration_id))
        return entry is not None and not entry.deleted and entry.seq == fence.lease

    def _fence_headers(self, fence: Fence, marker: int) -> dict[str, str]:
        if fence.lease is not None:  # the lease message implies the incarnation
            return expect(fence.lease, self._subject(LEASE, fence.integration_id))
        return expect(marker, self._subject(MARKER, fence.integration_id))

    async def fenced(self, fence: Fence,
                     build: Callable[[dict[str, str]], Awaitable[list[Out]]]) -> Ack | None:
        """Commit what `build(fence_headers)` returns (its first message carries the fence
        headers), or None without writing when the fence does not hold."""
        if not is_token(fence.integration_id):
            return None
        async def attempt() -> Ack | None:
            marker = 0
            if fence.lease is None:
                found = await self._marker(fence)
                if found is None:
                    return None
                marker = found
            try:
                return await self.commit(await build(self._fence_headers(fence, marker)))
            except Conflict:
                # The marker moved (deleted, re-created), or another check in flight
                # (cluster), or what `build` compared changed: look again.
                self._markers.pop(fence.integration_id, None)
                if fence.lease is not None and not await self._lease_holds(fence):
                    return None  # claimed by another daemon, released, or deleted
                raise

        async with self._lock(fence.integration_id):
            return await self._cas(attempt, "a delivery write kept conflicting; try again")

    async def write_fenced(self, fence: Fence, kind: str, data: bytes,
                           rollup: bool = True, subject: str | None = None) -> bool:
        """Write `data` as the integration's `kind` (or to `subject`), fenced."""
        subject = subject or self._subject(kind, fence.integration_id)

        async def build(headers: dict[str, str]) -> list[Out]:
            return [Out(subject, data, {**ROLL, **headers} if rollup else headers)]

        return await self.fenced(fence, build) is not None

    async def add_log(self, fence: Fence, entry: LogEntry) -> bool:
        return await self.write_fenced(fence, LOG, _log_bytes(entry), rollup=False)

    # -------------------------------------------------------------- replays

    async def _replay_value(self, kind: str, integration_id: str,
                            replay_id: str) -> bytes | None:
        if not is_token(integration_id) or not is_token(replay_id):
            return None
        entry = await self._last(self.subjects.replay(kind, integration_id, replay_id))
        if entry is None or entry.deleted or not entry.data:
            return None
        return entry.data

    async def get_replay_progress(self, integration_id: str,
                                  replay_id: str) -> ReplayProgress | None:
        data = await self._replay_value(REPLAY_PROGRESS, integration_id, replay_id)
        return _progress(orjson.loads(data)) if data is not None else None

    async def list_replay_progress(self, integration_id: str) -> dict[str, ReplayProgress]:
        if not is_token(integration_id):
            return {}
        msgs = await self.client.direct_batch(self.subjects.stream, {"multi_last": [
            self.subjects.replay(REPLAY_PROGRESS, integration_id, "*")]})
        return {last_token(m.headers): _progress(orjson.loads(m.data)) for m in msgs
                if (m.headers or {}).get(OP) != DELETED and m.data}

    async def set_replay_progress(self, fence: Fence, replay_id: str,
                                  progress: ReplayProgress) -> bool:
        if not is_token(replay_id):
            return False
        data = orjson.dumps({"cursor": progress.cursor, "delivered": progress.delivered})
        return await self.write_fenced(fence, REPLAY_PROGRESS, data, subject=self.subjects.replay(
            REPLAY_PROGRESS, fence.integration_id, replay_id))

    async def get_replay_state(self, integration_id: str,
                               replay_id: str) -> dict[str, object] | None:
        data = await self._replay_value(REPLAY_STATE, integration_id, replay_id)
        if data is None:
            return None
        state: dict[str, object] = msgpack.unpackb(data)
        return state

    async def put_replay_state(self, fence: Fence, replay_id: str,
                               state: dict[str, object]) -> bool:
        if not is_token(replay_id):
            return False
        data: bytes = msgpack.packb(state)
        return await self.write_fenced(fence, REPLAY_STATE, data, subject=self.subjects.replay(
            REPLAY_STATE, fence.integration_id, replay_id))

    async def list_logs(self, integration_id: str, limit: int) -> list[LogEntry]:
        if not is_token(integration_id) or limit <= 0:
            return []
        msgs = await self.client.direct_batch(self.subjects.stream, {
            "seq": 1, "next_by_subj": self._subject(LOG, integration_id),
            "batch": max(limit, self.log_entries)})
        entries = [codec.log_from_store(orjson.loads(m.data)) for m in msgs]
        return entries[::-1][:limit]

    # ------------------------------------------------------- rejected events

    async def rejected_ids(self, integration_id: str) -> list[str]:
        if not is_token(integration_id):
            return []
        return _ids(await self._last(self._subject(REJECTED_INDEX, integration_id)))

    async def list_rejected(self, integration_id: str) -> list[RejectedEvent]:
        ids = await self.rejected_ids(integration_id)
        if not ids:
            return []
        msgs = await self.client.direct_batch(self.subjects.stream, {
            "multi_last": [self.subjects.rejected(integration_id, "*")]})
        found = {}
        for msg in msgs:
            if msg.data and (msg.headers or {}).get(OP) != DELETED:
                entry = codec.rejected_from_store(msgpack.unpackb(msg.data))
                found[entry.id] = entry
        return [found[i] for i in reversed(ids) if i in found]

    async def get_rejected(self, integration_id: str, rejected_id: str) -> RejectedEvent | None:
        if not is_token(rejected_id) or rejected_id not in await self.rejected_ids(integration_id):
            return None
        entry = await self._last(self.subjects.rejected(integration_id, rejected_id))
        if entry is None or entry.deleted or not entry.data:
            return None
        return codec.rejected_from_store(msgpack.unpackb(entry.data))

    def _rejected_bytes(self, entry: RejectedEvent) -> bytes:
        data: bytes = msgpack.packb(codec.rejected_to_store(entry))
        if len(data) <= self.client.max_payload - HEADROOM:
            return data
        # Kept, but not the whole body: a message must fit the server's max_payload.
        body = codec.placeholder_body("", "", "")
        shrunk = RejectedEvent(
            entry.id, entry.created_at, entry.seq, entry.event_id,
            f"{entry.reason[:2000]} (the event is too large to keep here: retry it by "
            "registering a temporary integration over its time)", body, entry.status, False,
            trace=entry.trace)
        packed: bytes = msgpack.packb(codec.rejected_to_store(shrunk))
        return packed

    async def add_rejected(self, fence: Fence, entry: RejectedEvent,
                           log_entry: LogEntry) -> tuple[bool, int]:
        """Keep `entry` (replacing one with its id), log it, drop the oldest beyond the
        bound; (written, count now)."""
        integration_id = fence.integration_id
        if not is_token(entry.id):
            raise ValueError(f"rejected event id {entry.id!r} cannot name a subject")
        index_subject = self._subject(REJECTED_INDEX, integration_id)
        payload = self._rejected_bytes(entry)
        dropped: list[str] = []
        kept: list[str] = []

        async def build(headers: dict[str, str]) -> list[Out]:
            nonlocal dropped, kept
            index = await self._last(index_subject)
            ids = [i for i in _ids(index) if i != entry.id] + [entry.id]
            cut = max(0, len(ids) - self.rejected_events)
            dropped, kept = ids[:cut], ids[cut:]
            messages = [
                Out(self.subjects.rejected(integration_id, entry.id), payload,
                    {**ROLL, **headers}),
                Out(index_subject, orjson.dumps(kept),
                    {**ROLL, **expect(index.seq if index else 0)}),
                Out(self._subject(LOG, integration_id), _log_bytes(log_entry)),
            ]
            messages += [Out(self._subject(LOG, integration_id), _log_bytes(
                rejected_dropped_log(log_entry.created_at, rid, self.rejected_events)))
                for rid in dropped]
            return messages

        ack = await self.fenced(fence, build)
        if ack is None:
            return False, 0
        await self._purge_rejected(integration_id, dropped, ack.seq + 1)
        return True, len(kept)

    async def delete_rejected(self, integration_id: str, rejected_id: str) -> tuple[bool, int]:
        if not is_token(integration_id) or not is_token(rejected_id):
            return False, 0
        index_subject = self._subject(REJECTED_INDEX, integration_id)
        async def attempt() -> tuple[Ack | None, list[str]]:
            index = await self._last(index_subject)
            ids = _ids(index)
            if index is None or rejected_id not in ids:
                return None, ids
            ids.remove(rejected_id)
            return await self.commit([Out(index_subject, orjson.dumps(ids),
                                          {**ROLL, **expect(index.seq)})]), ids

        ack, ids = await self._cas(attempt, "too many concurrent changes of the rejected "
                                            "events; try again")
        if ack is None:
            return False, len(ids)
        await self._purge_rejected(integration_id, [rejected_id], ack.seq + 1)
        return True, len(ids)

    async def resolve_rejected(self, fence: Fence, rejected_id: str | None,
                               log_entry: LogEntry) -> tuple[bool, int | None]:
        integration_id = fence.integration_id
        index_subject = self._subject(REJECTED_INDEX, integration_id)
        removed = False
        remaining: int | None = None

        async def build(headers: dict[str, str]) -> list[Out]:
            nonlocal removed, remaining
            messages = [Out(self._subject(LOG, integration_id), _log_bytes(log_entry),
                            headers)]
            removed = False
            if rejected_id is not None:
                index = await self._last(index_subject)
                ids = _ids(index)
                remaining = len(ids)
                if index is not None and rejected_id in ids:
                    ids.remove(rejected_id)
                    remaining, removed = len(ids), True
                    messages.append(Out(index_subject, orjson.dumps(ids),
                                        {**ROLL, **expect(index.seq)}))
            return messages

        ack = await self.fenced(fence, build)
        if ack is None:
            return False, None
        if removed and rejected_id is not None:
            await self._purge_rejected(integration_id, [rejected_id], ack.seq + 1)
        return True, remaining

    async def _kept_rejected(self, integration_id: str,
                             rejected_id: str) -> tuple[Entry, Entry, RejectedEvent] | None:
        """A kept rejected event as a compare-and-set reads it: (its index, its own
        message, the entry), or None when it is not kept."""
        index = await self._last(self._subject(REJECTED_INDEX, integration_id))
        if index is None or rejected_id not in _ids(index):
            return None
        found = await self._last(self.subjects.rejected(integration_id, rejected_id))
        if found is None or found.deleted or not found.data:
            return None
        return index, found, codec.rejected_from_store(msgpack.unpackb(found.data))

    def _rewrite_rejected(self, integration_id: str, index: Entry, found: Entry,
                          entry: RejectedEvent) -> list[Out]:
        """The entry rewritten, if neither it nor the index changed since they were read
        (the index is written back as it was: the check that no delete landed first)."""
        return [Out(self.subjects.rejected(integration_id, entry.id),
                    self._rejected_bytes(entry), {**ROLL, **expect(found.seq)}),
                Out(self._subject(REJECTED_INDEX, integration_id), index.data,
                    {**ROLL, **expect(index.seq)})]

    async def claim_rejected(self, integration_id: str, rejected_id: str,
                             claim: RetryClaim) -> RejectedEvent | None:
        if not is_token(integration_id) or not is_token(rejected_id):
            return None

        async def attempt() -> RejectedEvent | None:
            kept = await self._kept_rejected(integration_id, rejected_id)
            if kept is None:
                return None
            index, found, entry = kept
            if not entry.claimable(claim.at_ms):
                assert entry.retry_claim is not None
                raise RetryInProgress(entry.retry_claim)
            claimed = dataclasses.replace(entry, retry_claim=claim)
            await self.commit(self._rewrite_rejected(integration_id, index, found, claimed))
            return claimed

        return await self._cas(attempt, "too many concurrent changes of the rejected events; "
                                        "try again")

    async def update_rejected(self, fence: Fence, rejected_id: str, outcome: RetryOutcome,
                              log_entry: LogEntry) -> bool:
        """The entry re-read and rewritten on every try of the compare-and-set, so each
        retry's attempt counts once; a delete that lands first wins."""
        integration_id = fence.integration_id

        async def build(headers: dict[str, str]) -> list[Out]:
            messages = [Out(self._subject(LOG, integration_id), _log_bytes(log_entry),
                            headers)]
            kept = (await self._kept_rejected(integration_id, rejected_id)
                    if is_token(rejected_id) else None)
            if kept is not None:
                index, found, entry = kept
                messages += self._rewrite_rejected(integration_id, index, found,
                                                   entry.after_retry(outcome))
            return messages

        return await self.fenced(fence, build) is not None
