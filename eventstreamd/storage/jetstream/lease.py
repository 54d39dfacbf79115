"""Leases: which daemon delivers which integration, when several share one JetStream.

Decisions:
- Where: in the state stream, not in a KV bucket of their own. A KV bucket
  is a stream too, but fenced writes must be able to say "the lease is still
  the one I claimed" in the same atomic batch as the cursor, the log line or
  the rejected event they write, and a JetStream batch (and a subject-sequence
  expectation) cannot reach into another stream. So an integration's lease is
  the subject `lease.<id>` next to its `cur.<id>`, `log.<id>` ... and the
  store's fence hook (`state.py`, `_fence_headers`) expects it.
- Two subjects per integration: `lease.<id>` changes only when the ownership
  changes (a claim or a release), `renew.<id>` takes the holder's renewals.
  A fence names the *claim's* sequence, so it stays valid for the whole
  ownership however often the holder renews (a fence that moved with every
  renewal would race each cursor write against the next renewal). A renewal
  is written to `renew.<id>` expecting `lease.<id>` still at the claim's
  sequence, so a holder learns it lost the lease at its next renewal; a
  claim writes both subjects in one batch, expecting each at what the
  claimant saw, so a renewal landing just before a claim makes the claim
  fail (the holder was alive after all).
- Expiry by observation, not by time stamps: a claimant may take a lease
  when neither subject changed for `lease_ttl` on its *own* monotonic
  clock, counted from when it first saw their current sequences. No two
  clocks are compared (hosts may disagree on the wall time by seconds; the
  server's time stamp and the claimant's clock are different clocks too);
  the price is that a daemon that has just started waits a full TTL before
  it takes over leases it found, even if their holder died long ago. The
  holder, for its part, treats its lease as gone at `renew start + ttl -
  margin` on its monotonic clock (`Holding.valid`): every renewal the
  claimant saw was started before it was committed, so the holder's
  deadline always comes before the claimant's — a SIGSTOPped or cut-off
  holder is past its deadline the moment it runs again, and stops before
  delivering (sinks check `valid()` before each attempt; the fence stops any
  write once the lease is claimed).
- A lease whose holder is the claimant itself (it lost the lease locally,
  e.g. NATS was away past its deadline), or a predecessor on the same data
  dir (the lease's `token` is the data dir's, `{data_dir}/instance_token`,
  and the data dir is locked by one live daemon at a time: so a daemon
  restarted after a SIGKILL resumes at once instead of after a TTL), or
  that was released (holder "") or tombstoned (the integration was
  deleted) may be claimed at once; the claim still moves `lease.<id>`, so
  writes of the old run fail.
- Instances announce themselves on `inst.<name>` (newest message only)
  with their status, once a second; the same observation rule tells the live
  from the dead. A clean stop tombstones the announcement; announcements a
  server time stamp shows to be an hour older than the newest are purged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ...logs import kv
from ...timeutil import parse_rfc3339
from ..base import StoreUnavailable
from ..leases import Announcement, LeaseSeen, Snapshot
from .client import SEQUENCE, TIME_STAMP, JsApiError, Out, last_token
from .state import DELETED, OP, ROLL, TOMBSTONE, Conflict, StateStore, expect
from .subjects import ANNOUNCEMENT, LEASE, RECORD, RENEW, is_token

log = logging.getLogger("eventstreamd.jetstream.lease")

UNREADABLE = "<unreadable>"  # the holder of a lease whose body cannot be read


class LeaseBody(msgspec.Struct, frozen=True):
    """What `lease.<id>` holds: the claim (holder "" once released)."""

    holder: str = ""
    token: str = ""
    incarnation: str = ""
    claimed_at: float = 0.0


class Renewal(msgspec.Struct, frozen=True):
    """What `renew.<id>` holds (a release writes this shape on `lease.<id>` too)."""

    holder: str


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


class JetStreamLeaseBook:
    """The lease and announcement operations (`storage.leases.LeaseBook`), on the state
    stream."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.client = state.client
        self.subjects = state.subjects

    def _subject(self, kind: str, name: str) -> str:
        return self.subjects.kind(kind, name)

    # ---------------------------------------------------------------- reading

    async def snapshot(self) -> Snapshot:
        try:
            return await self._snapshot()
        except JsApiError as exc:
            raise StoreUnavailable(f"JetStream refused to read the leases: {exc}") from None

    async def _snapshot(self) -> Snapshot:
        renews: dict[str, int] = {}
        for msg in await self.state.multi_last(RENEW):
            headers = msg.headers or {}
            renews[last_token(headers)] = int(headers[SEQUENCE])
        leases: dict[str, LeaseSeen] = {}
        for msg in await self.state.multi_last(LEASE):
            headers = msg.headers or {}
            integration_id = last_token(headers)
            seq = int(headers[SEQUENCE])
            body = (_lease_body(msg.data) if headers.get(OP) != DELETED and msg.data
                    else LeaseBody())
            leases[integration_id] = LeaseSeen(
                integration_id, seq, renews.get(integration_id, 0), body.holder, body.token)
        for integration_id, renew_seq in renews.items():  # a renew without a lease message
            leases.setdefault(integration_id, LeaseSeen(integration_id, 0, renew_seq, ""))
        instances: dict[str, Announcement] = {}
        for msg in await self.state.multi_last(ANNOUNCEMENT):
            headers = msg.headers or {}
            name = last_token(headers)
            deleted = headers.get(OP) == DELETED or not msg.data
            status = b"" if deleted else msg.data
            instances[name] = Announcement(name, int(headers[SEQUENCE]), deleted,
                                           _server_time(headers), status)
        return Snapshot(leases, instances)

    def free(self, integration_id: str) -> LeaseSeen:
        return LeaseSeen(integration_id, 0, 0, "")

    # ------------------------------------------------------------ ownership

    async def claim(self, seen: LeaseSeen, instance: str, incarnation: str,
                    token: str = "") -> int | None:
        """Take the lease if both subjects are still where `seen` found them (see
        `storage.leases.LeaseBook.claim`)."""
        if not is_token(seen.integration_id):
            return None
        body = msgspec.json.encode(LeaseBody(instance, token, incarnation, time.time()))
        messages = [
            Out(self._subject(LEASE, seen.integration_id), body,
                {**ROLL, **expect(seen.lease_seq)}),
            Out(self._subject(RENEW, seen.integration_id), msgspec.json.encode(Renewal(instance)),
                {**ROLL, **expect(seen.renew_seq)}),
        ]
        try:
            ack = await self.state.commit(messages)
        except Conflict:
            return None
        return ack.first

    async def renew(self, integration_id: str, claim: int, instance: str) -> bool:
        """False when the lease is no longer the claim (taken, released or deleted)."""
        try:
            await self.state.commit([Out(
                self._subject(RENEW, integration_id), msgspec.json.encode(Renewal(instance)),
                {**ROLL, **expect(claim, self._subject(LEASE, integration_id))})])
        except Conflict:
            return False
        return True

    async def release(self, integration_id: str, claim: int) -> bool:
        """Give the lease up (holder ""): others may claim it at once. False when it was
        not ours any more."""
        try:
            await self.state.commit([Out(
                self._subject(LEASE, integration_id), msgspec.json.encode(Renewal("")),
                {**ROLL, **expect(claim)})])
        except Conflict:
            return False
        return True

    async def watch(self, callback: Callable[[], None]) -> None:
        """`callback()` whenever an integration record or a lease subject is written (by
        any daemon). Plain NATS subscribers see what a stream captures, batch members
        included, even of a batch that then fails: a hint to look again, no more."""
        async def seen(_msg: Any) -> None:
            callback()

        for kind in (RECORD, LEASE):
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
        await self.state.commit([Out(self._subject(ANNOUNCEMENT, instance), b"",
                                      TOMBSTONE)])

    async def forget(self, stale: Sequence[Announcement]) -> None:
        """Purge announcements of instances long gone (SIGKILLed ones stay otherwise)."""
        for entry in stale:
            try:
                await self.client.purge(self.subjects.stream,
                                        self._subject(ANNOUNCEMENT, entry.instance),
                                        entry.seq + 1)
            except (StoreUnavailable, JsApiError) as exc:
                log.debug("could not purge an old announcement",
                          extra=kv(instance=entry.instance, error=str(exc)))
