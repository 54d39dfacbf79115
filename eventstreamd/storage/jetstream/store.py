"""`JetStreamStore`: the `Store` interface on NATS JetStream (see the package docstring).

Decisions:
- Three parts, one owner: the connection (`client.py`), the event log
  (`events.py`: the stream, the group-commit writer, reads, the head) and
  the state stream (`state.py`). The store is one async context that
  connects (within `jetstream.connect_timeout`, or `StoreUnavailable`
  naming the server: start-up then fails with that one line), creates or
  updates both streams, and runs the writer and the head watcher in its own
  task group; leaving it drains the writer, then closes the connection.
- What an outage does, by who calls (the interface has no notion of a
  caller, so it follows from the operation):
  - requests of the API and the publish path fail at once with
    `StoreUnavailable` (503): appends, creating, changing and deleting
    integrations, rejected-event operations, logs;
  - writes only a sink makes (cursor, sink state, its log lines, rejected
    events) and its reads of the log *wait* for the connection (up to
    `OUTAGE_PATIENCE`, then `StoreUnavailable`, which restarts the sink):
    delivery pauses and resumes by itself when NATS is back, without a
    crash per second. An unanswered write is re-sent after the reconnect:
    cursors and sink state are idempotent; a log line may then appear twice;
  - what status, the supervisor and the dashboard read (integrations,
    cursors, rejected counts) is answered from the last values read or
    written while NATS is unreachable, so they keep showing and supervising
    what they know; `health()` says the store is unreachable and why.
- Status reads every integration's rejected count each second: those are
  this daemon's own writes and reads as they happen, and every count read
  again (one batched read) at most every `COUNTS_FRESH` seconds, for what
  other daemons changed.
- `prune()` removes nothing: the stream's `max_age` is `storage.retention`
  and the server expires events itself, message by message.
- The streams are this data dir's daemon's to find again (`identity.py`): a
  start that finds the ones it used gone or created anew is refused
  (`StoreReplaced`, one line) unless `accept_new_streams`. While running,
  both streams are looked at every `STREAM_CHECK_EVERY` seconds and right
  after a reconnect (a server back from a restart may have lost its
  storage): gone ones make `health()` say so and every API and publish
  operation fail with that reason (not "no responders, e.g. an election");
  streams created anew are adopted (the event log's head follows, even
  backwards; sinks then resume at the new log's first event).
- Counting a range by name (`count_events`) uses per-bucket name counts kept
  in memory (`storage/counts.py`'s `BucketCache`): this daemon's own appends
  are noted as they are acknowledged; any other bucket a count needs is read
  once and kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import anyio
import msgpack
from anyio.abc import TaskGroup

from ...codec import TargetTypes
from ...config import Config
from ...logs import kv
from ...model import (
    Fence,
    Integration,
    LogEntry,
    NewEvent,
    RejectedEvent,
    ReplayProgress,
    RetryClaim,
    RetryOutcome,
    StoredEvent,
)
from ...timeouts import move_on_after
from ..base import (
    NO_TARGETS,
    StoreHealth,
    StoreReplaced,
    StoreStats,
    StoreUnavailable,
    Transition,
)
from ..counts import BUCKET, BucketCache, NameMatcher, bucket_start, split, tally
from .client import CLUSTER_FORMING, STREAM_NOT_FOUND, JsApiError, JsClient, NotSent, Unknown
from .events import EventLog
from .identity import StreamIdentity, changes
from .lease import JetStreamLeaseBook
from .state import StateStore
from .subjects import CURSOR, SINK_STATE

log = logging.getLogger("eventstreamd.jetstream")

COUNT_READ = 1024  # events per read when a count reads a bucket
OUTAGE_PATIENCE = 600.0  # seconds a sink's write or read waits for NATS to come back
RETRY_PAUSE = 0.25
STREAM_CHECK_EVERY = 2.0  # seconds between looks at whether both streams are still there
COUNTS_FRESH = 5.0  # seconds status may show another daemon's rejected counts late
T = TypeVar("T")


class JetStreamStore:
    def __init__(self, config: Config, targets: TargetTypes = NO_TARGETS, *,
                 accept_new_streams: bool = False) -> None:
        js = config.jetstream
        self.config = config
        self.accept_new_streams = accept_new_streams
        self.identity = StreamIdentity(config.data_dir)
        self._gone: str | None = None  # why nothing can be stored: the streams are gone
        self._recheck = anyio.Event()
        self.client = JsClient(js)
        self.events = EventLog(self.client, js.prefix, js.replicas, config.storage.retention,
                               js.max_batch, js.max_bytes)
        self.state = StateStore(self.client, js.prefix, js.replicas, targets,
                                log_entries=config.limits.log_entries,
                                rejected_events=config.limits.rejected_events)
        self.leases = JetStreamLeaseBook(self.state)  # several daemons: daemon/ownership.py
        self._tg: TaskGroup | None = None
        self._closing = False
        # The last values seen: what supervision and status show while NATS is away.
        self._records: dict[str, Integration] = {}
        self._cursors: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._counts = BucketCache()
        self._counts_epoch = 0
        self._counts_read_at: float | None = None  # monotonic time the rejected counts were read

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> JetStreamStore:
        await self.client.connect()
        try:
            await self._open_streams()
        except JsApiError as exc:
            await self.client.close()
            raise StoreUnavailable(
                f"JetStream at {self.client.server_url()} refused to set up the streams: "
                f"{exc}") from None
        except (NotSent, Unknown) as exc:
            await self.client.close()
            raise StoreUnavailable(
                f"NATS at {self.client.server_url()} answers, but JetStream does not ({exc}); "
                "is JetStream enabled on the server (a `jetstream {}` block)?") from None
        except BaseException:
            await self.client.close()
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.events.run_writer)
        self._tg.start_soon(self.events.watch_head)
        self.client.on_connection(self._connection_changed)
        self._tg.start_soon(self._watch_streams)
        return self

    async def _open_streams(self) -> None:
        """Create or check both streams and read the integrations. A stream that was
        just created (by this daemon or another one starting beside it) may not answer
        its first reads yet on a cluster (replicas still electing, direct-get
        responders not up): such answers, which carry no JetStream error code, are
        retried within `connect_timeout`, and so are requests no one answers (a
        cluster just started, its meta leader not elected yet) and a cluster whose
        leader is elected but whose peers have not all reported in (CLUSTER_FORMING:
        creating a replicated stream then fails with "peer offline"); any other
        refusal fails at once, and no answer until the deadline means JetStream is
        not enabled (the caller says so)."""
        deadline = time.monotonic() + self.client.config.connect_timeout
        while True:
            try:
                await self._check_identity()
                await self.events.open()
                await self.state.open()
                for integration in await self.state.list_integrations():
                    self._records[integration.id] = integration
                self._remember_streams()
                return
            except JsApiError as exc:
                retryable = exc.err_code == 0 or exc.err_code in CLUSTER_FORMING
                if not retryable or time.monotonic() >= deadline:
                    raise
                log.info("streams not ready yet; trying again", extra=kv(error=str(exc)))
                await anyio.sleep(RETRY_PAUSE)
            except (NotSent, Unknown) as exc:
                # No answer: JetStream off, or a cluster just started that has no
                # meta leader yet. Only the deadline tells them apart.
                if time.monotonic() >= deadline:
                    raise
                log.info("JetStream does not answer yet; trying again", extra=kv(
                    error=str(exc)))
                await anyio.sleep(RETRY_PAUSE)

    async def _created(self, stream: str) -> str | None:
        """When the stream was created, or None when there is no such stream."""
        try:
            info = await self.client.api(f"STREAM.INFO.{stream}")
        except JsApiError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return None
            raise
        return str(info.get("created") or "")

    async def _check_identity(self) -> None:
        """Refuse to create empty streams in place of ones this data dir's daemon used
        (see identity.py), unless told to (`accept_new_streams`)."""
        remembered = self.identity.remembered()
        found = {name: await self._created(name) for name in self._stream_names()}
        differences = changes(remembered, found)
        if not differences:
            return
        if not self.accept_new_streams:
            raise StoreReplaced(
                f"the JetStream streams this daemon used are not on "
                f"{self.client.server_url()} as they were: {'; '.join(differences)} (the "
                "server's storage wiped, or the streams deleted or replaced). Starting would "
                "go on without the integrations and events they held; to do that on "
                "purpose, start once with --accept-new-streams")
        log.warning("going on with new JetStream streams (--accept-new-streams)",
                    extra=kv(changes="; ".join(differences)))

    def _stream_names(self) -> tuple[str, str]:
        return self.events.stream, self.state.subjects.stream

    def _remember_streams(self) -> None:
        self.identity.remember({self.events.stream: self.events.created or "",
                                self.state.subjects.stream: self.state.created or ""})

    # ------------------------------------------------------- streams watched

    def _connection_changed(self, connected: bool) -> None:
        if connected:
            self._recheck.set()  # a server back from a restart may have lost its streams

    async def _watch_streams(self) -> None:
        while True:
            with move_on_after(STREAM_CHECK_EVERY):
                await self._recheck.wait()
            self._recheck = anyio.Event()
            if self._closing or not self.client.connected:
                continue
            try:
                await self.check_streams()
            except (StoreUnavailable, JsApiError) as exc:
                log.debug("stream check failed", extra=kv(error=str(exc)))

    async def check_streams(self) -> None:
        """Both streams still there? A missing one makes the store unusable (said by
        `health()` and every refused request) until it is back; one created anew (by an
        operator, or another daemon started with --accept-new-streams) is adopted: the
        event log's head follows it, even backwards, and the state's caches go."""
        found = {name: await self._created(name) for name in self._stream_names()}
        missing = [name for name, created in found.items() if created is None]
        if missing:
            if self._gone is None:
                self._gone = (
                    f"the JetStream stream{'s' if len(missing) > 1 else ''} "
                    f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} gone from "
                    f"{self.client.server_url()} (the server's storage wiped, or deleted): "
                    "nothing can be stored or delivered; restart eventstreamd with "
                    "--accept-new-streams to begin again with empty streams")
                log.error("the JetStream streams are gone", extra=kv(
                    streams=",".join(missing), server=self.client.server_url()))
            return
        events_created, state_created = (found[name] for name in self._stream_names())
        if events_created != self.events.created:
            await self.events.info()  # adopts the new stream and its head
        if state_created and state_created != self.state.created:
            log.warning("the state stream was replaced: integrations, cursors and logs are "
                        "read from the new one", extra=kv(stream=self.state.subjects.stream,
                                                         created=state_created))
            self.state.replaced(state_created)
        if self._gone is not None:
            log.warning("the JetStream streams are there again", extra=kv(
                server=self.client.server_url()))
            self._gone = None
        self._remember_streams()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                await self.events.close(grace=2 * self.client.timeout + 1)
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self.client.close()

    def health(self) -> StoreHealth:
        health = self.client.health()
        if self._gone is not None and health.connected:
            return dataclasses.replace(health, error=self._gone)
        return health

    # ------------------------------------------------------------ outage rules

    async def _now(self, operation: Callable[[], Awaitable[T]]) -> T:
        """An API or publish path operation: fails at once while NATS is away."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        if not self.client.connected:
            raise StoreUnavailable(f"NATS is not reachable ({self.client.health().error})")
        if self._gone is not None:
            raise StoreUnavailable(self._gone)
        try:
            return await operation()
        except JsApiError as exc:
            raise StoreUnavailable(f"JetStream refused the request: {exc}") from None

    async def _patient(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A sink's operation: waits for NATS to come back (bounded), re-sends after no answer."""
        deadline = time.monotonic() + OUTAGE_PATIENCE
        while True:
            if self._closing:
                raise StoreUnavailable("the store is closing")
            left = deadline - time.monotonic()
            if not self.client.connected and not await self.client.wait_connected(max(0, left)):
                raise StoreUnavailable(
                    f"NATS has not been reachable for {OUTAGE_PATIENCE:g}s "
                    f"({self.client.health().error})")
            try:
                return await operation()
            except (NotSent, Unknown) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.debug("store operation waits for NATS", extra=kv(error=str(exc)))
            except JsApiError as exc:
                if exc.code != 503 or time.monotonic() >= deadline:
                    raise StoreUnavailable(f"JetStream refused the request: {exc}") from None
            await anyio.sleep(RETRY_PAUSE)

    async def _cached(self, read: Callable[[], Awaitable[T]], remember: Callable[[T], None],
                      last_seen: Callable[[], T]) -> T:
        """A read the status and the supervisor make: NATS's answer when it gives one
        (remembered), else the last answer seen, so an outage shows the last state."""
        if self.client.connected:
            try:
                found = await read()
            except (NotSent, Unknown, JsApiError):
                pass
            else:
                remember(found)
                return found
        return last_seen()

    async def _fresh_head(self) -> int:
        try:
            await self.events.poll()
        except (StoreUnavailable, JsApiError):
            pass
        return self.events.head

    # ------------------------------------------------------------------ events

    @property
    def head(self) -> int:
        return self.events.head

    @property
    def log_epoch(self) -> int:
        return self.events.epoch

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        return await self.events.wait_for_head(after, max_wait)

    async def append(self, events: Sequence[NewEvent]) -> tuple[int, int]:
        if self._closing:
            raise StoreUnavailable("the store is closing")
        if self._gone is not None:
            raise StoreUnavailable(self._gone)
        epoch = self.events.epoch
        first, last = await self.events.append(events)
        if self.events.epoch == epoch == self._counts_epoch:
            self._counts.note(first, [event.name for event in events])
        return first, last

    async def read_events(self, from_seq: int, limit: int,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:
        return await self._patient(lambda: self.events.read(from_seq, limit, max_bytes))

    async def first_seq(self) -> int:
        return await self._now(self.events.first_seq)

    async def resume_past_head(self, position: int) -> int | None:
        """Asks the stream itself (the cached head may lag behind another daemon's
        appends). The head goes back only when the stream was replaced, and nothing in
        a new stream was delivered before: a reader past its head starts at its
        first event."""
        state = await self._patient(self.events.info)
        if position <= self.events.head + 1:
            return None
        # From the snapshot, not the cached head: an append acknowledged while the info
        # was on its way (the head moved past it) must not be skipped.
        return (state.first_seq or 1) if state.messages else state.last_seq + 1

    async def seq_at_or_after(self, ingested_ms: int) -> int:
        return await self._now(lambda: self.events.seq_at_or_after(ingested_ms))

    async def last_ingested_ms(self) -> int:
        return await self._patient(self.events.last_ingested_ms)

    async def prune(self, cutoff_ms: int) -> int:
        return 0  # the stream's max_age: JetStream expires events itself

    async def count_events(self, from_seq: int, end_seq: int,
                           matches: Callable[[str], bool] | None = None) -> int:
        return await self._now(lambda: self._count_events(from_seq, end_seq, matches))

    async def _count_events(self, from_seq: int, end_seq: int,
                            matches: Callable[[str], bool] | None) -> int:
        if self._counts_epoch != self.events.epoch:  # the log was replaced
            self._counts.clear()
            self._counts_epoch = self.events.epoch
        start = max(from_seq, await self.events.first_seq())
        end = min(end_seq, self.events.head + 1)
        if start >= end:
            return 0
        if matches is None:
            return end - start  # contiguous: the stream only expires a prefix
        matcher = NameMatcher(matches)
        edges, whole = split(start, end)
        total = 0
        for bucket in whole:
            counts = self._counts.complete(bucket)
            if counts is None:
                counts = tally(await self._names(bucket_start(bucket),
                                                 bucket_start(bucket + 1)))
                if sum(counts.values()) == BUCKET:  # none expired meanwhile
                    self._counts.put(bucket, counts)
            total += matcher.count(counts)
        for low, high in edges:
            total += sum(map(matcher, await self._names(low, high)))
        return total

    async def _names(self, low: int, high: int) -> list[str]:
        """The names of events `low` .. `high - 1`, read from the stream."""
        names: list[str] = []
        position = low
        while position < high:
            batch = await self.events.read(position, min(COUNT_READ, high - position),
                                           8 * 1024 * 1024)
            names += [e.name for e in batch if e.seq < high]
            if not batch:
                break
            position = batch[-1].seq + 1
        return names

    async def stats(self) -> StoreStats:
        return await self._now(self.events.store_stats)

    # ------------------------------------------------------------ integrations

    async def list_integrations(self) -> list[Integration]:
        def remember(found: list[Integration]) -> None:
            self._records = {i.id: i for i in found}

        return await self._cached(self.state.list_integrations, remember,
                                  lambda: sorted(self._records.values(), key=lambda i: i.id))

    async def get_integration(self, integration_id: str) -> Integration | None:
        async def read() -> Integration | None:
            found = await self.state.get_integration(integration_id)
            return None if found is None else found[0]

        def remember(found: Integration | None) -> None:
            if found is None:
                self._records.pop(integration_id, None)
            else:
                self._records[integration_id] = found

        return await self._cached(read, remember,
                                  lambda: self._records.get(integration_id))

    async def create_integration(self, integration: Integration, *, cursor: int, limit: int,
                                 log: LogEntry) -> None:
        await self._now(lambda: self.state.create_integration(
            integration, cursor=cursor, limit=limit, log=log))
        self._records[integration.id] = integration
        self._cursors[integration.id] = cursor
        self._rejected[integration.id] = 0

    async def change_integration(self, integration_id: str, change: Transition) -> Integration:
        result, _ = await self._now(lambda: self.state.change_integration(
            integration_id, change, self._fresh_head))
        self._records[integration_id] = result.integration
        if result.cursor is not None:
            self._cursors[integration_id] = result.cursor
        return result.integration

    async def delete_integration(self, integration_id: str,
                                 incarnation: str | None = None) -> bool:
        deleted = await self._now(
            lambda: self.state.delete_integration(integration_id, incarnation))
        if deleted:
            for cache in (self._records, self._cursors, self._rejected):
                cache.pop(integration_id, None)
        return deleted

    # ------------------------------------------------- per-integration, fenced

    async def get_cursor(self, integration_id: str) -> int | None:
        def remember(cursor: int | None) -> None:
            if cursor is not None:
                self._cursors[integration_id] = cursor

        return await self._cached(lambda: self.state.get_cursor(integration_id), remember,
                                  lambda: self._cursors.get(integration_id))

    async def set_cursor(self, fence: Fence, next_seq: int) -> bool:
        written = await self._patient(lambda: self.state.write_fenced(
            fence, CURSOR, str(next_seq).encode()))
        if written:
            self._cursors[fence.integration_id] = next_seq
        return written

    async def get_sink_state(self, integration_id: str) -> dict[str, object] | None:
        return await self._patient(lambda: self.state.get_sink_state(integration_id))

    async def put_sink_state(self, fence: Fence, state: dict[str, object]) -> bool:
        data: bytes = msgpack.packb(state)
        return await self._patient(lambda: self.state.write_fenced(fence, SINK_STATE, data))

    async def add_log(self, fence: Fence, entry: LogEntry) -> bool:
        return await self._patient(lambda: self.state.add_log(fence, entry))

    async def get_replay_progress(self, integration_id: str,
                                  replay_id: str) -> ReplayProgress | None:
        return await self._patient(
            lambda: self.state.get_replay_progress(integration_id, replay_id))

    async def list_replay_progress(self, integration_id: str) -> dict[str, ReplayProgress]:
        return await self._now(lambda: self.state.list_replay_progress(integration_id))

    async def set_replay_progress(self, fence: Fence, replay_id: str,
                                  progress: ReplayProgress) -> bool:
        return await self._patient(
            lambda: self.state.set_replay_progress(fence, replay_id, progress))

    async def get_replay_state(self, integration_id: str,
                               replay_id: str) -> dict[str, object] | None:
        return await self._patient(
            lambda: self.state.get_replay_state(integration_id, replay_id))

    async def put_replay_state(self, fence: Fence, replay_id: str,
                               state: dict[str, object]) -> bool:
        return await self._patient(lambda: self.state.put_replay_state(fence, replay_id, state))

    async def list_logs(self, integration_id: str, limit: int) -> list[LogEntry]:
        return await self._now(lambda: self.state.list_logs(integration_id, limit))

    async def add_rejected(self, fence: Fence, entry: RejectedEvent, log: LogEntry) -> bool:
        written, count = await self._patient(
            lambda: self.state.add_rejected(fence, entry, log))
        if written:
            self._rejected[fence.integration_id] = count
        return written

    async def list_rejected(self, integration_id: str) -> list[RejectedEvent]:
        entries = await self._now(lambda: self.state.list_rejected(integration_id))
        self._rejected[integration_id] = len(entries)
        return entries

    async def get_rejected(self, integration_id: str, rejected_id: str) -> RejectedEvent | None:
        return await self._now(lambda: self.state.get_rejected(integration_id, rejected_id))

    async def count_rejected(self, integration_id: str) -> int:
        async def read() -> int:
            return len(await self.state.rejected_ids(integration_id))

        def remember(count: int) -> None:
            self._rejected[integration_id] = count

        return await self._cached(read, remember,
                                  lambda: self._rejected.get(integration_id, 0))

    async def cursors(self) -> dict[str, int]:
        def remember(found: dict[str, int]) -> None:
            self._cursors.update(found)

        return await self._cached(self.state.cursors, remember, lambda: dict(self._cursors))

    async def rejected_counts(self) -> dict[str, int]:
        """What this daemon wrote and read, and every integration's count read again at
        most every `COUNTS_FRESH` seconds (other daemons keep rejected events too)."""
        now = time.monotonic()
        if self._counts_read_at is None or now - self._counts_read_at >= COUNTS_FRESH:
            def remember(found: dict[str, int]) -> None:
                self._rejected = dict(found)
                self._counts_read_at = now

            await self._cached(self.state.rejected_counts, remember, dict)
        return {i: n for i, n in self._rejected.items() if n}

    async def delete_rejected(self, integration_id: str, rejected_id: str) -> bool:
        deleted, count = await self._now(
            lambda: self.state.delete_rejected(integration_id, rejected_id))
        self._rejected[integration_id] = count
        return deleted

    async def resolve_rejected(self, fence: Fence, rejected_id: str | None,
                               log: LogEntry) -> bool:
        written, count = await self._now(
            lambda: self.state.resolve_rejected(fence, rejected_id, log))
        if count is not None:
            self._rejected[fence.integration_id] = count
        return written

    async def claim_rejected(self, integration_id: str, rejected_id: str,
                             claim: RetryClaim) -> RejectedEvent | None:
        return await self._now(
            lambda: self.state.claim_rejected(integration_id, rejected_id, claim))

    async def update_rejected(self, fence: Fence, rejected_id: str, outcome: RetryOutcome,
                              log: LogEntry) -> bool:
        return await self._now(
            lambda: self.state.update_rejected(fence, rejected_id, outcome, log))
