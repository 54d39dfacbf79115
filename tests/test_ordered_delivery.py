"""Ordered delivery through the real daemon and a real receiver: strict order (one request
at a time, sequence order) through injected 503s, a 400, a SIGKILL and, on JetStream, a
handover between two daemons; keyed lanes keep each key in order while keys overlap."""

from __future__ import annotations

import collections
from typing import Any

import anyio
import pytest
from aiohttp import web

from tests.helpers.api import ApiClient
from tests.helpers.daemon import Factory
from tests.helpers.receiver import Received, Receiver
from tests.helpers.wait import eventually
from tests.test_multi import cluster_factory  # noqa: F401 - the fixture

BOTH = pytest.mark.parametrize("backend", ["lmdb", "jetstream"])
SETTINGS = {"webhook": {"retry_initial": "20ms", "retry_max": "50ms"},
            "delivery": {"cursor_every": 20}}
REJECTED = "e0050"


def numbered(count: int, keys: int | None = None) -> list[dict[str, Any]]:
    """Events e0000, e0001, ... (ids sort as their sequence numbers do)."""
    return [{"id": f"e{i:04d}", "name": "order.created",
             "payload": {"i": i, **({"order_id": f"o{i % keys}"} if keys else {})}}
            for i in range(count)]


def faulty(delay: float) -> Any:
    """503 on the first attempt of every 7th event, 400 for REJECTED, after `delay`."""
    async def respond(received: Received, attempt: int) -> web.Response:
        await anyio.sleep(delay)
        if received.key == REJECTED:
            return web.Response(status=400, text="not this one")
        if attempt == 1 and int(received.key[1:]) % 7 == 3:
            return web.Response(status=503)
        return web.Response(status=200)
    return respond


def first_requests(requests: list[Received]) -> list[str]:
    """Each event's id at its first request, in the order they came."""
    seen: dict[str, None] = {}
    for received in requests:
        seen.setdefault(received.key)
    return list(seen)


def assert_strict(receiver: Receiver, count: int) -> None:
    assert receiver.max_concurrent == 1
    firsts = first_requests(receiver.requests)
    assert firsts == sorted(firsts) and len(firsts) == count
    assert receiver.delivered_keys == {f"e{i:04d}" for i in range(count)} - {REJECTED}


@BOTH
async def test_strict_order_through_503s_a_400_and_a_sigkill(daemon_factory: Factory) -> None:
    receiver = await Receiver(faulty(0.002)).start()
    d = daemon_factory(SETTINGS)
    count = 300
    try:
        async with ApiClient(d) as api:
            await api.webhook("strict", receiver.url, controls={"ordered": True})
            await api.publish(numbered(count))
            await eventually(lambda: len(receiver.delivered) >= 100)
        d.kill()  # SIGKILL, mid-stream
        d.start()
        async with ApiClient(d) as api:
            await eventually(lambda: len(receiver.delivered_keys) == count - 1, within=60)
            [rejected] = await api.rejected("strict")
        assert rejected["event_id"] == REJECTED and rejected["status"] == 400
        assert_strict(receiver, count)
    finally:
        await receiver.close()


async def test_keyed_lanes_keep_each_key_in_order_while_keys_overlap(
        daemon_factory: Factory) -> None:
    out: collections.Counter[str] = collections.Counter()
    most: collections.Counter[str] = collections.Counter()
    respond = faulty(0.01)

    async def tracking(received: Received, attempt: int) -> web.Response:
        key = received.body["payload"]["order_id"]
        out[key] += 1
        most[key] = max(most[key], out[key])
        try:
            return await respond(received, attempt)
        finally:
            out[key] -= 1

    receiver = await Receiver(tracking).start()
    d = daemon_factory(SETTINGS)
    count, keys = 240, 12
    try:
        async with ApiClient(d) as api:
            await api.webhook("keyed", receiver.url,
                              controls={"ordered": True, "ordering_key": "order_id"})
            await api.publish(numbered(count, keys))
            await eventually(lambda: len(receiver.delivered_keys) == count - 1, within=60)
        assert max(most.values()) == 1  # one request per key at a time ...
        assert receiver.max_concurrent > 1  # ... and keys in parallel
        by_key: dict[str, list[str]] = collections.defaultdict(list)
        for key in first_requests(receiver.requests):
            by_key[f"o{int(key[1:]) % keys}"].append(key)
        assert len(by_key) == keys
        for ids in by_key.values():
            assert ids == sorted(ids)
    finally:
        await receiver.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_strict_order_survives_a_jetstream_handover(cluster_factory: Any,  # noqa: F811
                                                          how: str) -> None:
    receiver = await Receiver(faulty(0.002)).start()
    cluster = cluster_factory(2, {"delivery": {"cursor_every": 20}})
    count = 300
    try:
        async with ApiClient(cluster.daemons[0]) as api:
            await api.webhook("handed", receiver.url, controls={"ordered": True})
            await api.publish(numbered(count))
            await eventually(lambda: len(receiver.delivered) >= 80, within=30)
        owner = receiver.requests[-1].instance
        daemon = cluster.daemons[int(owner.removeprefix("d"))]
        if how == "kill":
            daemon.kill()
        else:
            daemon.stop()
        await eventually(lambda: len(receiver.delivered_keys) == count - 1, within=60)
        assert {r.instance for r in receiver.requests[-10:]} == {f"d{1 - int(owner[1:])}"}
        assert_strict(receiver, count)
    finally:
        await receiver.close()

