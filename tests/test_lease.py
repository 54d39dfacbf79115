"""Leases on the JetStream store (storage/jetstream/lease.py), in-process against the
session's nats-server: claim, heartbeat, renew and release are compare-and-sets, one
heartbeat per daemon keeps all its leases, and every fenced write of a daemon that lost
a lease is refused. The last tests run two balancers (daemon/ownership.py) on one
clock the test moves: a frozen daemon's leases go to the other only once its own
deadline has passed, and its writes and heartbeat are refused after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventstreamd.config import Config
from eventstreamd.daemon.cluster import Announced
from eventstreamd.daemon.contracts import ChangeFeed, SinkStatus
from eventstreamd.daemon.ownership import HeldLeases, Ownership
from eventstreamd.model import Integration, LogEntry
from eventstreamd.storage.jetstream.store import JetStreamStore
from eventstreamd.storage.leases import LeaseBook, LeaseSeen
from tests.helpers.backends import JETSTREAM_ONLY
from tests.helpers.store import CREATED, limited, rejected_n, stored_hook

BACKENDS = JETSTREAM_ONLY


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[JetStreamStore]:
    async with limited(store_config, log_entries=5, rejected_events=2) as s:
        assert isinstance(s, JetStreamStore)
        yield s


async def seen(book: LeaseBook, integration_id: str) -> LeaseSeen:
    """The lease as a claimant sees it: with its holder's heartbeat."""
    return (await book.snapshot()).leases.get(integration_id) or book.free(integration_id)


async def fenced_writes(store: JetStreamStore, integration: Integration,
                        lease: int) -> list[bool]:
    fence = integration.fence(lease)
    return [await store.set_cursor(fence, 7),
            await store.put_sink_state(fence, {"k": lease}),
            await store.add_log(fence, LogEntry("t", "x", "y")),
            await store.add_rejected(fence, rejected_n(lease % 50), CREATED),
            await store.resolve_rejected(fence, None, CREATED)]


async def test_claim_beat_release_and_the_fence_of_a_lost_lease(
        store: JetStreamStore) -> None:
    book = store.leases
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    first = await seen(book, "a")
    a = await book.claim(first, "d0", integration.incarnation, "tok-0")
    assert a is not None
    assert await book.claim(first, "d1", integration.incarnation) is None  # it moved
    assert await fenced_writes(store, integration, a) == [True] * 5
    # Heartbeats do not move the fence: writes under the claim go on.
    marks = await book.claims_seen("d0")
    for _ in range(3):
        assert await book.beat("d0", marks)
    assert await fenced_writes(store, integration, a) == [True] * 5
    # What a claimant saw before a heartbeat cannot be used to take the lease.
    stale = await seen(book, "a")
    assert stale.holder == "d0" and stale.token == "tok-0" and stale.beat_seq
    assert await book.beat("d0", marks)
    assert await book.claim(stale, "d1", integration.incarnation) is None
    # Taken (as after an expiry): every write of the old holder is refused at once, and
    # so is its next heartbeat and a renewal of that lease.
    b = await book.claim(await seen(book, "a"), "d1", integration.incarnation)
    assert b is not None and b > a
    assert await fenced_writes(store, integration, a) == [False] * 5
    assert not await book.beat("d0", marks)
    assert not await book.renew("a", a, "d0")
    assert not await book.release("a", a)
    assert await fenced_writes(store, integration, b) == [True] * 5
    # Once the old holder has looked at the mark again, its heartbeat goes through.
    assert await book.beat("d0", await book.claims_seen("d0"))
    # Released: free for anyone, and the releaser's fence is gone too.
    assert await book.release("a", b)
    free = await seen(book, "a")
    assert free.holder == ""
    assert await fenced_writes(store, integration, b) == [False] * 5
    assert await book.claim(free, "d0", integration.incarnation) is not None


async def test_one_heartbeat_keeps_every_lease_and_a_claim_refuses_the_next(
        store: JetStreamStore) -> None:
    """A daemon's heartbeat renews all of its leases (each claimant's view of every one of
    them moves); a claim of one of them makes the holder's next heartbeat fail, and only
    that lease is lost when the holder checks each on its own."""
    book = store.leases
    names = ["a", "b", "c"]
    claims = {}
    for name in names:
        integration = stored_hook(name)
        await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
        claim = await book.claim(await seen(book, name), "d0", integration.incarnation)
        assert claim is not None
        claims[name] = claim
    marks = await book.claims_seen("d0")
    before = {name: await seen(book, name) for name in names}
    assert await book.beat("d0", marks)
    after = {name: await seen(book, name) for name in names}
    for name in names:
        assert after[name].lease_seq == before[name].lease_seq == claims[name]
        assert after[name].beat_seq > before[name].beat_seq
        # A heartbeat just before a claim makes the claim fail: the holder is alive.
        assert await book.claim(before[name], "d1", "inc-1") is None
    taken = await book.claim(after["b"], "d1", "inc-1")
    assert taken is not None
    assert not await book.beat("d0", marks)  # sent before the claim, answered after
    assert [await book.renew(name, claims[name], "d0") for name in names] == [
        True, False, True]
    assert await fenced_writes(store, stored_hook("a"), claims["a"]) == [True] * 5
    assert await fenced_writes(store, stored_hook("b"), claims["b"]) == [False] * 5


