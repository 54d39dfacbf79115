"""Leases: which daemon delivers which integration, when several share one JetStream.

Decisions:
- Where: in the state stream, not in a KV bucket of their own. A KV bucket
  is a stream too, but fenced writes must be able to say "the lease is still
  the one I claimed" in the same atomic batch as the cursor, the log line or
  the rejected event they write, and a JetStream batch (and a subject-sequence
  expectation) cannot reach into another stream. So an integration's lease is
  the subject `lease.<id>` next to its `cur.<id>`, `log.<id>` ... and the
  store's fence hook (`state.py`, `_fence_headers`) expects it.
- One subject per integration, one heartbeat per daemon. `lease.<id>`
  changes only when the ownership changes (a claim or a release); a daemon
  keeps all its leases alive with one heartbeat, `beat.<instance>`, written
  every third of the TTL whatever the number of leases it holds (one small
  fsync'd write per period, where a renewal per lease cost a thousand
  integrations 250 writes a second). A fence names the *claim's* sequence,
  so it stays valid for the whole ownership however often the holder beats.
- A claim of a lease someone else holds is one batch of two messages: the
  lease, expecting `lease.<id>` where the claimant saw it, and a mark on
  `claims.<holder>` expecting `beat.<holder>` where the claimant saw it. So
  a heartbeat landing just before a claim makes the claim fail (the holder
  was alive after all). And the holder's heartbeat expects `claims.<holder>`
  where the holder last saw it: a heartbeat that reaches the server after a
  claim of any of its leases (sent before a freeze or a partition, answered
  after) is refused rather than making the holder believe in a lease it
  lost. A refused heartbeat makes the holder check each lease on its own
  (`renew`: a message on `beat.<instance>` expecting `lease.<id>` at the
  claim) and drop the ones taken.
- Expiry by observation, not by time stamps: a claimant may take a lease
  when neither `lease.<id>` nor its holder's `beat.<holder>` changed for
  `lease_ttl` on its *own* monotonic clock, counted from when it first saw
  their current sequences. No two clocks are compared (hosts may disagree
  on the wall time by seconds; the server's time stamp and the claimant's
  clock are different clocks too); the price is that a daemon that has just
  started waits a full TTL before it takes over leases it found, even if
  their holder died long ago. The holder, for its part, treats its leases
  as gone at `beat start + ttl - margin` on its monotonic clock
  (`Holding.valid`): every heartbeat the claimant saw was started before it
  was committed, and a heartbeat accepted proves no lease of the holder was
  claimed before it, so the holder's deadline always comes before the
  claimant's — a SIGSTOPped or cut-off holder is past its deadline the
  moment it runs again, and stops before delivering (sinks check `valid()`
  before each attempt; the fence stops any write once the lease is
  claimed).
- A lease whose holder is the claimant itself (it lost the lease locally,
  e.g. NATS was away past its deadline), or a predecessor on the same data
  dir (the lease's `token` is the data dir's, `{data_dir}/instance_token`,
  and the data dir is locked by one live daemon at a time: so a daemon
  restarted after a SIGKILL resumes at once instead of after a TTL), or
  that was released (holder "") or tombstoned (the integration was
  deleted) may be claimed at once; the claim still moves `lease.<id>`, so
  writes of the old run fail.
- Instances announce themselves on `inst.<name>` (newest message only)
  with their status (what they deliver, for the cluster view). A clean stop
  tombstones the announcement and the heartbeat; what daemons an hour gone
  left (by the server's time stamps) is purged.
- Daemons sharing a stream must all keep their leases this way: a version
  that renewed each lease on its own would take the leases of a daemon that
  only beats. Upgrade a cluster across that change by stopping every daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg

from ...logs import kv
from ...timeutil import parse_rfc3339
from ..base import StoreUnavailable
from ..leases import Announcement, Heartbeat, LeaseSeen, Snapshot
from .client import SEQUENCE, TIME_STAMP, JsApiError, Out, last_token
from .state import DELETED, OP, ROLL, TOMBSTONE, Conflict, StateStore, expect
from .subjects import ANNOUNCEMENT, BEAT, CLAIMS, LEASE, RECORD, is_token

log = logging.getLogger("eventstreamd.jetstream.lease")

UNREADABLE = "<unreadable>"  # the holder of a lease whose body cannot be read
T = TypeVar("T")


class LeaseBody(msgspec.Struct, frozen=True):
    """What `lease.<id>` holds: the claim (holder "" once released)."""

    holder: str = ""
    token: str = ""
    incarnation: str = ""
    claimed_at: float = 0.0


class Holder(msgspec.Struct, frozen=True):
    """What a heartbeat holds (the daemon and its data dir's token), and a release (on
    `lease.<id>`, holder "")."""

    holder: str
    token: str = ""


_HOLDER = msgspec.json.Decoder(Holder)


def _beat_token(data: bytes) -> str:
    try:
        return _HOLDER.decode(data).token
    except msgspec.DecodeError:
        return ""


class ClaimMark(msgspec.Struct, frozen=True):
    """What `claims.<holder>` holds: who took which of its leases."""

    by: str
    lease: str


_LEASE_BODY = msgspec.json.Decoder(LeaseBody)


def _lease_body(data: bytes) -> LeaseBody:
    """A lease's body; one that cannot be read (another program wrote it) counts as held
    by someone unknown, so it is taken only once it has not moved for a TTL."""
    try:
        return _LEASE_BODY.decode(data)
    except msgspec.DecodeError:
        return LeaseBody(holder=UNREADABLE)


def _server_time(headers: dict[str, str]) -> float:
    """The server's time stamp of a message, in seconds; 0.0 when it has none."""
    try:
        return parse_rfc3339(headers.get(TIME_STAMP) or "").timestamp()
    except ValueError:
        return 0.0


