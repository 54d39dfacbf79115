"""The event log on JetStream: one stream, group-committed atomic batches, batched reads.

Decisions (numbers measured on this 2-core machine, R1 file storage,
`sync_interval: always`; raw figures in eventstreamd/storage/jetstream/__init__.py):
- Stream `{prefix}_events`, limits retention with `max_age` =
  `storage.retention` (the server prunes; `prune()` has nothing to do),
  `max_bytes` = `jetstream.max_bytes` with `discard: new` (a full stream
  refuses the whole batch, 10077 -> `StoreFull` -> 507, and harms nothing
  stored), `allow_atomic`, `allow_direct`, a 2-minute duplicate window.
  The stream sequence *is* the event's seq; the JetStream timestamp *is*
  its `ingested_at` (stamped by the stream leader in commit order, so
  non-decreasing along the log, which `seq_at_or_after` relies on).
- A message is `tag | len id | len tenant | len name | id | tenant | name |
  delivery body` (records.py's idea without the ingest time, which the
  server stamps). Sinks get the body bytes as sliced, never re-encoded. Tag
  1 is that layout; tag 2 adds the publishing request's W3C trace context
  (`trace.py`, 25 bytes) between the name and the body. Only events published
  with a `traceparent` use tag 2, so messages written before it existed are
  tag 1 and read as they always were.
- Group commit, as LMDB's writer: one task takes whatever appends are
  waiting (up to `jetstream.max_batch` events) and sends them as ONE atomic
  batch (nats-server >= 2.12, `allow_atomic`): all or nothing, one ack with
  the last seq and the count, so the seq range is `seq-count+1 .. seq` and
  is contiguous. One commit is in flight at a time: a batch costs 3-4
  fsyncs under `sync_interval: always` whatever its size (~50-80 commits/s
  here), so concurrency bought nothing measurable; a lone event is one
  plain publish (one fsync, ~0.7-1.8 ms, against 5-9 ms for a 1-message
  batch). A group that fails because the stream is full is retried one
  append at a time, so only what does not fit fails.
- Re-sending is safe: the commit message carries a daemon-generated
  `Nats-Msg-Id`, unique per append group. NOT the client's event id: event
  ids may repeat (LMDB stores a repeated id twice, and so do we), and one
  duplicate id fails a whole atomic batch (10201) — the other publishers
  sharing the group commit would fail with it. After an unanswered commit
  the same messages go again under a new batch id and the same msg id
  (within `2 x request_timeout`, well inside the duplicate window): either
  they commit now, or JetStream answers 10201 = "committed before", and the
  range is found by scanning the commit messages (`{prefix}.ev.c`) for that
  msg id. A request that never left (disconnected: nats-py fails at once
  with `pending_size=0`) is answered 503 at once.
- When the connection drops, appends still queued (never sent) are answered
  503 at once; only the commit in flight waits, for up to
  `2 x request_timeout`, to learn its outcome by re-sending.
- Requests larger than `max_batch` events (the server's atomic batch limit)
  are stored as consecutive atomic batches, each after the previous one
  (`Nats-Expected-Last-Sequence`, so the range stays contiguous): if a
  later batch fails, the request is answered 503/507 naming how many of its
  events were stored — the one place where "all or nothing" is weaker than
  LMDB's (raise the server's `limits.batch.max_msgs` and `max_batch` to
  keep it for larger requests).
- An event bigger than the server's `max_payload` (1 MiB by default) cannot
  be a message: refused with `EventTooLarge` (413) before anything is sent.
- Wake-ups: every batch's last message is published on `{prefix}.ev.c`
  (the others on `{prefix}.ev.m`), and the stream RePublishes only that
  subject, headers only, to `{prefix}.wake`: one wake per commit, sent by
  the server after the store, carrying the seq and the time. Measured:
  republishing every message and parsing the wakes in the daemon cut
  ingest from ~20k to ~11.5k events/s (the client parsed 60k wakes); one
  per batch costs nothing measurable. Core NATS may lose a wake (e.g.
  during a reconnect), so the head is also polled every `POLL_EVERY`
  seconds and right after every reconnect. The head is never assumed to
  move only by this daemon's appends. It goes back only when the stream was
  replaced (deleted and created anew: another `created` time in its
  STREAM.INFO, `adopt`); readers then find their position past the head.
- Reads: one batched `DIRECT.GET` (`seq`, `batch`, `max_bytes`) per read,
  no consumer state on the server; any replica may answer, so in a cluster
  an empty answer below the known head is re-asked a few times (a lagging
  follower catches up within milliseconds) before reading as empty.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from ...logs import kv
from ...model import NewEvent, StoredEvent
from ...timeouts import move_on_after
from ...timeutil import ms_to_iso
from ...trace import TRACE_SIZE
from ..base import EventTooLarge, StoreFull, StoreStats, StoreUnavailable
from .client import (
    DUPLICATE_MSG_ID,
    EXPECT_LAST_SEQ,
    MAX_BYTES,
    MSG_ID,
    SEQUENCE,
    TIME_STAMP,
    WRONG_LAST_SEQUENCE,
    JsApiError,
    JsClient,
    NotSent,
    Out,
    Unknown,
)
from .subjects import EventSubjects

log = logging.getLogger("eventstreamd.jetstream")

TAG = 1
TAG_TRACED = 2  # a trace context follows the name
_HEADER = struct.Struct(">BBBH")
HEADROOM = 512  # bytes of max_payload kept for the message's headers
MAX_GROUP_BYTES = 16 * 1024 * 1024  # one commit carries at most about this much
MAX_PENDING = 4096
POLL_EVERY = 2.0  # seconds between head checks (wakes can be lost)
DUPLICATE_WINDOW_NS = 120 * 10**9
LAG_RETRIES = (0.001, 0.004, 0.016)  # re-asks of an empty read below the head
SCAN_PAGES = 200  # pages of 256 commits searched for a re-sent batch
RESEND_PAUSE = 0.1  # seconds before re-sending a commit whose outcome is unknown
NOT_OURS = "this message was not written by eventstreamd; it cannot be delivered"


# --------------------------------------------------------------------- format


def encode(event: NewEvent) -> bytes:
    event_id, tenant, name = event.id.encode(), event.tenant.encode(), event.name.encode()
    trace = event.trace
    if trace:
        assert len(trace) == TRACE_SIZE
        return b"".join((_HEADER.pack(TAG_TRACED, len(event_id), len(tenant), len(name)),
                         event_id, tenant, name, trace, event.body))
    return b"".join((_HEADER.pack(TAG, len(event_id), len(tenant), len(name)),
                     event_id, tenant, name, event.body))


def decode(seq: int, ingested_at: int, raw: bytes) -> StoredEvent:
    try:
        tag, id_len, tenant_len, name_len = _HEADER.unpack_from(raw)
        if tag != TAG and tag != TAG_TRACED:
            raise ValueError(tag)
        a = _HEADER.size
        b = a + id_len
        c = b + tenant_len
        d = c + name_len
        trace, body_at = None, d
        if tag == TAG_TRACED:
            body_at = d + TRACE_SIZE
            trace = raw[d:body_at]
            if len(trace) != TRACE_SIZE:
                raise ValueError("short trace context")
        return StoredEvent(seq, raw[a:b].decode(), raw[b:c].decode(), raw[c:d].decode(),
                           ingested_at, raw[body_at:], None, trace)
    except (ValueError, struct.error, UnicodeDecodeError):
        return StoredEvent(seq, f"seq-{seq}", "unknown", "unknown.unknown", ingested_at,
                           b"{}", NOT_OURS)


_SECONDS: dict[str, int] = {}


def timestamp_ms(stamp: str) -> int:
    """Milliseconds since the epoch from JetStream's RFC 3339 UTC time stamp
    (`2026-11-28T12:49:26.170634892Z`; Go trims trailing zeros of the fraction)."""
    base = stamp[:19]
    seconds = _SECONDS.get(base)
    if seconds is None:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        seconds = _SECONDS[base] = calendar.timegm(
            (int(base[0:4]), int(base[5:7]), int(base[8:10]), int(base[11:13]),
             int(base[14:16]), int(base[17:19]), 0, 0, 0))
    millis = 0
    if len(stamp) > 20 and stamp[19] == ".":
        digits = stamp[20:23]
        end = next((i for i, ch in enumerate(digits) if not ch.isdigit()), len(digits))
        digits = digits[:end]
        millis = int(digits.ljust(3, "0")) if digits else 0
    return seconds * 1000 + millis


class StreamState(msgspec.Struct, frozen=True):
    """What this backend reads of a JetStream stream's `state` (STREAM.INFO and the
    answer to a create or update)."""

    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_ts: str = ""


def stream_state(info: dict[str, Any]) -> StreamState:
    """The `state` of a stream API answer, checked (JetStreamError when it is not one)."""
    try:
        return msgspec.convert(info.get("state") or {}, StreamState)
    except msgspec.ValidationError as exc:
        raise JsApiError(0, 0, f"a stream state that cannot be read: {exc}") from None


def _seq_of(msg: Msg) -> int:
    return int((msg.headers or {})[SEQUENCE])


# --------------------------------------------------------------------- writer


@dataclass
class _Append:
    payloads: list[bytes]
    future: asyncio.Future[tuple[int, int]]


class _Interleaved(Exception):
    """A continuation batch found another writer's events after its predecessor."""


