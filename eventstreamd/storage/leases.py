"""Leases: the part of the store contract that lets several daemons share one store.

A store that several daemons may share (JetStream) offers a `LeaseBook`
(`Store.leases`); one that a single daemon owns (LMDB: the data dir is
locked) offers none, and that daemon delivers every integration.
`daemon/ownership.py` decides who holds what; the backend only keeps the
leases and the daemons' announcements with compare-and-set
(`storage/jetstream/lease.py` says how JetStream does it).

Decisions:
- An integration's lease is two versions (the claim, and the holder's last
  renewal) and a holder; a claim names both versions as it saw them, so a
  renewal landing in between makes the claim fail. The claim's version is
  what the sink's fences name (`Fence.lease`).
- Expiry is by observation: a reader notes when it first saw a lease's
  versions (`LeaseSeen.key`) and may claim it once they have not changed for
  the TTL on its own clock. No two clocks are compared.
- Announcements are opaque bytes here: what a daemon announces is the
  daemon's business (`daemon/cluster.py` types and validates it).
- Every operation raises `StoreUnavailable` when the backend cannot answer,
  and nothing else of the backend's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

STALE_ANNOUNCEMENT = 3600.0  # seconds (server time) after which a dead instance's entry goes


@dataclass(frozen=True, slots=True)
class LeaseSeen:
    """An integration's lease as read: the versions of claim and renewal, and the holder."""

    integration_id: str
    lease_seq: int  # the claim's version (0: never claimed)
    renew_seq: int  # the last renewal's version (0: none)
    holder: str  # "" when free (never claimed, released, or deleted)
    token: str = ""  # the holder's data dir token (see `LeaseBook.claim`)

    @property
    def key(self) -> tuple[int, int]:
        return (self.lease_seq, self.renew_seq)


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


class LeaseBook(Protocol):
    """The lease and announcement operations of a shared store."""

    async def snapshot(self) -> Snapshot:
        """Every lease and every announcement, as they are now."""
        ...

    def free(self, integration_id: str) -> LeaseSeen:
        """A lease never claimed (what `claim` expects where the snapshot has none)."""
        ...

    async def claim(self, seen: LeaseSeen, instance: str, incarnation: str,
                    token: str = "") -> int | None:
        """Take the lease if it is still as `seen` found it: the claim's version (what
        fences name), or None when someone else moved first. `token` names the
        claimant's data dir, which one live daemon at a time can hold."""
        ...

    async def renew(self, integration_id: str, claim: int, instance: str) -> bool:
        """False when the lease is no longer the claim (taken, released or deleted)."""
        ...

    async def release(self, integration_id: str, claim: int) -> bool:
        """Give the lease up: others may claim it at once. False when it was not ours."""
        ...

    async def watch(self, callback: Callable[[], None]) -> None:
        """`callback()` whenever any daemon writes an integration record or a lease: a
        hint to look again, no more (it may come for a write that then failed)."""
        ...

    async def announce(self, instance: str, status: bytes,
                       after: int | None = None) -> tuple[int, bool]:
        """Write the announcement; (its version, whether someone else had written under
        this name since our announcement `after`)."""
        ...

    async def retire(self, instance: str) -> None:
        """Remove the announcement (a clean stop)."""
        ...

    async def forget(self, stale: Sequence[Announcement]) -> None:
        """Drop announcements of instances long gone (best effort)."""
        ...
