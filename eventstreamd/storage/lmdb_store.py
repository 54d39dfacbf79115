"""The LMDB store: event log, integrations, cursors, integration logs, rejected events.

Decisions:
- One environment under `{data_dir}/lmdb` (the data dir is created 0700) with
  named databases: `events` (big-endian u64 seq -> msgpack event), `meta`,
  `integrations` (id -> msgpack record), `cursors` (id -> u64 next seq),
  `sink_state` (id -> msgpack, a sink's own bookkeeping),
  `logs` and `rejected` (id NUL u64 counter -> msgpack entry, so one prefix
  scan yields an integration's entries oldest first).
- Every write goes through the `LogWriter` (group commit). Reads open their own
  short read transactions; they are bounded (`limit`) so nothing ever loads a
  whole backlog.
- Sequence numbers start at 1 and never repeat: `meta.last_seq` survives
  pruning. Ingest times are made non-decreasing along the log by the writer,
  so "first event at or after time T" is a binary search over sequence
  numbers: O(log n) point reads, no scan and no second index to write.
- A full map or disk raises `StoreFull`; the failed transaction is aborted, so
  what was stored before stays intact and later writes succeed once space is
  freed (retention, deletes) or the map is grown (restart with a larger
  `storage.map_size`).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import lmdb

from ..logs import clean_text
from .records import (
    PackedEvent,
    StoredEvent,
    from_u64,
    ingested_at_of,
    pack,
    seal_event,
    u64,
    unpack,
    unpack_event,
)
from .writer import LogWriter

_LAST_SEQ = b"last_seq"
_LAST_INGEST = b"last_ingested_at"
_COUNTER = b"counter"


class StoreFull(Exception):
    """The LMDB map or the disk is full; nothing of the failed write was stored."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _prefix(integration_id: str) -> bytes:
    return integration_id.encode() + b"\x00"


class LmdbStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        map_size: int,
        log_entries: int = 50,
        rejected_events: int = 30,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_entries = log_entries
        self.rejected_events = rejected_events
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        # Made here: LMDB would create the directory with the *file* mode (0600),
        # which lacks the search bit, and then cannot open its own files in it
        # (root does not notice; the unprivileged user a service runs as does).
        (self.data_dir / "lmdb").mkdir(mode=0o700, exist_ok=True)
        self.env = lmdb.open(
            str(self.data_dir / "lmdb"),
            map_size=map_size,
            max_dbs=8,
            subdir=True,
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=512,
            mode=0o600,
        )
        self._events = self.env.open_db(b"events")
        self._meta = self.env.open_db(b"meta")
        self._integrations = self.env.open_db(b"integrations")
        self._cursors = self.env.open_db(b"cursors")
        self._logs = self.env.open_db(b"logs")
        self._rejected = self.env.open_db(b"rejected")
        self._sink_state = self.env.open_db(b"sink_state")
        self.writer = LogWriter(self.env)
        with self.env.begin() as txn:
            raw = txn.get(_LAST_SEQ, db=self._meta)
        self._head = from_u64(raw) if raw else 0
        self._head_moved = anyio.Event()
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the environment. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.env.close()

    # --------------------------------------------------------------------- head

    @property
    def head(self) -> int:
        """The sequence number of the newest committed event (0 when none ever was)."""
        return self._head

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        """Wait until the head moves past `after` (or `max_wait` passes); return the head."""
        with anyio.move_on_after(max_wait):
            while self._head <= after:
                await self._head_moved.wait()
        return self._head

    def _set_head(self, head: int) -> None:
        if head > self._head:
            self._head = head
            moved, self._head_moved = self._head_moved, anyio.Event()
            moved.set()

    # ------------------------------------------------------------------- writes

    async def write(self, job: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run a compound job in the next group commit (see the txn_* methods)."""
        try:
            return await self.writer.submit(job)
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

    async def append(self, events: list[PackedEvent]) -> tuple[int, int]:
        """Append events durably; return (first_seq, last_seq)."""
        first, last = await self.write(lambda txn: self.txn_append(txn, events))
        self._set_head(last)
        return first, last

    def txn_append(self, txn: lmdb.Transaction, events: list[PackedEvent]) -> tuple[int, int]:
        raw_seq = txn.get(_LAST_SEQ, db=self._meta)
        last_seq = from_u64(raw_seq) if raw_seq else 0
        raw_time = txn.get(_LAST_INGEST, db=self._meta)
        ingested = max(now_ms(), from_u64(raw_time) if raw_time else 0)
        first = last_seq + 1
        with txn.cursor(db=self._events) as cur:
            for offset, event in enumerate(events):
                cur.put(u64(first + offset), seal_event(event, ingested), append=True)
        last = first + len(events) - 1
        txn.put(_LAST_SEQ, u64(last), db=self._meta)
        txn.put(_LAST_INGEST, u64(ingested), db=self._meta)
        return first, last

    async def prune_before(self, cutoff_ms: int, chunk: int = 10_000) -> tuple[int, bool]:
        """Delete up to `chunk` of the oldest events ingested before `cutoff_ms`.

        Returns (deleted, more_to_do). Small chunks keep each transaction short so
        publishers never wait long behind retention.
        """
        return await self.write(lambda txn: self._txn_prune(txn, cutoff_ms, chunk))

    async def settle_freed_pages(self) -> None:
        """Make pages freed by the last commits reusable, by committing twice more.

        LMDB keeps the previous snapshot alive (its two meta pages), so pages freed
        by a commit can be reused only once two later commits happened. When the
        map is full, every append fails and aborts, nothing commits, and the space
        that retention just freed would stay out of reach: these two tiny commits
        hand it back.
        """
        for _ in range(2):
            await self.write(lambda txn: self._next_counter(txn))

    def _txn_prune(self, txn: lmdb.Transaction, cutoff_ms: int, chunk: int) -> tuple[int, bool]:
        deleted = 0
        with txn.cursor(db=self._events) as cur:
            if not cur.first():
                return 0, False
            while deleted < chunk:
                if ingested_at_of(cur.value()) >= cutoff_ms:
                    return deleted, False
                deleted += 1
                if not cur.delete():
                    return deleted, False
                if not cur.key():
                    return deleted, False
        return deleted, True

    def _next_counter(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_COUNTER, db=self._meta)
        value = (from_u64(raw) if raw else 0) + 1
        txn.put(_COUNTER, u64(value), db=self._meta)
        return value

    def txn_put_integration(self, txn: lmdb.Transaction, record: dict[str, Any]) -> None:
        txn.put(record["id"].encode(), pack(record), db=self._integrations)

    def txn_get_integration(
        self, txn: lmdb.Transaction, integration_id: str
    ) -> dict[str, Any] | None:
        """The record as this write transaction sees it (for check-then-write in one job)."""
        raw = txn.get(integration_id.encode(), db=self._integrations)
        return unpack(raw) if raw is not None else None

    def txn_get_cursor(self, txn: lmdb.Transaction, integration_id: str) -> int | None:
        raw = txn.get(integration_id.encode(), db=self._cursors)
        return from_u64(raw) if raw is not None else None

    def txn_head(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_LAST_SEQ, db=self._meta)
        return from_u64(raw) if raw else 0

    def txn_is_incarnation(self, txn: lmdb.Transaction, integration_id: str,
                           incarnation: str | None) -> bool:
        """True while the integration exists and is still the one a sink was started for."""
        record = self.txn_get_integration(txn, integration_id)
        return record is not None and record.get("incarnation") == incarnation

    def txn_count_integrations(self, txn: lmdb.Transaction) -> int:
        return int(txn.stat(self._integrations)["entries"])

    def txn_delete_integration(self, txn: lmdb.Transaction, integration_id: str) -> bool:
        existed = txn.delete(integration_id.encode(), db=self._integrations)
        txn.delete(integration_id.encode(), db=self._cursors)
        txn.delete(integration_id.encode(), db=self._sink_state)
        for db in (self._logs, self._rejected):
            self._delete_prefix(txn, db, _prefix(integration_id))
        return bool(existed)

    def txn_set_cursor(self, txn: lmdb.Transaction, integration_id: str, next_seq: int) -> None:
        txn.put(integration_id.encode(), u64(next_seq), db=self._cursors)

    def txn_put_sink_state(
        self, txn: lmdb.Transaction, integration_id: str, state: dict[str, Any]
    ) -> None:
        """A sink's own durable bookkeeping (the S3 sink's recorded files and watermarks)."""
        txn.put(integration_id.encode(), pack(state), db=self._sink_state)

    def txn_add_log(
        self, txn: lmdb.Transaction, integration_id: str, action: str, reason: str,
        created_at: str,
    ) -> None:
        key = _prefix(integration_id) + u64(self._next_counter(txn))
        # Reasons quote receivers and exceptions: scrub secrets before they are kept.
        entry = {"created_at": created_at, "action": action, "reason": clean_text(reason)}
        txn.put(key, pack(entry), db=self._logs)
        self._trim_prefix(txn, self._logs, _prefix(integration_id), self.log_entries)

    def txn_add_rejected(
        self, txn: lmdb.Transaction, integration_id: str, entry: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Store a rejected event (replacing one with the same id); return those pushed out."""
        prefix = _prefix(integration_id)
        with txn.cursor(db=self._rejected) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    if unpack(value)["id"] == entry["id"]:
                        txn.delete(key, db=self._rejected)
                        break
        txn.put(prefix + u64(self._next_counter(txn)), pack(entry), db=self._rejected)
        return [unpack(v) for v in self._trim_prefix(txn, self._rejected, prefix,
                                                      self.rejected_events)]

    def txn_delete_rejected(
        self, txn: lmdb.Transaction, integration_id: str, rejected_id: str
    ) -> bool:
        for key, value in self._scan_prefix(txn, self._rejected, _prefix(integration_id)):
            if unpack(value)["id"] == rejected_id:
                return bool(txn.delete(key, db=self._rejected))
        return False

    @staticmethod
    def _scan_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with txn.cursor(db=db) as cur:
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append((key, value))
        return out

    def _delete_prefix(self, txn: lmdb.Transaction, db: Any, prefix: bytes) -> None:
        for key, _ in self._scan_prefix(txn, db, prefix):
            txn.delete(key, db=db)

    def _trim_prefix(self, txn: lmdb.Transaction, db: Any, prefix: bytes, keep: int) -> list[bytes]:
        """Keep the newest `keep` entries under a prefix; return the values removed."""
        entries = self._scan_prefix(txn, db, prefix)
        removed = entries[: max(0, len(entries) - keep)]
        for key, _ in removed:
            txn.delete(key, db=db)
        return [value for _, value in removed]

    # -------------------------------------------------------------------- reads

    def last_ingested_ms(self) -> int:
        """The ingest time stamped on the newest commit (0 before the first)."""
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(_LAST_INGEST)
        return from_u64(raw) if raw else 0

    def first_seq(self) -> int:
        """The oldest stored sequence number, or head + 1 when the log is empty."""
        with self.env.begin(db=self._events) as txn, txn.cursor() as cur:
            return from_u64(cur.key()) if cur.first() else self._head + 1

    def count_events(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._events)["entries"])

    def read_events(self, from_seq: int, limit: int,
                    max_bytes: int = 8 * 1024 * 1024) -> list[StoredEvent]:
        """Events with seq >= from_seq, oldest first: at most `limit` of them, and no more
        than about `max_bytes` of stored data (always at least one event)."""
        out: list[StoredEvent] = []
        size = 0
        with self.env.begin(db=self._events) as txn, txn.cursor() as cur:
            if not cur.set_range(u64(from_seq)):
                return out
            for key, value in cur:
                out.append(unpack_event(from_u64(key), value))
                size += len(value)
                if len(out) >= limit or size >= max_bytes:
                    break
        return out

    def seq_at_or_after(self, ingested_ms: int) -> int:
        """The first seq ingested at or after `ingested_ms` (head + 1 if none): binary search."""
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

    def get_integration(self, integration_id: str) -> dict[str, Any] | None:
        with self.env.begin(db=self._integrations) as txn:
            raw = txn.get(integration_id.encode())
        return unpack(raw) if raw is not None else None

    def list_integrations(self) -> list[dict[str, Any]]:
        with self.env.begin(db=self._integrations) as txn:
            return [unpack(v) for _, v in txn.cursor()]

    def get_sink_state(self, integration_id: str) -> dict[str, Any] | None:
        with self.env.begin(db=self._sink_state) as txn:
            raw = txn.get(integration_id.encode())
        return unpack(raw) if raw is not None else None

    def get_cursor(self, integration_id: str) -> int | None:
        with self.env.begin(db=self._cursors) as txn:
            raw = txn.get(integration_id.encode())
        return from_u64(raw) if raw is not None else None

    def list_logs(self, integration_id: str) -> list[dict[str, Any]]:
        """The integration's log entries, newest first."""
        with self.env.begin() as txn:
            entries = self._scan_prefix(txn, self._logs, _prefix(integration_id))
        return [unpack(v) for _, v in reversed(entries)]

    def list_rejected(self, integration_id: str) -> list[dict[str, Any]]:
        """The integration's rejected events, newest first."""
        with self.env.begin() as txn:
            entries = self._scan_prefix(txn, self._rejected, _prefix(integration_id))
        return [unpack(v) for _, v in reversed(entries)]

    def count_rejected(self, integration_id: str) -> int:
        """How many rejected events an integration holds, without unpacking them."""
        prefix = _prefix(integration_id)
        count = 0
        with self.env.begin(db=self._rejected) as txn, txn.cursor() as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    count += 1
        return count

    def get_rejected(self, integration_id: str, rejected_id: str) -> dict[str, Any] | None:
        for entry in self.list_rejected(integration_id):
            if entry["id"] == rejected_id:
                return entry
        return None