def _lease_seen(integration_id: str, msg: Msg | None) -> LeaseSeen:
    if msg is None:
        return LeaseSeen(integration_id, 0, 0, "")
    headers = msg.headers or {}
    body = (_lease_body(msg.data) if headers.get(OP) != DELETED and msg.data
            else LeaseBody())
    return LeaseSeen(integration_id, int(headers[SEQUENCE]), 0, body.holder, body.token)


class JetStreamLeaseBook:
    """The lease, heartbeat and announcement operations (`storage.leases.LeaseBook`), on
    the state stream."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.client = state.client
        self.subjects = state.subjects

    def _subject(self, kind: str, name: str) -> str:
        return self.subjects.kind(kind, name)

    # ---------------------------------------------------------------- reading

    async def _reading(self, read: Callable[[], Awaitable[T]]) -> T:
        try:
            return await read()
        except JsApiError as exc:
            raise StoreUnavailable(f"JetStream refused to read the leases: {exc}") from None

    async def leases(self) -> dict[str, LeaseSeen]:
        async def read() -> dict[str, LeaseSeen]:
            found = {}
            for msg in await self.state.multi_last(LEASE):
                integration_id = last_token(msg.headers or {})
                found[integration_id] = _lease_seen(integration_id, msg)
            return found
        return await self._reading(read)

    async def lease(self, integration_id: str) -> LeaseSeen:
        if not is_token(integration_id):
            return self.free(integration_id)
        return await self._reading(lambda: self._lease(integration_id))

    async def _lease(self, integration_id: str) -> LeaseSeen:
        msg = await self.client.direct_last(self.subjects.stream,
                                            self._subject(LEASE, integration_id))
        return _lease_seen(integration_id, msg)

    async def beats(self) -> dict[str, Heartbeat]:
        async def read() -> dict[str, Heartbeat]:
            found = {}
            for msg in await self.state.multi_last(BEAT):
                headers = msg.headers or {}
                name = last_token(headers)
                retired = headers.get(OP) == DELETED or not msg.data
                found[name] = Heartbeat(name, int(headers[SEQUENCE]), retired,
                                        "" if retired else _beat_token(msg.data))
            return found
        return await self._reading(read)

    async def announcements(self) -> dict[str, Announcement]:
        async def read() -> dict[str, Announcement]:
            found = {}
            for msg in await self.state.multi_last(ANNOUNCEMENT):
                headers = msg.headers or {}
                name = last_token(headers)
                deleted = headers.get(OP) == DELETED or not msg.data
                found[name] = Announcement(name, int(headers[SEQUENCE]), deleted,
                                           _server_time(headers), b"" if deleted else msg.data)
            return found
        return await self._reading(read)

    async def snapshot(self) -> Snapshot:
        beats = await self.beats()
        leases = {i: seen.beating(beats) for i, seen in (await self.leases()).items()}
        return Snapshot(leases, await self.announcements(), beats)

    def free(self, integration_id: str) -> LeaseSeen:
        return LeaseSeen(integration_id, 0, 0, "")

    # ------------------------------------------------------------ ownership

    async def claim(self, seen: LeaseSeen, instance: str, incarnation: str,
                    token: str = "") -> int | None:
        """Take the lease if it and its holder's heartbeat are still where `seen` found
        them (see `storage.leases.LeaseBook.claim`)."""
        if not is_token(seen.integration_id):
            return None
        body = msgspec.json.encode(LeaseBody(instance, token, incarnation, time.time()))
        messages = [Out(self._subject(LEASE, seen.integration_id), body,
                        {**ROLL, **expect(seen.lease_seq)})]
        holder = seen.holder
        if holder not in ("", instance) and is_token(holder):
            # The holder's next heartbeat sees this mark; the claim holds only if the
            # holder did not beat since the claimant looked.
            messages.append(Out(
                self._subject(CLAIMS, holder),
                msgspec.json.encode(ClaimMark(instance, seen.integration_id)),
                {**ROLL, **expect(seen.beat_seq, self._subject(BEAT, holder))}))
        try:
            ack = await self.state.commit(messages)
        except Conflict:
            return None
        return ack.first

    async def claims_seen(self, instance: str) -> int:
        msg = await self._reading(lambda: self.client.direct_last(
            self.subjects.stream, self._subject(CLAIMS, instance)))
        return int((msg.headers or {})[SEQUENCE]) if msg is not None else 0

    async def beat(self, instance: str, claims_seen: int, token: str = "") -> bool:
        try:
            await self.state.commit([Out(
                self._subject(BEAT, instance), msgspec.json.encode(Holder(instance, token)),
                {**ROLL, **expect(claims_seen, self._subject(CLAIMS, instance))})])
        except Conflict:
            return False
        return True

    async def renew(self, integration_id: str, claim: int, instance: str,
                    token: str = "") -> bool:
        """False when the lease is no longer the claim (taken, released or deleted)."""
        if not is_token(integration_id):
            return False
        try:
            await self.state.commit([Out(
                self._subject(BEAT, instance), msgspec.json.encode(Holder(instance, token)),
                {**ROLL, **expect(claim, self._subject(LEASE, integration_id))})])
        except Conflict:
            return False
        return True

    async def release(self, integration_id: str, claim: int) -> bool:
        """Give the lease up (holder ""): others may claim it at once. False when it was
        not ours any more."""
        try:
            await self.state.commit([Out(
                self._subject(LEASE, integration_id), msgspec.json.encode(Holder("")),
                {**ROLL, **expect(claim)})])
        except Conflict:
            return False
        return True

    async def watch(self, records: Callable[[str], None],
                    leases: Callable[[str], None]) -> None:
        """`records(id)` whenever an integration record is written, `leases(id)` a lease
        (by any daemon). Plain NATS subscribers see what a stream captures, batch members
        included, even of a batch that then fails: a hint to look again, no more."""
        for kind, callback in ((RECORD, records), (LEASE, leases)):
            async def seen(msg: Any, callback: Callable[[str], None] = callback) -> None:
                callback(msg.subject.rsplit(".", 1)[-1])

            await self.client.nc.subscribe(self._subject(kind, "*"), cb=seen)

    # ---------------------------------------------------------- announcements

    async def announce(self, instance: str, status: bytes,
                       after: int | None = None) -> tuple[int, bool]:
        """Write the announcement; (its sequence, whether someone else had written under
        this name since our announcement `after`)."""
        subject, data = self._subject(ANNOUNCEMENT, instance), status
        if after is not None:
            try:
                return (await self.state.commit([Out(subject, data,
                                                      {**ROLL, **expect(after)})])).seq, False
            except Conflict:
                pass
        return (await self.state.commit([Out(subject, data, ROLL)])).seq, after is not None

    async def retire(self, instance: str) -> None:
        await self.state.commit([Out(self._subject(kind, instance), b"", TOMBSTONE)
                                 for kind in (ANNOUNCEMENT, BEAT)])

    async def forget(self, stale: Sequence[Announcement]) -> None:
        """Purge what instances long gone left (SIGKILLed ones' stays otherwise)."""
        for entry in stale:
            # The announcement only up to what was found stale (the name may be back).
            for kind, before in ((ANNOUNCEMENT, entry.seq + 1), (BEAT, None), (CLAIMS, None)):
                try:
                    await self.client.purge(self.subjects.stream,
                                            self._subject(kind, entry.instance), before)
                except (StoreUnavailable, JsApiError) as exc:
                    log.debug("could not purge what an instance long gone left",
                              extra=kv(instance=entry.instance, error=str(exc)))
