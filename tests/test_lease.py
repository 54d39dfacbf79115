"""Leases on the JetStream store (storage/jetstream/lease.py), in-process against the
session's nats-server: claim, renew and release are compare-and-sets, and every fenced
write of a daemon that lost the lease is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventstreamd.config import Config
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
    return (await book.snapshot()).leases.get(integration_id) or book.free(integration_id)


async def fenced_writes(store: JetStreamStore, integration: Integration,
                        lease: int) -> list[bool]:
    fence = integration.fence(lease)
    return [await store.set_cursor(fence, 7),
            await store.put_sink_state(fence, {"k": lease}),
            await store.add_log(fence, LogEntry("t", "x", "y")),
            await store.add_rejected(fence, rejected_n(lease % 50), CREATED),
            await store.resolve_rejected(fence, None, CREATED)]


async def test_claim_renew_release_and_the_fence_of_a_lost_lease(
        store: JetStreamStore) -> None:
    book = store.leases
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    first = await seen(book, "a")
    a = await book.claim(first, "d0", integration.incarnation, "tok-0")
    assert a is not None
    assert await book.claim(first, "d1", integration.incarnation) is None  # it moved
    assert await fenced_writes(store, integration, a) == [True] * 5
    # Renewals do not move the fence: writes under the claim go on.
    for _ in range(3):
        assert await book.renew("a", a, "d0")
    assert await fenced_writes(store, integration, a) == [True] * 5
    # What a claimant saw before a renewal cannot be used to take the lease.
    stale = await seen(book, "a")
    assert stale.holder == "d0" and stale.token == "tok-0"
    assert await book.renew("a", a, "d0")
    assert await book.claim(stale, "d1", integration.incarnation) is None
    # Taken (as after an expiry): every write of the old holder is refused at once.
    b = await book.claim(await seen(book, "a"), "d1", integration.incarnation)
    assert b is not None and b > a
    assert await fenced_writes(store, integration, a) == [False] * 5
    assert not await book.renew("a", a, "d0")
    assert not await book.release("a", a)
    assert await fenced_writes(store, integration, b) == [True] * 5
    # Released: free for anyone, and the releaser's fence is gone too.
    assert await book.release("a", b)
    free = await seen(book, "a")
    assert free.holder == ""
    assert await fenced_writes(store, integration, b) == [False] * 5
    assert await book.claim(free, "d0", integration.incarnation) is not None


async def test_a_delete_ends_the_lease(store: JetStreamStore) -> None:
    book = store.leases
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    claim = await book.claim(await seen(book, "a"), "d0", integration.incarnation)
    assert claim is not None
    assert await store.delete_integration("a")
    assert not await book.renew("a", claim, "d0")
    # Re-created under the same id: the old claim fences nothing of the new one.
    await store.create_integration(stored_hook(incarnation="inc-2"), cursor=1, limit=10,
                                   log=CREATED)
    assert await fenced_writes(store, stored_hook(incarnation="inc-2"), claim) == [False] * 5
    assert await store.get_cursor("a") == 1


async def test_announcements_are_read_back_and_retired(store: JetStreamStore) -> None:
    book = store.leases
    await book.announce("d0", b'{"owns":{"a":{"delivered":3}}}')
    await book.announce("d1", b'{"owns":{}}')
    await book.retire("d1")
    instances = (await book.snapshot()).instances
    assert instances["d0"].status == b'{"owns":{"a":{"delivered":3}}}'
    assert not instances["d0"].deleted and instances["d0"].server_time > 0
    assert instances["d1"].deleted