async def test_a_delete_ends_the_lease(store: JetStreamStore) -> None:
    book = store.leases
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    claim = await book.claim(await seen(book, "a"), "d0", integration.incarnation)
    assert claim is not None
    assert await store.delete_integration("a")
    assert not await book.renew("a", claim, "d0")
    assert (await book.lease("a")).holder == ""
    # Re-created under the same id: the old claim fences nothing of the new one.
    await store.create_integration(stored_hook(incarnation="inc-2"), cursor=1, limit=10,
                                   log=CREATED)
    assert await fenced_writes(store, stored_hook(incarnation="inc-2"), claim) == [False] * 5
    assert await store.get_cursor("a") == 1


async def test_announcements_are_read_back_and_retired(store: JetStreamStore) -> None:
    book = store.leases
    await book.announce("d0", b'{"owns":{"a":{"delivered":3}}}')
    await book.announce("d1", b'{"owns":{}}')
    for name in ("d0", "d1"):
        assert await book.beat(name, 0)
    await book.retire("d1")
    snapshot = await book.snapshot()
    instances = snapshot.instances
    assert instances["d0"].status == b'{"owns":{"a":{"delivered":3}}}'
    assert not instances["d0"].deleted and instances["d0"].server_time > 0
    assert instances["d1"].deleted
    assert not snapshot.beats["d0"].retired and snapshot.beats["d1"].retired
    await book.forget([instances["d1"]])
    assert "d1" not in await book.beats() and "d1" not in await book.announcements()


# ------------------------------------------------------------ two balancers


class Clock:
    """One monotonic clock for both balancers, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoSinks:
    def sink_running(self, integration_id: str) -> bool:
        return False

    def sink_status(self, integration_id: str) -> SinkStatus | None:
        return None


def balancer(store: JetStreamStore, instance: str, clock: Clock) -> Ownership:
    def report(status: Announced) -> Announced:
        return status

    return Ownership(store.leases, store, ChangeFeed(), HeldLeases(), sinks=NoSinks(),
                     report=report, instance=instance, ttl=TTL, clock=clock)


TTL = 10.0


async def test_a_frozen_daemons_leases_go_over_only_after_its_deadline(
        store: JetStreamStore) -> None:
    """d0 holds three leases and freezes (no heartbeat). d1 takes them once it has seen
    d0's heartbeat stand still for the TTL — by then d0's own deadline had passed — and
    d0's writes are refused from then on, its next heartbeat too, and it drops them."""
    names = ["a", "b", "c"]
    for name in names:
        await store.create_integration(stored_hook(name), cursor=1, limit=10, log=CREATED)
    clock = Clock()
    d0, d1 = balancer(store, "d0", clock), balancer(store, "d1", clock)
    await d0.beat()
    await d0.balance()
    assert sorted(d0.held) == names
    claims = {name: d0.held[name].seq for name in names}
    await d0.beat()
    beat_started = clock.now
    await d1.balance()
    assert d1.live == {"d0", "d1"} and not d1.held  # d0 is alive: nothing to take
    deadlines: list[float] = []
    while not d1.held:
        clock.now += 1.0
        assert clock.now < beat_started + 3 * TTL, "d1 never took the leases over"
        if all(h.valid() for h in d0.held.values()):
            deadlines.append(clock.now)
        await d1.balance()
    assert sorted(d1.held) == names
    # d0's deadline (its last heartbeat's start + ttl - margin) came before d1's claim.
    assert max(deadlines) < clock.now
    assert not any(h.valid() for h in d0.held.values())
    for name in names:
        assert await fenced_writes(store, stored_hook(name), claims[name]) == [False] * 5
    await d0.beat()  # it runs again: its heartbeat is refused, each lease checked
    assert not d0.held
    await d0.balance()
    assert not d0.held  # d1 is alive and holds them all: none is claimable


async def test_a_heartbeat_keeps_the_other_from_claiming(store: JetStreamStore) -> None:
    """d0 beats every third of the TTL: however long d1 watches, it claims nothing."""
    for name in ("a", "b"):
        await store.create_integration(stored_hook(name), cursor=1, limit=10, log=CREATED)
    clock = Clock()
    d0, d1 = balancer(store, "d0", clock), balancer(store, "d1", clock)
    await d0.beat()
    await d0.balance()
    assert sorted(d0.held) == ["a", "b"]
    for _ in range(12):
        clock.now += TTL / 3
        await d0.beat()
        await d1.balance()
        assert not d1.held and all(h.valid() for h in d0.held.values())
    assert sorted(d0.held) == ["a", "b"]
