"""Leases: the part of the store contract that lets several daemons share one store.

A store that several daemons may share (JetStream) offers a `LeaseBook`
(`Store.leases`); one that a single daemon owns (LMDB: the data dir is
locked) offers none, and that daemon delivers every integration.
`daemon/ownership.py` decides who holds what; the backend only keeps the
leases and the daemons' announcements with compare-and-set
(`storage/jetstream/lease.py` says how JetStream does it).

Decisions:
- An integration's lease is its claim (a version and a holder); a daemon
  keeps *all* its leases alive with one heartbeat of its own (`beat`), not
  one renewal per lease: an idle daemon holding a thousand leases writes
  one small message per renewal period. The claim's version is what the
  sink's fences name (`Fence.lease`).
- Expiry is by observation: a reader notes when it first saw a lease's
  version together with its holder's heartbeat version (`LeaseSeen.key`)
  and may claim it once neither changed for the TTL on its own clock. No
  two clocks are compared. A claim names both versions as it saw them, so a
  heartbeat landing in between makes the claim fail (the holder was alive).
- A claim of a lease someone else holds also leaves a mark the holder's
  next heartbeat checks (`beat(instance, claims_seen)` answers False once
  any of its leases was claimed since it last looked): a heartbeat delayed
  in flight past a claim is refused instead of making the holder believe
  in a lease it lost. After such a refusal the holder checks each lease on
  its own (`renew`: a heartbeat that holds only while that lease is still
  its claim) and drops the ones taken.
- Announcements are opaque bytes here: what a daemon announces is the
  daemon's business (`daemon/cluster.py` types and validates it). They say
  what a daemon delivers and how fast, for the cluster view; liveness is the
  heartbeat's.
- Every operation raises `StoreUnavailable` when the backend cannot answer,
  and nothing else of the backend's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

STALE_ANNOUNCEMENT = 3600.0  # seconds (server time) after which a dead instance's entry goes


@dataclass(frozen=True, slots=True)
class LeaseSeen:
    """An integration's lease as read: the claim's version, the holder, and the version of
    the holder's heartbeat as seen with it."""

    integration_id: str
    lease_seq: int  # the claim's version (0: never claimed)
    beat_seq: int  # the holder's heartbeat's version (0: none, or no holder)
    holder: str  # "" when free (never claimed, released, or deleted)
    token: str = ""  # the holder's data dir token (see `LeaseBook.claim`)

    @property
    def key(self) -> tuple[int, int]:
        return (self.lease_seq, self.beat_seq)

    def beating(self, beats: dict[str, Heartbeat]) -> LeaseSeen:
        """This lease with its holder's heartbeat as `beats` has it."""
        beat = beats.get(self.holder) if self.holder else None
        seq = beat.seq if beat is not None else 0
        return self if seq == self.beat_seq else replace(self, beat_seq=seq)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A daemon's heartbeat as stored: its version, whether the daemon retired it (a clean
    stop), and the data dir token of the daemon that wrote it (two daemons under one
    name write different ones)."""

    instance: str
    seq: int
    retired: bool = False
    token: str = ""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A daemon's last announcement as stored: `status` is what it announced, undecoded."""

    instance: str
    seq: int
    deleted: bool
    server_time: float  # seconds since the epoch, by the store's clock
    status: bytes = b""


@dataclass(frozen=True, slots=True)
class Snapshot:
    leases: dict[str, LeaseSeen]
    instances: dict[str, Announcement]
    beats: dict[str, Heartbeat] = field(default_factory=dict)


class LeaseBook(Protocol):
    """The lease, heartbeat and announcement operations of a shared store."""

    async def leases(self) -> dict[str, LeaseSeen]:
        """Every lease (`beat_seq` 0: join them with `beats` by `LeaseSeen.beating`)."""
        ...

    async def lease(self, integration_id: str) -> LeaseSeen:
        """One lease (`beat_seq` 0); a free one when it was never claimed."""
        ...

    async def beats(self) -> dict[str, Heartbeat]:
        """Every daemon's heartbeat, by instance name."""
        ...

    async def announcements(self) -> dict[str, Announcement]:
        """Every daemon's announcement, by instance name."""
        ...

    async def snapshot(self) -> Snapshot:
        """Every lease (with its holder's heartbeat), announcement and heartbeat."""
        ...

    def free(self, integration_id: str) -> LeaseSeen:
        """A lease never claimed (what `claim` expects where the snapshot has none)."""
        ...

    async def claim(self, seen: LeaseSeen, instance: str, incarnation: str,
                    token: str = "") -> int | None:
        """Take the lease if it and its holder's heartbeat are still as `seen` found them:
        the claim's version (what fences name), or None when someone else moved first
        (or the holder beat after all). `token` names the claimant's data dir, which one
        live daemon at a time can hold."""
        ...

    async def claims_seen(self, instance: str) -> int:
        """The version of the mark claims of `instance`'s leases leave (0: none yet)."""
        ...

    async def beat(self, instance: str, claims_seen: int, token: str = "") -> bool:
        """The heartbeat that keeps every lease `instance` holds (`token`: its data dir's);
        False (nothing written) when a lease of `instance` was claimed since the mark was
        at `claims_seen`."""
        ...

    async def renew(self, integration_id: str, claim: int, instance: str,
                    token: str = "") -> bool:
        """A heartbeat that holds only while the lease is still the claim: False when it
        was taken, released or deleted."""
        ...

    async def release(self, integration_id: str, claim: int) -> bool:
        """Give the lease up: others may claim it at once. False when it was not ours."""
        ...

    async def watch(self, records: Callable[[str], None], leases: Callable[[str], None]
                    ) -> None:
        """`records(id)` whenever any daemon writes an integration record, `leases(id)` a
        lease: a hint to look again, no more (it may come for a write that then failed,
        before the write is readable, or not at all)."""
        ...

    async def announce(self, instance: str, status: bytes,
                       after: int | None = None) -> tuple[int, bool]:
        """Write the announcement; (its version, whether someone else had written under
        this name since our announcement `after`)."""
        ...

    async def retire(self, instance: str) -> None:
        """Remove the announcement and the heartbeat (a clean stop)."""
        ...

    async def forget(self, stale: Sequence[Announcement]) -> None:
        """Drop what daemons long gone left: announcement, heartbeat (best effort)."""
        ...
