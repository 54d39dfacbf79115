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
- `prune()` removes nothing: the stream's `max_age` is `storage.retention`
  and the server expires events itself, message by message.
"""

from __future__ import annotations

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
from ...model import Fence, Integration, LogEntry, NewEvent, RejectedEvent, StoredEvent
from ..base import NO_TARGETS, StoreHealth, StoreStats, StoreUnavailable, Transition
from .client import JsApiError, JsClient, NotSent, Unknown
from .events import EventLog
from .lease import JetStreamLeaseBook
from .state import StateStore
from .subjects import CURSOR, SINK_STATE

log = logging.getLogger("eventstreamd.jetstream")

OUTAGE_PATIENCE = 600.0  # seconds a sink's write or read waits for NATS to come back
RETRY_PAUSE = 0.25
T = TypeVar("T")


class JetStreamStore:
    def __init__(self, config: Config, targets: TargetTypes = NO_TARGETS) -> None:
        js = config.jetstream
        self.config = config
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
        return self

    async def _open_streams(self) -> None:
        """Create or check both streams and read the integrations. A stream that was
        just created (by this daemon or another one starting beside it) may not answer
        its first reads yet on a cluster (replicas still electing, direct-get
        responders not up): such answers, which carry no JetStream error code, are
        retried within `connect_timeout`; a refused setting fails at once, and no
        answer at all means JetStream is not enabled (the caller says so)."""
        deadline = time.monotonic() + self.client.config.connect_timeout
        while True:
            try:
                await self.events.open()
                await self.state.open()
                for integration in await self.state.list_integrations():
                    self._records[integration.id] = integration
                return
            except JsApiError as exc:
                if exc.err_code != 0 or time.monotonic() >= deadline:
                    raise
                log.info("streams not ready yet; trying again", extra=kv(error=str(exc)))
                await anyio.sleep(RETRY_PAUSE)

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
        return self.client.health()

    # ------------------------------------------------------------ outage rules

    async def _now(self, operation: Callable[[], Awaitable[T]]) -> T:
        """An API or publish path operation: fails at once while NATS is away."""
        if self._closing:
            raise StoreUnavailable("the store is closing")
        if not self.client.connected:
            raise StoreUnavailable(f"NATS is not reachable ({self.client.health().error})")
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

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        return await self.events.wait_for_head(after, max_wait)

    async def append(self, events: Sequence[NewEvent]) -> tuple[int, int]:
        if self._closing:
            raise StoreUnavailable("the store is closing")
        return await self.events.append(events)

    async def read_events(self, from_seq: int, limit: int,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:
        return await self._patient(lambda: self.events.read(from_seq, limit, max_bytes))

    async def first_seq(self) -> int:
        return await self._now(self.events.first_seq)

    async def seq_at_or_after(self, ingested_ms: int) -> int:
        return await self._now(lambda: self.events.seq_at_or_after(ingested_ms))

    async def last_ingested_ms(self) -> int:
        return await self._patient(self.events.last_ingested_ms)

    async def prune(self, cutoff_ms: int) -> int:
        return 0  # the stream's max_age: JetStream expires events itself

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

    async def update_rejected(self, fence: Fence, entry: RejectedEvent, log: LogEntry) -> bool:
        return await self._now(lambda: self.state.update_rejected(fence, entry, log))