@dataclass
class EventLog:
    client: JsClient
    prefix: str
    replicas: int
    retention: float
    max_batch: int
    max_bytes: int

    def __post_init__(self) -> None:
        subjects = EventSubjects.of(self.prefix)
        self.stream = subjects.stream
        self.every_subject = subjects.every
        self.more_subject = subjects.more
        self.commit_subject = subjects.commit
        self.wake_subject = subjects.wake
        self._head = 0
        self.created: str | None = None  # the stream's creation time: which stream it is
        self._moved = anyio.Event()
        self.epoch = 0  # times the stream was replaced under this daemon (`adopt`)
        self._last_ingest = (0, 0)  # (seq, ms) of the newest message whose time is known
        self._queue: asyncio.Queue[_Append | None] = asyncio.Queue(maxsize=MAX_PENDING)
        self._carry: _Append | None = None
        self._running = False
        self._stopping = False
        self._stopped = anyio.Event()
        self._poke = asyncio.Event()

    def stream_config(self) -> dict[str, Any]:
        return {
            "name": self.stream,
            "subjects": [self.every_subject],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "max_age": int(self.retention * 1e9),
            "max_bytes": self.max_bytes or -1,
            "discard": "new",
            "allow_atomic": True,
            "allow_direct": True,
            # JetStream refuses a duplicate window longer than max_age.
            "duplicate_window": min(DUPLICATE_WINDOW_NS, int(self.retention * 1e9)),
            "republish": {"src": self.commit_subject, "dest": self.wake_subject,
                          "headers_only": True},
        }

    async def open(self) -> None:
        self.adopt(await self.client.ensure_stream(self.stream_config()))
        await self.client.nc.subscribe(self.wake_subject, cb=self._on_wake)
        self.client.on_connection(self._connection_changed)

    def _connection_changed(self, connected: bool) -> None:
        if connected:
            self._poke.set()  # wakes may have been lost: look at the head now
            return
        # Appends still queued were never sent: answer them now (503) instead of after
        # the commit in flight, which waits for the server to come back.
        self._fail_pending(StoreUnavailable(
            f"NATS is not reachable ({self.client.health().error}); nothing was stored"))

    # ------------------------------------------------------------------ head

    @property
    def head(self) -> int:
        return self._head

    def _set_head(self, head: int) -> None:
        if head > self._head:
            self._head = head
            self._wake()

    def _wake(self) -> None:
        moved, self._moved = self._moved, anyio.Event()
        moved.set()

    def adopt(self, info: dict[str, Any]) -> bool:
        """Take the head from a STREAM.INFO answer. A stream created at another time than
        the one known is another stream (deleted and created anew): its head is taken
        even when it is lower, and waiting readers wake to find their position past it.
        True when the stream was replaced."""
        created = str(info.get("created") or "") or self.created
        last_seq = stream_state(info).last_seq
        replaced = self.created is not None and created != self.created
        self.created = created
        if replaced:
            log.warning("the event stream was replaced: another stream of that name, created "
                        "anew, is the log from now on", extra=kv(
                            stream=self.stream, created=created, head=last_seq,
                            previous_head=self._head))
            self._head = last_seq
            self._last_ingest = (0, 0)
            self.epoch += 1
            self._wake()
        else:
            self._set_head(last_seq)
        return replaced

    async def wait_for_head(self, after: int, max_wait: float | None = None) -> int:
        epoch = self.epoch
        with move_on_after(max_wait):
            while self._head <= after and self.epoch == epoch:
                await self._moved.wait()
        return self._head

    async def _on_wake(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            seq = int(headers[SEQUENCE])
            self._note_ingest(seq, headers)
        except (KeyError, ValueError):
            return
        self._set_head(seq)

    def _note_ingest(self, seq: int, headers: dict[str, str]) -> None:
        """Remember the server's time stamp of `seq` when it is the newest one seen."""
        if seq > self._last_ingest[0]:
            self._last_ingest = (seq, timestamp_ms(headers[TIME_STAMP]))

    async def poll(self) -> None:
        """Look at the newest commit: the head, however wakes fared."""
        msg = await self.client.direct_last(self.stream, self.commit_subject)
        if msg is not None:
            seq = _seq_of(msg)
            self._note_ingest(seq, msg.headers or {})
            self._set_head(seq)

    async def watch_head(self) -> None:
        """Poll every POLL_EVERY seconds, and at once after a reconnect."""
        while True:
            with move_on_after(POLL_EVERY):
                await self._poke.wait()
            self._poke.clear()
            if not self.client.connected:
                continue
            try:
                await self.poll()
            except (StoreUnavailable, JsApiError) as exc:
                log.debug("head poll failed", extra=kv(error=str(exc)))

    # ---------------------------------------------------------------- append

    async def append(self, events: Sequence[NewEvent]) -> tuple[int, int]:
        if not events:
            raise ValueError("nothing to append")
        payloads = [encode(e) for e in events]
        limit = self.client.max_payload - HEADROOM
        for index, payload in enumerate(payloads):
            if len(payload) > limit:
                raise EventTooLarge(
                    f"event {index} is {len(payload)} bytes stored; the NATS server takes "
                    f"messages up to {limit} (its max_payload, less headers)")
        if not self._running:
            raise StoreUnavailable("the store is closing")
        if not self.client.connected:
            raise StoreUnavailable(f"NATS is not reachable ({self.client.health().error})")
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Append(payloads, future))
        return await future

    async def run_writer(self, *,
                         task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        task_status.started()
        try:
            while not (self._stopping and self._carry is None and self._queue.empty()):
                item = self._carry or await self._queue.get()
                self._carry = None
                if item is None:  # close(): finish what is queued, then stop
                    self._stopping = True
                    continue
                group = [item]
                count, size = len(item.payloads), sum(map(len, item.payloads))
                while count < self.max_batch and size < MAX_GROUP_BYTES:
                    try:
                        nxt = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if nxt is None:
                        self._stopping = True
                        continue
                    if count + len(nxt.payloads) > self.max_batch:
                        self._carry = nxt
                        break
                    group.append(nxt)
                    count += len(nxt.payloads)
                    size += sum(map(len, nxt.payloads))
                # Not cancellable: a commit that started finishes (or times out), so no
                # publisher is left unsure whether its events are stored.
                with anyio.CancelScope(shield=True):
                    await self._commit_group(group)
        finally:
            self._running = False
            self._fail_pending()
            self._stopped.set()

    async def close(self, grace: float) -> None:
        """Commit what is queued (for up to `grace` seconds), then stop the writer."""
        if self._running:
            await self._queue.put(None)
            with move_on_after(grace):
                await self._stopped.wait()

    def _fail_pending(self, error: Exception | None = None) -> None:
        pending = [self._carry] if self._carry is not None else []
        self._carry = None
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                self._stopping = True
            else:
                pending.append(item)
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error or StoreUnavailable("the store is closing"))
        if self._stopping and self._running:
            self._queue.put_nowait(None)  # wake the writer so it sees the stop

    async def _commit_group(self, group: list[_Append]) -> None:
        try:
            if len(group) == 1 and len(group[0].payloads) > self.max_batch:
                ranges = [await self._commit_large(group[0].payloads)]
            else:
                first, _ = await self._commit([p for a in group for p in a.payloads])
                ranges = []
                for item in group:
                    ranges.append((first, first + len(item.payloads) - 1))
                    first += len(item.payloads)
        except StoreFull as exc:
            if len(group) > 1:  # one append too many: the others may still fit alone
                for item in group:
                    await self._commit_group([item])
                return
            _fail(group, exc)
            return
        except Exception as exc:
            _fail(group, exc)
            return
        for item, span in zip(group, ranges, strict=True):
            if not item.future.done():
                item.future.set_result(span)
        self._set_head(ranges[-1][1])

    async def _commit_large(self, payloads: list[bytes]) -> tuple[int, int]:
        first = last = 0
        done = 0
        for offset in range(0, len(payloads), self.max_batch):
            chunk = payloads[offset:offset + self.max_batch]
            try:
                start, last = await self._commit(chunk, expect_last=last or None)
            except (StoreFull, StoreUnavailable, _Interleaved) as exc:
                if not done:
                    if isinstance(exc, _Interleaved):
                        raise StoreUnavailable(str(exc)) from None
                    raise
                stored = (f"only the first {done} of the request's {len(payloads)} events "
                          f"were stored (seq {first}-{first + done - 1}): ")
                if isinstance(exc, StoreFull):
                    raise StoreFull(stored + str(exc)) from None
                raise StoreUnavailable(stored + str(exc)) from None
            first = first or start
            done += len(chunk)
            self._set_head(last)
        return first, last

    async def _commit(self, payloads: list[bytes],
                      expect_last: int | None = None) -> tuple[int, int]:
        """One atomic batch (or one publish): its (first, last) seq."""
        msg_id = uuid.uuid4().hex
        messages = [Out(self.more_subject, p) for p in payloads[:-1]]
        messages.append(Out(self.commit_subject, payloads[-1], {MSG_ID: msg_id}))
        if expect_last is not None:
            first = messages[0]
            messages[0] = Out(first.subject, first.data,
                              {**(first.headers or {}), EXPECT_LAST_SEQ: str(expect_last)})
        scan_from = self._head + 1
        timeout = self.client.timeout
        deadline = time.monotonic() + min(2 * timeout, 90.0)
        maybe_stored = False
        while True:
            try:
                ack = await self.client.commit(messages, uuid.uuid4().hex)
                return ack.first if not ack.duplicate else ack.seq - len(payloads) + 1, ack.seq
            except NotSent:
                if not maybe_stored:
                    raise
            except Unknown:
                maybe_stored = True
            except JsApiError as exc:
                if exc.err_code == DUPLICATE_MSG_ID and maybe_stored:
                    return await self._find_committed(msg_id, len(payloads), scan_from)
                if exc.err_code == MAX_BYTES:
                    raise StoreFull("the event stream is full (jetstream.max_bytes or the "
                                    "server's storage limit reached)") from None
                if exc.err_code == WRONG_LAST_SEQUENCE and expect_last is not None:
                    if maybe_stored:  # the first send may have been ours: look for it
                        try:
                            return await self._find_committed(msg_id, len(payloads),
                                                              scan_from)
                        except StoreUnavailable:
                            pass
                    raise _Interleaved("another writer's events came between two batches of "
                                       "this request") from None
                raise StoreUnavailable(f"JetStream refused the events: {exc}") from None
            left = deadline - time.monotonic()
            if left <= 0 or not await self.client.wait_connected(left):
                raise StoreUnavailable(
                    "JetStream did not acknowledge the events in time (they may or may not "
                    "be stored)")
            await anyio.sleep(RESEND_PAUSE)  # e.g. no stream leader yet: not in a tight loop
            log.info("re-sending an unacknowledged commit", extra=kv(events=len(payloads)))

    async def _find_committed(self, msg_id: str, count: int, scan_from: int) -> tuple[int, int]:
        """The range of a batch JetStream says it already holds (a re-send's 10201)."""
        position = scan_from
        for _ in range(SCAN_PAGES):
            msgs = await self.client.direct_batch(self.stream, {
                "seq": position, "next_by_subj": self.commit_subject, "batch": 256})
            for msg in msgs:
                if (msg.headers or {}).get(MSG_ID) == msg_id:
                    last = _seq_of(msg)
                    return last - count + 1, last
            if len(msgs) < 256:
                break
            position = _seq_of(msgs[-1]) + 1
        raise StoreUnavailable("JetStream holds the events but their sequence numbers were "
                               "not found")

    # ------------------------------------------------------------------ reads

    async def read(self, from_seq: int, limit: int, max_bytes: int) -> list[StoredEvent]:
        start = max(from_seq, 1)
        if start > self._head or limit <= 0:
            return []
        request = {"seq": start, "batch": limit, "max_bytes": max(1, max_bytes)}
        msgs = await self.client.direct_batch(self.stream, request)
        for delay in LAG_RETRIES:
            if msgs or start > self._head:
                break
            # Below the known head but nothing there: a follower that has not applied
            # the newest commit yet (cluster), or everything after `start` expired.
            await anyio.sleep(delay)
            msgs = await self.client.direct_batch(self.stream, request)
        out = []
        for msg in msgs:
            headers = msg.headers or {}
            out.append(decode(int(headers[SEQUENCE]), timestamp_ms(headers[TIME_STAMP]),
                              msg.data))
        return out

    async def info(self) -> StreamState:
        """The stream's state (the head taken from it, see `adopt`)."""
        info = await self.client.api(f"STREAM.INFO.{self.stream}")
        self.adopt(info)
        return stream_state(info)

    async def first_seq(self) -> int:
        state = await self.info()
        if not state.messages:  # the snapshot's: what was appended since comes after it
            return state.last_seq + 1
        return state.first_seq

    async def seq_at_or_after(self, ingested_ms: int) -> int:
        msg = await self.client.direct_get(self.stream, {"start_time": ms_to_iso(ingested_ms)})
        if msg is None:
            return self._head + 1
        return _seq_of(msg)

    async def last_ingested_ms(self) -> int:
        head = self._head
        if head == 0:
            return 0
        if self._last_ingest[0] >= head:
            return self._last_ingest[1]
        msg = await self.client.direct_get(self.stream, {"seq": head})
        if msg is None:  # expired: the stream still knows when its last message came
            stamp = (await self.info()).last_ts
            return timestamp_ms(stamp) if stamp[:1].isdigit() else self._last_ingest[1]
        self._note_ingest(head, msg.headers or {})
        return self._last_ingest[1]

    async def store_stats(self) -> StoreStats:
        state = await self.info()
        events, size = state.messages, state.bytes
        cap = self.max_bytes or None
        return StoreStats(
            events=events,
            first_seq=state.first_seq if events else self._head + 1,
            head=self._head, size_bytes=size, capacity_bytes=cap,
            free_bytes=max(0, cap - size) if cap else None)


def _fail(group: list[_Append], exc: BaseException) -> None:
    for item in group:
        if not item.future.done():
            item.future.set_exception(exc)
