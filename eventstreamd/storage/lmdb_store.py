"""The LMDB store: the embedded backend of the `Store` interface (storage/base.py).

Decisions:
- One environment under `{data_dir}/lmdb` (both made 0700 here: LMDB would
  create the directory with the *file* mode, 0600, which lacks the search bit
  an unprivileged owner needs) with named databases: `events` (u64 seq ->
  format-2 record, see records.py), `meta`, `integrations` (id -> msgpack of
  the codec's store form), `cursors` (id -> u64 next seq), `sink_state` (id ->
  msgpack), `logs` and `rejected` (id NUL u64 counter -> msgpack entry, so one
  prefix scan yields an integration's entries oldest first), `replay_progress`
  and `replay_state` (id NUL replay id -> msgpack), and `name_counts` (u64
  bucket + name -> u64: how many events of that bucket have that name,
  written by the append that writes them; `counts.py`).
- The store owns its writer (`LogWriter`: one thread, group commit) and opens
  and closes it as one async context, as datasette's `Database` owns its
  write thread. Every write is a job in the next group commit; reads open
  their own short read transactions and are bounded (`limit`, `max_bytes`).
  Appends are folded: every request waiting for the next commit is stored by
  one job (`_store_appends`), which counts the map's room and reads and
  writes the head once per commit: a thousand one-event requests a second
  cost the writer's thread (and the GIL it shares with the event loop) a
  put each, not a transaction's bookkeeping each.
- Fenced writes check the integration's incarnation inside the same write
  transaction, so a sink's write and a DELETE can never interleave.
- Sequence numbers start at 1 and never repeat: `meta.last_seq` survives
  pruning. Ingest times are made non-decreasing along the log by the writer,
  so "first event at or after time T" is a binary search: O(log n) point reads.
- A data dir restored from an older copy may hold cursors past its head;
  `resume_past_head` sends such a reader to what came after the open.
- Status and /metrics read every integration every second: a record unchanged
  since the last list is not decoded again (kept with its stored bytes), and
  the rejected counts are counted once and kept, an integration counted
  again after a write touched its rejected events (exact: one process owns
  the data dir).
- A full map or disk raises `StoreFull`; the failed transaction is aborted, so
  what was stored before stays intact and later writes succeed once space is
  freed (retention, deletes) or the map is grown (restart with a larger
  `storage.map_size`).
- Appends stop short of the map's end: they are refused (`StoreFull`) once
  less than `reserve` (1% of the map, 256 KiB to 64 MiB) would be left, so
  everything else — stopping, starting or deleting an integration, cursors,
  logs, rejected events, pruning — still finds pages when publishing has
  filled the map (LMDB needs fresh pages for any write, however small). The
  room is counted from the databases' own page counts (`_txn_room`), which
  pages freed by retention or deletes leave at once.
- Format: `meta.format` is 2. A log written in format 1 (a msgpack map per
  event) is migrated when the store opens, in chunks of one transaction each
  (each record tells its own format, so an interrupted migration resumes);
  progress is logged. A format newer than this version knows is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import lmdb
from anyio.abc import TaskGroup

from .. import codec
from ..codec import TargetTypes
from ..logs import kv
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
)
from ..timeouts import move_on_after
from .base import (
    NO_TARGETS,
    IntegrationExists,
    IntegrationLimitReached,
    IntegrationMissing,
    RetryInProgress,
    StoreFormatError,
    StoreFull,
    StoreHealth,
    StoreOpenError,
    StoreStats,
    StoreUnavailable,
    Transition,
    kept_log,
    rejected_dropped_log,
)
from .counts import NameMatcher, bucket_of, bucket_start, split
from .records import (
    FORMAT,
    V1_TAG,
    decode_event,
    decode_v1,
    encode_event,
    from_u64,
    ingested_at_of,
    name_of,
    pack,
    u64,
    unpack,
)
from .writer import LogWriter, Txn, WriterClosed

log = logging.getLogger("eventstreamd.store")

_LAST_SEQ = b"last_seq"
_LAST_INGEST = b"last_ingested_at"
_COUNTER = b"counter"
_FORMAT = b"format"
_COUNTED_FROM = b"counted_from"  # the first seq the name counts hold (see counts.py)
PRUNE_CHUNK = 5_000
# Room appends leave for every other write (1% of the map, within these bounds).
RESERVE_MIN = 256 * 1024
RESERVE_MAX = 64 * 1024 * 1024
MIGRATE_CHUNK = 10_000
T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# An append waiting for its group commit: the events, and where its outcome goes (the
# first and last seq, or the exception its caller raises).
_Append = tuple[Sequence[NewEvent], "asyncio.Future[tuple[int, int] | Exception]"]


def _prefix(integration_id: str) -> bytes:
    return integration_id.encode() + b"\x00"


def _replay_key(integration_id: str, replay_id: str) -> bytes:
    return _prefix(integration_id) + replay_id.encode()


def _progress(raw: dict[str, Any]) -> ReplayProgress:
    return ReplayProgress(int(raw["cursor"]), int(raw["delivered"]))


def _count_prefix(cur: lmdb.Cursor, prefix: bytes) -> int:
    count, size = 0, len(prefix)
    if cur.set_range(prefix):
        for key in cur.iternext(keys=True, values=False):
            if key[:size] != prefix:
                break
            count += 1
    return count


class LmdbStore:
    # One daemon owns the data dir (it is locked): it delivers every integration.
    leases: None = None

    def __init__(self, data_dir: Path, *, map_size: int, targets: TargetTypes = NO_TARGETS,
                 log_entries: int = 50, rejected_events: int = 30) -> None:
        self.data_dir = Path(data_dir)
        self.targets = targets
        self.log_entries = log_entries
        self.rejected_events = rejected_events
        self.map_size = map_size
        try:
            self._open()
        except lmdb.Error as exc:
            raise StoreOpenError(str(exc)) from exc
        self._head_moved: anyio.Event | None = None  # made by the first waiter
        self._tg: TaskGroup | None = None
        self._closed = False

    def _open(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        (self.data_dir / "lmdb").mkdir(mode=0o700, exist_ok=True)
        self.env = lmdb.open(
            str(self.data_dir / "lmdb"), map_size=self.map_size, max_dbs=12, subdir=True,
            sync=True, metasync=True, readahead=False, max_readers=512, mode=0o600,
        )
        self._events = self.env.open_db(b"events")
        self._meta = self.env.open_db(b"meta")
        self._integrations = self.env.open_db(b"integrations")
        self._cursors = self.env.open_db(b"cursors")
        self._logs = self.env.open_db(b"logs")
        self._rejected = self.env.open_db(b"rejected")
        self._sink_state = self.env.open_db(b"sink_state")
        self._replay_progress = self.env.open_db(b"replay_progress")
        self._replay_state = self.env.open_db(b"replay_state")
        self._name_counts = self.env.open_db(b"name_counts")
        self._all_dbs = (self.env.open_db(None), self._events, self._meta, self._integrations,
                         self._cursors, self._logs, self._rejected, self._sink_state,
                         self._replay_progress, self._replay_state, self._name_counts)
        self._page_size = int(self.env.stat()["psize"])
        self.reserve = min(RESERVE_MAX, max(RESERVE_MIN, self.map_size // 100))
        # Appends waiting for the next group commit (`_store_appends`); None once closing.
        self._appends: list[_Append] = []
        self._appends_lock = threading.Lock()  # the writer's thread takes them
        self._appending: anyio.Event | None = None
        self._room_txn: Txn | None = None  # the transaction `_room_left` was counted in
        self._room_left = 0
        # Read caches: decoded records by their stored bytes, exact rejected counts.
        self._decoded: dict[bytes, tuple[bytes, Integration]] = {}
        self._rejected_counts: dict[str, int] | None = None
        self._recount: set[str] = set()
        self.writer = LogWriter(self.env)
        try:
            self._check_format()
        except BaseException:
            self.env.close()
            raise
        with self.env.begin(write=True) as txn:
            self._head = self._txn_head(txn)
            raw = txn.get(_COUNTED_FROM, db=self._meta)
            if raw is None:  # new, or written before the counts existed: from here on
                txn.put(_COUNTED_FROM, u64(self._head + 1), db=self._meta)
            self._counted_from = from_u64(raw) if raw is not None else self._head + 1
        # What the log held when it was opened: a position past it was counted in a
        # longer copy of this log (the data dir was restored from an older backup).
        self._opened_head = self._head

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> LmdbStore:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.writer.run, name="lmdb-writer")
        self._appending = anyio.Event()
        self._tg.start_soon(self._store_appends, name="lmdb-appends")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.writer.close()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
        finally:
            self.close()

    def close(self) -> None:
        """Close the environment. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.env.close()

    # ------------------------------------------------------------------ format

    def _check_format(self) -> None:
        with self.env.begin() as txn:
            raw = txn.get(_FORMAT, db=self._meta)
            found = from_u64(raw) if raw else None
            has_events = txn.stat(self._events)["entries"] > 0
        if found is not None and found > FORMAT:
            raise StoreFormatError(
                f"{self.data_dir} was written by a newer eventstreamd (format {found}); this "
                f"version reads format {FORMAT}: run the newer version, or restore a backup")
        if found == FORMAT:
            return
        if has_events:
            self._migrate_v1()
        with self.env.begin(write=True) as txn:
            txn.put(_FORMAT, u64(FORMAT), db=self._meta)

    def _migrate_v1(self) -> None:
        started = time.monotonic()
        done = problems = 0
        position = b""
        log.info("migrating the event log to format 2", extra=kv(data_dir=str(self.data_dir)))
        while True:
            with self.env.begin(write=True) as txn, txn.cursor(db=self._events) as cur:
                found = cur.set_range(position) if position else cur.first()
                count = 0
                while found and count < MIGRATE_CHUNK:
                    key, value = cur.key(), cur.value()
                    if value[0] == V1_TAG:
                        event, ingested, problem = decode_v1(value)
                        problems += problem is not None
                        cur.put(key, encode_event(event, ingested, problem))
                        done += 1
                    count += 1
                    found = cur.next()
                position = cur.key() if found else b""
            if not found:
                break
            log.info("migrating the event log", extra=kv(migrated=done))
        log.info("event log migrated to format 2", extra=kv(
            events=done, undeliverable=problems, seconds=round(time.monotonic() - started, 1)))

    # --------------------------------------------------------------------- head

    @property
    def head(self) -> int:
        return self._head

    @property
    def log_epoch(self) -> int:
        return 0  # one process writes this log: it is never replaced under it

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        with move_on_after(max_wait):
            while self._head <= after:
                if self._head_moved is None:
                    self._head_moved = anyio.Event()
                await self._head_moved.wait()
        return self._head

    def _set_head(self, head: int) -> None:
        if head > self._head:
            self._head = head
            moved, self._head_moved = self._head_moved, None
            if moved is not None:
                moved.set()

    # ------------------------------------------------------------------- writes

    async def _write(self, job: Callable[[Txn], T]) -> T:
        """Run `job` in the next group commit; map LMDB's failures to the interface's."""
        try:
            return await self.writer.submit(job)
        except WriterClosed as exc:
            raise StoreUnavailable("the store is closing") from exc
        except lmdb.MapFullError as exc:
            raise StoreFull("the event store is full (storage.map_size reached)") from exc
        except lmdb.DiskError as exc:
            raise StoreFull("the disk under storage.data_dir is full") from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreFull("the disk under storage.data_dir is full") from exc
            raise
        except lmdb.Error as exc:
            # LMDB reports a short write at commit (ENOSPC included) as EIO. The
            # commit did not happen and the environment stays usable, so this is
            # "cannot store now", like a full map.
            if "Input/output error" in str(exc) or "No space left" in str(exc):
                raise StoreFull("cannot write to the disk under storage.data_dir "
                                "(full, or an I/O error)") from exc
            raise

    async def _fenced(self, fence: Fence, job: Callable[[Txn], object]) -> bool:
        def guarded(txn: Txn) -> bool:
            if not self._txn_holds(txn, fence):
                return False
            job(txn)
            return True

        return await self._write(guarded)

    async def append(self, events: Sequence[NewEvent]) -> tuple[int, int]:
        """Stored by the next group commit, with every other append waiting for it (see
        `_store_appends`)."""
        if self._appending is None:
            raise StoreUnavailable("the store is closing")
        future: asyncio.Future[tuple[int, int] | Exception] = (
            asyncio.get_running_loop().create_future())
        with self._appends_lock:
            self._appends.append((events, future))
        self._appending.set()
        stored = await future
        if isinstance(stored, Exception):
            raise stored
        return stored

    async def _store_appends(self) -> None:
        """The one task that hands the writer the waiting appends: one job per group
        commit takes every append waiting when it runs and stores each request's events
        in turn (all or nothing per request; one that does not fit is refused alone), so
        the room, the head and the ingest time are read and written once per commit, not
        once per request. Callers are answered here, on the loop, whatever happens to any
        one of them."""
        try:
            while True:
                assert self._appending is not None
                await self._appending.wait()
                self._appending = anyio.Event()
                await self._append_group()
        finally:
            self._appending = None
            self._fail_appends(self._take_appends(), StoreUnavailable("the store is closing"))

    async def _append_group(self) -> None:
        taken: list[_Append] | None = None

        def job(txn: Txn) -> list[tuple[int, int] | StoreFull]:
            nonlocal taken
            if taken is None:  # once: a job the writer runs again keeps what it took
                taken = self._take_appends()
            return [self._txn_append(txn, events) for events, _ in taken]

        try:
            # Shielded: a commit that started is answered, even while the store closes
            # (it closes the writer first, so this never waits long).
            with anyio.CancelScope(shield=True):
                outcomes = await self._write(job)
        except Exception as exc:
            self._fail_appends(taken if taken is not None else self._take_appends(), exc)
            return
        assert taken is not None
        stored = [o for o in outcomes if not isinstance(o, StoreFull)]
        if stored:
            self._set_head(max(last for _, last in stored))
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _take_appends(self) -> list[_Append]:
        with self._appends_lock:
            taken, self._appends = self._appends, []
        return taken

    @staticmethod
    def _fail_appends(appends: list[_Append], exc: Exception) -> None:
        for _, future in appends:
            if not future.done():
                future.set_result(exc)

    def _txn_append(self, txn: Txn, events: Sequence[NewEvent]) -> tuple[int, int] | StoreFull:
        # Returned, not raised: see create_integration.
        need = 2 * sum(len(e.body) + len(e.id) + len(e.name) + len(e.tenant) + 48
                       for e in events) + 4 * self._page_size
        room = self._room_in(txn)
        if room - need < self.reserve:
            return StoreFull("the event store is full (storage.map_size reached; the last "
                             f"{self.reserve // 1024:,} KiB are kept for integration changes, "
                             "cursors and logs)")
        last_seq = self._txn_head(txn)
        raw_time = txn.get(_LAST_INGEST, db=self._meta)
        ingested = max(now_ms(), from_u64(raw_time) if raw_time else 0)
        first = last_seq + 1
        with txn.cursor(db=self._events) as cur:
            for offset, event in enumerate(events):
                cur.put(u64(first + offset), encode_event(event, ingested), append=True)
        last = first + len(events) - 1
        self._txn_count_names(txn, first, events)
        txn.put(_LAST_SEQ, u64(last), db=self._meta)
        txn.put(_LAST_INGEST, u64(ingested), db=self._meta)
        self._room_left = room - need
        return first, last

    def _room_in(self, txn: Txn) -> int:
        """`_txn_room`, counted once per transaction: a group commit holding many appends
        (one event per request) counts the pages once and takes what each append may use
        (`need`, twice its bytes and four pages: more than it takes) off that."""
        if self._room_txn is not txn:
            self._room_txn, self._room_left = txn, self._txn_room(txn)
        return self._room_left
    async def prune(self, cutoff_ms: int) -> int:
        """Delete events ingested before `cutoff_ms`, `PRUNE_CHUNK` per transaction so
        publishers never wait long behind retention."""
        total = 0
        while True:
            deleted, more = await self._write(lambda txn: self._txn_prune(txn, cutoff_ms))
            total += deleted
            if not more:
                break
            await anyio.lowlevel.checkpoint()  # let waiting publishers in between chunks
        if total:
            await self._settle_freed_pages()
        return total

    async def _settle_freed_pages(self) -> None:
        """Make pages freed by the last commits reusable, by committing twice more.

        LMDB keeps the previous snapshot alive (its two meta pages), so pages freed
        by a commit can be reused only once two later commits happened. When the
        map is full, every append fails and aborts, nothing commits, and the space
        that retention just freed would stay out of reach: these two tiny commits
        hand it back.
        """
        for _ in range(2):
            await self._write(self._next_counter)

    def _txn_prune(self, txn: Txn, cutoff_ms: int) -> tuple[int, bool]:
        deleted = 0
        more = True
        with txn.cursor(db=self._events) as cur:
            if not cur.first():
                return 0, False
            while deleted < PRUNE_CHUNK:
                if ingested_at_of(cur.value()) >= cutoff_ms:
                    more = False
                    break
                deleted += 1
                if not cur.delete() or not cur.key():
                    more = False
                    break
            first = from_u64(cur.key()) if cur.key() else self._txn_head(txn) + 1
        # The counts of buckets removed whole go too (a bucket partly removed is an edge
        # of every range from now on: read, never counted from its counts).
        limit = u64(bucket_of(first))
        with txn.cursor(db=self._name_counts) as cur:
            found = cur.first()
            while found and cur.key() < limit:
                found = cur.delete() and bool(cur.key())
        return deleted, more

    # ------------------------------------------------------------------ counts

    def _txn_count_names(self, txn: Txn, first: int, events: Sequence[NewEvent]) -> None:
        """Add the appended events to their buckets' name counts."""
        counts: dict[bytes, int] = {}
        bucket = bucket_of(first)
        bucket_end = bucket_start(bucket + 1)
        prefix = u64(bucket)
        for seq, event in enumerate(events, first):
            if seq >= bucket_end:
                bucket = bucket_of(seq)
                bucket_end, prefix = bucket_start(bucket + 1), u64(bucket)
            key = prefix + event.name.encode()
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            raw = txn.get(key, db=self._name_counts)
            txn.put(key, u64(count + (from_u64(raw) if raw else 0)), db=self._name_counts)

    async def count_events(self, from_seq: int, end_seq: int,
                           matches: Callable[[str], bool] | None = None) -> int:
        # In a thread: a range written before the counts existed is read name by name.
        return await anyio.to_thread.run_sync(self._count_events, from_seq, end_seq, matches)

    def _count_events(self, from_seq: int, end_seq: int,
                      matches: Callable[[str], bool] | None) -> int:
        with self.env.begin() as txn:
            with txn.cursor(db=self._events) as cur:
                first = from_u64(cur.key()) if cur.first() else self._txn_head(txn) + 1
            head_end = self._txn_head(txn) + 1
            start, end = max(from_seq, first), min(end_seq, head_end)
            if start >= end:
                return 0
            if matches is None:
                return end - start  # contiguous: retention only removes a prefix
            matcher = NameMatcher(matches)
            edges, whole = split(start, end)
            counted = list(whole)
            # The head's bucket, when the range holds all of it there is so far: its
            # counts are written with its events, so they hold exactly that (a dry run
            # up to now reads no events at its end).
            if edges and edges[-1][1] == head_end and edges[-1][0] == bucket_start(
                    bucket_of(edges[-1][0])):
                counted.append(bucket_of(edges.pop()[0]))
            total = 0
            for bucket in counted:
                if bucket_start(bucket) < self._counted_from:
                    edges.append((bucket_start(bucket), min(bucket_start(bucket + 1), end)))
                    continue
                prefix = u64(bucket)
                for key, value in _iter_prefix(txn, self._name_counts, prefix):
                    if matcher(key[len(prefix):].decode()):
                        total += from_u64(value)
            for low, high in edges:
                total += self._txn_count_read(txn, low, high, matcher)
            return total

    def _txn_count_read(self, txn: Txn, low: int, high: int, matcher: NameMatcher) -> int:
        """Count `low` .. `high - 1` by reading each event's name (never its body)."""
        count = 0
        with txn.cursor(db=self._events) as cur:
            if not cur.set_range(u64(low)):
                return 0
            limit = u64(high)
            for key, value in cur:
                if key >= limit:
                    break
                count += matcher(name_of(value))
        return count

    # ------------------------------------------------------------- integrations

    async def create_integration(self, integration: Integration, *, cursor: int, limit: int,
                                 log: LogEntry) -> None:
        def job(txn: Txn) -> Exception | None:
            # A refusal is returned, not raised: raising would abort the whole group
            # commit and make the writer replay its neighbours one by one.
            if self._txn_get_integration(txn, integration.id) is not None:
                return IntegrationExists(integration.id)
            if txn.stat(self._integrations)["entries"] >= limit:
                return IntegrationLimitReached(limit)
            self._txn_put_integration(txn, integration)
            txn.put(integration.id.encode(), u64(cursor), db=self._cursors)
            self._txn_add_log(txn, integration.id, log)
            return None

        refused = await self._write(job)
        if refused is not None:
            raise refused

    async def change_integration(self, integration_id: str, change: Transition) -> Integration:
        def job(txn: Txn) -> Integration | BaseException:
            current = self._txn_get_integration(txn, integration_id)
            if current is None:
                return IntegrationMissing(integration_id)
            try:
                result: Change = change(current, ChangeView(
                    cursor=self._txn_cursor(txn, integration_id), head=self._txn_head(txn)))
            except Exception as exc:  # the rule refused: nothing is written
                return exc
            if result.integration != current:
                self._txn_put_integration(txn, result.integration)
            if result.cursor is not None:
                txn.put(integration_id.encode(), u64(result.cursor), db=self._cursors)
            for entry in result.logs:
                self._txn_add_log(txn, integration_id, entry)
            for replay_id in result.dropped_replays:
                key = _replay_key(integration_id, replay_id)
                txn.delete(key, db=self._replay_progress)
                txn.delete(key, db=self._replay_state)
            return result.integration

        outcome = await self._write(job)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def delete_integration(self, integration_id: str,
                                 incarnation: str | None = None) -> bool:
        key = integration_id.encode()

        def job(txn: Txn) -> bool:
            current = self._txn_get_integration(txn, integration_id)
            if current is None or (incarnation is not None
                                   and current.incarnation != incarnation):
                return False
            txn.delete(key, db=self._integrations)
            txn.delete(key, db=self._cursors)
            txn.delete(key, db=self._sink_state)
            for db in (self._logs, self._rejected, self._replay_progress, self._replay_state):
                for entry_key, _ in self._scan_prefix(txn, db, _prefix(integration_id)):
                    txn.delete(entry_key, db=db)
            return True

        try:
            return await self._write(job)
        finally:
            self._rejected_changed(integration_id)

    async def list_integrations(self) -> list[Integration]:
        """Every record; one unchanged since the last list is not decoded again (status
        lists them every second)."""
        decoded = self._decoded
        kept: dict[bytes, tuple[bytes, Integration]] = {}
        with self.env.begin(db=self._integrations) as txn:
            for key, raw in txn.cursor():
                known = decoded.get(key)
                if known is None or known[0] != raw:
                    known = (raw, codec.from_store(self.targets, unpack(raw)))
                kept[key] = known
        self._decoded = kept
        return [integration for _, integration in kept.values()]

    async def get_integration(self, integration_id: str) -> Integration | None:
        with self.env.begin() as txn:
            return self._txn_get_integration(txn, integration_id)

    # ------------------------------------------------- per-integration, fenced

    async def get_cursor(self, integration_id: str) -> int | None:
        with self.env.begin() as txn:
            return self._txn_cursor(txn, integration_id)

    async def set_cursor(self, fence: Fence, next_seq: int) -> bool:
        key, value = fence.integration_id.encode(), u64(next_seq)
        return await self._fenced(fence, lambda txn: txn.put(key, value, db=self._cursors))

    async def get_sink_state(self, integration_id: str) -> dict[str, object] | None:
        with self.env.begin(db=self._sink_state) as txn:
            raw = txn.get(integration_id.encode())
        return unpack(raw) if raw is not None else None

    async def put_sink_state(self, fence: Fence, state: dict[str, object]) -> bool:
        key, value = fence.integration_id.encode(), pack(state)
        return await self._fenced(fence, lambda txn: txn.put(key, value, db=self._sink_state))

    async def add_log(self, fence: Fence, entry: LogEntry) -> bool:
        return await self._fenced(
            fence, lambda txn: self._txn_add_log(txn, fence.integration_id, entry))

    async def get_replay_progress(self, integration_id: str,
                                  replay_id: str) -> ReplayProgress | None:
        with self.env.begin(db=self._replay_progress) as txn:
            raw = txn.get(_replay_key(integration_id, replay_id))
        return _progress(unpack(raw)) if raw is not None else None

    async def list_replay_progress(self, integration_id: str) -> dict[str, ReplayProgress]:
        prefix = _prefix(integration_id)
        with self.env.begin() as txn:
            found = self._scan_prefix(txn, self._replay_progress, prefix)
        return {key[len(prefix):].decode(): _progress(unpack(value)) for key, value in found}

    async def set_replay_progress(self, fence: Fence, replay_id: str,
                                  progress: ReplayProgress) -> bool:
        key = _replay_key(fence.integration_id, replay_id)
        value = pack({"cursor": progress.cursor, "delivered": progress.delivered})
        return await self._fenced(fence, lambda txn: txn.put(key, value,
                                                              db=self._replay_progress))

    async def get_replay_state(self, integration_id: str,
                               replay_id: str) -> dict[str, object] | None:
        with self.env.begin(db=self._replay_state) as txn:
            raw = txn.get(_replay_key(integration_id, replay_id))
        return unpack(raw) if raw is not None else None

    async def put_replay_state(self, fence: Fence, replay_id: str,
                               state: dict[str, object]) -> bool:
        key, value = _replay_key(fence.integration_id, replay_id), pack(state)
        return await self._fenced(fence, lambda txn: txn.put(key, value, db=self._replay_state))

    async def list_logs(self, integration_id: str, limit: int) -> list[LogEntry]:
        with self.env.begin() as txn:
            entries = self._scan_prefix(txn, self._logs, _prefix(integration_id))
        return [codec.log_from_store(unpack(v)) for _, v in reversed(entries)][:limit]

    async def add_rejected(self, fence: Fence, entry: RejectedEvent, log: LogEntry) -> bool:
        integration_id = fence.integration_id

        def job(txn: Txn) -> None:
            prefix = _prefix(integration_id)
            self._txn_delete_rejected(txn, integration_id, entry.id)
            txn.put(prefix + u64(self._next_counter(txn)), pack(codec.rejected_to_store(entry)),
                    db=self._rejected)
            self._txn_add_log(txn, integration_id, log)
            for dropped in self._trim_prefix(txn, self._rejected, prefix, self.rejected_events):
                self._txn_add_log(txn, integration_id, rejected_dropped_log(
                    log.created_at, unpack(dropped)["id"], self.rejected_events))

        try:
            return await self._fenced(fence, job)
        finally:
            self._rejected_changed(integration_id)

    async def list_rejected(self, integration_id: str) -> list[RejectedEvent]:
        with self.env.begin() as txn:
            entries = self._scan_prefix(txn, self._rejected, _prefix(integration_id))
        return [codec.rejected_from_store(unpack(v)) for _, v in reversed(entries)]

    async def get_rejected(self, integration_id: str,
                           rejected_id: str) -> RejectedEvent | None:
        for entry in await self.list_rejected(integration_id):
            if entry.id == rejected_id:
                return entry
        return None

    async def count_rejected(self, integration_id: str) -> int:
        with self.env.begin(db=self._rejected) as txn, txn.cursor() as cur:
            return _count_prefix(cur, _prefix(integration_id))

    async def cursors(self) -> dict[str, int]:
        with self.env.begin(db=self._cursors) as txn:
            return {key.decode(): from_u64(value) for key, value in txn.cursor()}

    async def rejected_counts(self) -> dict[str, int]:
        """Counted once, then kept: an integration whose rejected events a write touched
        is counted again (`_rejected_changed`), the others are known."""
        counts = self._rejected_counts
        with self.env.begin(db=self._rejected) as txn, txn.cursor() as cur:
            if counts is None:
                counts = {}
                for key in cur.iternext(keys=True, values=False):
                    integration_id = key.split(b"\x00", 1)[0].decode()
                    counts[integration_id] = counts.get(integration_id, 0) + 1
            else:
                for integration_id in self._recount:
                    count = _count_prefix(cur, _prefix(integration_id))
                    if count:
                        counts[integration_id] = count
                    else:
                        counts.pop(integration_id, None)
        self._rejected_counts = counts
        self._recount.clear()
        return dict(counts)

    def _rejected_changed(self, integration_id: str) -> None:
        """After a write to its rejected events (committed or refused): count it again."""
        self._recount.add(integration_id)

    async def delete_rejected(self, integration_id: str, rejected_id: str) -> bool:
        try:
            return await self._write(
                lambda txn: self._txn_delete_rejected(txn, integration_id, rejected_id))
        finally:
            self._rejected_changed(integration_id)

    async def resolve_rejected(self, fence: Fence, rejected_id: str | None,
                               log: LogEntry) -> bool:
        def job(txn: Txn) -> None:
            if rejected_id is not None:
                self._txn_delete_rejected(txn, fence.integration_id, rejected_id)
            self._txn_add_log(txn, fence.integration_id, log)

        try:
            return await self._fenced(fence, job)
        finally:
            self._rejected_changed(fence.integration_id)

    async def claim_rejected(self, integration_id: str, rejected_id: str,
                             claim: RetryClaim) -> RejectedEvent | None:
        def job(txn: Txn) -> RejectedEvent | RetryInProgress | None:
            key = self._txn_find_rejected(txn, integration_id, rejected_id)
            if key is None:
                return None
            entry = self._txn_rejected_at(txn, key)
            if not entry.claimable(claim.at_ms):
                assert entry.retry_claim is not None
                return RetryInProgress(entry.retry_claim)  # returned: see create_integration
            claimed = dataclasses.replace(entry, retry_claim=claim)
            txn.put(key, pack(codec.rejected_to_store(claimed)), db=self._rejected)
            return claimed

        outcome = await self._write(job)
        if isinstance(outcome, RetryInProgress):
            raise outcome
        return outcome

    async def update_rejected(self, fence: Fence, rejected_id: str, outcome: RetryOutcome,
                              log: LogEntry) -> bool:
        def job(txn: Txn) -> None:
            key = self._txn_find_rejected(txn, fence.integration_id, rejected_id)
            if key is not None:
                entry = self._txn_rejected_at(txn, key)
                txn.put(key, pack(codec.rejected_to_store(entry.after_retry(outcome))),
                        db=self._rejected)
            self._txn_add_log(txn, fence.integration_id, log)

        return await self._fenced(fence, job)

    # -------------------------------------------------------------------- reads

    async def read_events(self, from_seq: int, limit: int,
                          max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        size = 0
        with self.env.begin(db=self._events) as txn, txn.cursor() as cur:
            if not cur.set_range(u64(from_seq)):
                return out
            for key, value in cur:
                out.append(decode_event(from_u64(key), value))
                size += len(value)
                if len(out) >= limit or size >= max_bytes:
                    break
        return out

    async def first_seq(self) -> int:
        with self.env.begin(db=self._events) as txn, txn.cursor() as cur:
            return from_u64(cur.key()) if cur.first() else self._head + 1

    async def resume_past_head(self, position: int) -> int | None:
        """One process writes this log, so the head is exact. A position past it comes
        from a data dir restored from an older copy: what the copy held up to its head
        was in the log the position was counted in; what came after the open is new."""
        if position <= self._head + 1:
            return None
        return self._opened_head + 1

    async def last_ingested_ms(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(_LAST_INGEST)
        return from_u64(raw) if raw else 0

    async def seq_at_or_after(self, ingested_ms: int) -> int:
        with self.env.begin(db=self._events) as txn, txn.cursor() as cur:
            if not cur.first():
                return self._head + 1
            low = from_u64(cur.key())
            cur.last()
            high = from_u64(cur.key())
            if ingested_at_of(cur.value()) < ingested_ms:
                return high + 1
            # Sequence numbers are contiguous from `low` (pruning only removes a prefix).
            while low < high:
                mid = (low + high) // 2
                raw = txn.get(u64(mid))
                if raw is None or ingested_at_of(raw) < ingested_ms:
                    low = mid + 1
                else:
                    high = mid
            return low

    async def stats(self) -> StoreStats:
        info = self.env.info()
        with self.env.begin() as txn:
            events = int(txn.stat(self._events)["entries"])
            room = self._txn_room(txn)
        used = (info["last_pgno"] + 1) * self._page_size
        return StoreStats(events=events, first_seq=await self.first_seq(), head=self._head,
                          size_bytes=used, capacity_bytes=self.map_size,
                          free_bytes=max(0, room - self.reserve))

    def health(self) -> StoreHealth:
        return StoreHealth("lmdb", not self._closed)

    # ------------------------------------------------------------ txn helpers

    def _txn_room(self, txn: Txn) -> int:
        """Bytes the map has left: its size less the pages every database holds (and the
        two meta pages). Pages freed but not reusable yet count as room; the reserve is
        far larger than those."""
        used = 2
        for db in self._all_dbs:
            stat = txn.stat(db)
            used += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return self.map_size - used * self._page_size

    def _txn_head(self, txn: Txn) -> int:
        raw = txn.get(_LAST_SEQ, db=self._meta)
        return from_u64(raw) if raw else 0

    def _txn_cursor(self, txn: Txn, integration_id: str) -> int | None:
        raw = txn.get(integration_id.encode(), db=self._cursors)
        return from_u64(raw) if raw is not None else None

    def _txn_get_integration(self, txn: Txn, integration_id: str) -> Integration | None:
        raw = txn.get(integration_id.encode(), db=self._integrations)
        return codec.from_store(self.targets, unpack(raw)) if raw is not None else None

    def _txn_put_integration(self, txn: Txn, integration: Integration) -> None:
        txn.put(integration.id.encode(), pack(codec.to_store(integration)),
                db=self._integrations)

    def _txn_holds(self, txn: Txn, fence: Fence) -> bool:
        """The integration exists and is still the incarnation the fence names (a lease
        is a JetStream notion; one daemon owns every integration of its LMDB store)."""
        raw = txn.get(fence.integration_id.encode(), db=self._integrations)
        return raw is not None and unpack(raw).get("incarnation") == fence.incarnation

    def _next_counter(self, txn: Txn) -> int:
        raw = txn.get(_COUNTER, db=self._meta)
        value = (from_u64(raw) if raw else 0) + 1
        txn.put(_COUNTER, u64(value), db=self._meta)
        return value

    def _txn_add_log(self, txn: Txn, integration_id: str, entry: LogEntry) -> None:
        prefix = _prefix(integration_id)
        txn.put(prefix + u64(self._next_counter(txn)), pack(codec.log_to_store(kept_log(entry))),
                db=self._logs)
        self._trim_prefix(txn, self._logs, prefix, self.log_entries)

    def _txn_delete_rejected(self, txn: Txn, integration_id: str, rejected_id: str) -> bool:
        key = self._txn_find_rejected(txn, integration_id, rejected_id)
        return key is not None and bool(txn.delete(key, db=self._rejected))

    def _txn_rejected_at(self, txn: Txn, key: bytes) -> RejectedEvent:
        """The kept rejected event under `key` (found by `_txn_find_rejected`)."""
        raw = txn.get(key, db=self._rejected)
        assert raw is not None  # found in this same transaction
        return codec.rejected_from_store(unpack(raw))

    def _txn_find_rejected(self, txn: Txn, integration_id: str,
                           rejected_id: str) -> bytes | None:
        """The key of a kept rejected event, by its id."""
        for key, value in self._scan_prefix(txn, self._rejected, _prefix(integration_id)):
            if unpack(value)["id"] == rejected_id:
                return key
        return None

    @staticmethod
    def _scan_prefix(txn: Txn, db: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return list(_iter_prefix(txn, db, prefix))

    def _trim_prefix(self, txn: Txn, db: Any, prefix: bytes, keep: int) -> list[bytes]:
        """Keep the newest `keep` entries under a prefix; return the values removed."""
        entries = self._scan_prefix(txn, db, prefix)
        removed = entries[: max(0, len(entries) - keep)]
        for key, _ in removed:
            txn.delete(key, db=db)
        return [value for _, value in removed]


def _iter_prefix(txn: Txn, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    with txn.cursor(db=db) as cur:
        if not cur.set_range(prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield key, value
