"""Webhook delivery end to end: real daemon subprocess, real local aiohttp receivers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from aiohttp import web

from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.control import Line, control_path, wait_settled
from tests.helpers.daemon import FAST, DaemonProcess, Factory, merge
from tests.helpers.receiver import Received, Receiver, Switch, answer
from tests.helpers.wait import eventually

BACKENDS = EVERY_BACKEND

# A 1 s timeout (a receiver here sleeps past it), temporary integrations deleted after 1 s,
# and short logs and rejected lists, whose limits the tests reach.
FAST_HOOKS = merge(FAST, {
    "webhook": {"timeout": "1s", "max_in_flight": 8, "temporary_delete_after": "1s"},
    "limits": {"log_entries": 10, "rejected_events": 3},
})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
def fast(daemon_factory: Factory) -> DaemonProcess:
    return daemon_factory(FAST_HOOKS)


async def test_exact_body_and_headers(fast: DaemonProcess, receiver: Receiver) -> None:
    async with ApiClient(fast) as api:
        await api.webhook("w1", receiver.url, api_key="sekrit-key-1")
        await api.publish([{"name": "order.created", "payload": {"n": 1}, "tenant": "acme",
                            "id": "evt-42", "published_at": "2024-05-01T12:00:00Z"}])
        await eventually(lambda: len(receiver.delivered) == 1)
    got = receiver.delivered[0]
    assert got.body == {"tenant": "acme", "name": "order.created",
                        "published_at": "2024-05-01T12:00:00.000Z", "payload": {"n": 1}}
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Authorization"] == "Bearer sekrit-key-1"
    assert got.headers["Idempotency-Key"] == "evt-42"
    assert "sekrit-key-1" not in fast.log()


async def test_no_api_key_no_authorization(fast: DaemonProcess, receiver: Receiver) -> None:
    async with ApiClient(fast) as api:
        await api.webhook("w1", receiver.url)
        await api.publish(events(1))
        await eventually(lambda: len(receiver.delivered) == 1)
    assert "Authorization" not in receiver.delivered[0].headers


async def test_200_events_distinct_keys(fast: DaemonProcess, receiver: Receiver) -> None:
    async with ApiClient(fast) as api:
        await api.webhook("w1", receiver.url)
        await api.publish(events(200))
        await eventually(lambda: len(receiver.delivered_keys) == 200)
    assert sorted(r.body["payload"]["i"] for r in receiver.delivered) == list(range(200))
    assert len(receiver.requests) == 200


@pytest.mark.parametrize(("conditions", "expected"), [
    ({"event_filter": ["order.created"]}, {"order.created"}),
    ({"entity_filter": ["return"]}, {"return.processed", "return.created"}),
    ({"event_filter": ["order.created"], "entity_filter": ["return"]},
     {"order.created", "return.processed", "return.created"}),
    (None, {"order.created", "order.completed", "return.processed", "return.created",
            "shipment.sent"}),
])
async def test_filters(fast: DaemonProcess, receiver: Receiver, conditions: Any,
                       expected: set[str]) -> None:
    names = ["order.created", "order.completed", "return.processed", "return.created",
             "shipment.sent"]
    extra = {"filter_conditions": conditions} if conditions else {}
    async with ApiClient(fast) as api:
        await api.webhook("w1", receiver.url, **extra)
        await api.publish([{"name": n, "payload": {}} for n in names])
        await api.publish([{"name": "zz.marker", "payload": {}}])
        if conditions is not None:
            # A second, unfiltered integration tells us when everything was dispatched.
            marker = await Receiver().start()
            try:
                await api.webhook("w2", marker.url, starts_at="2000-01-01T00:00:00Z")
                await eventually(lambda: len(marker.delivered) == 6)
            finally:
                await marker.close()
        await eventually(lambda: len(receiver.delivered) >= len(expected))
        await wait_settled(fast, ["w1"])  # every event passed w1's filter or not: no more can come
    got = {r.body["name"] for r in receiver.delivered} - {"zz.marker"}
    assert got == expected


async def test_rejected_then_retry(fast: DaemonProcess) -> None:
    refusing = Switch(answer(400, "bad order"))
    receiver = await Receiver(refusing).start()
    try:
        async with ApiClient(fast) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(2))
            await eventually(lambda: len(receiver.requests) == 2)
            rejected = await eventually(lambda: api.rejected("w1"), lambda r: len(r) >= 2,
                                        within=10)
            assert all(len(r["id"]) == 36 for r in rejected)
            # Matched to what was published, with the receiver's status and answer.
            published = {r.key for r in receiver.requests}
            assert {r["event_id"] for r in rejected} == published
            assert {(r["status"], r["reason"], r["attempts"]) for r in rejected} == \
                {(400, "bad order", 1)}
            seqs = sorted(r["seq"] for r in rejected)
            assert seqs == [seqs[0], seqs[0] + 1]
            logs = await api.wait_logs("w1", "event_rejected", 2)
            assert "HTTP 400" in logs[0]["reason"] and "bad order" in logs[0]["reason"]
            # The receiver still refuses: 502, and the event stays.
            failed = await api.retry("w1", rejected[0]["id"], expect=502)
            assert failed["error_code"] and failed["request_id"]
            assert len(await api.rejected("w1")) == 2
            refusing.flip()
            await api.retry("w1", rejected[0]["id"], expect=200)
            remaining = await api.rejected("w1")
            assert [r["id"] for r in remaining] == [rejected[1]["id"]]
            assert len(receiver.delivered) == 1
    finally:
        await receiver.close()


async def test_rejected_list_keeps_newest_and_says_so(fast: DaemonProcess) -> None:
    receiver = await Receiver(lambda r, a: web.Response(status=400)).start()
    try:
        async with ApiClient(fast) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(5))
            await api.wait_logs("w1", "rejected_event_dropped", 2)
            assert len(await api.rejected("w1")) == 3  # limits.rejected_events
    finally:
        await receiver.close()


async def test_transient_failures_are_retried_until_delivered(fast: DaemonProcess) -> None:
    async def respond(received: Received, attempt: int) -> web.StreamResponse:
        kind = received.body["payload"]["i"] % 4
        if attempt <= 2:
            if kind == 0:
                return web.Response(status=429, headers={"Retry-After": "0"})
            if kind == 1:
                return web.Response(status=500, text="boom")
            if kind == 2:
                await asyncio.sleep(1.5)  # past the 1s timeout
                return web.Response(status=200)
            if kind == 3:
                return web.Response(status=503)
        return web.Response(status=200)

    receiver = await Receiver(respond).start()
    try:
        async with ApiClient(fast) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(8))
            await eventually(lambda: len(receiver.delivered_keys) == 8, within=30)
            reasons = [e["reason"] for e in await api.logs("w1")
                       if e["action"] == "retry_triggered"]
    finally:
        await receiver.close()
    assert reasons
    assert all(r.startswith(f"Request to URL {receiver.url} failed. Reason: ") for r in reasons)
    joined = "\n".join(reasons)
    assert "(HTTP status code 500)" in joined or "(HTTP status code 429)" in joined
    assert "Payload: {" in joined


async def test_refused_connection_is_retried(fast: DaemonProcess) -> None:
    receiver = await Receiver().start()
    url = receiver.url
    await receiver.close()  # nothing listens there now
    async with ApiClient(fast) as api:
        await api.webhook("w1", url)
        await api.publish(events(3))
        entries = await api.wait_logs("w1", "retry_triggered", 2)
        assert "cannot connect" in entries[0]["reason"]
        assert "(HTTP status code none)" in entries[0]["reason"]
        # Log keeps only the newest limits.log_entries (10) entries, newest first.
        entries = await api.wait_logs("w1", "retry_triggered", 10)
        logs = await api.logs("w1")
        assert len(logs) == 10
        assert [e["created_at"] for e in logs] == sorted((e["created_at"] for e in logs),
                                                         reverse=True)


async def test_stop_publish_start(fast: DaemonProcess, receiver: Receiver) -> None:
    async with ApiClient(fast) as api:
        await api.webhook("w1", receiver.url)
        await api.publish(events(5))
        await eventually(lambda: len(receiver.delivered) == 5)
        stopped = await api.stop("w1")
        assert stopped["status"] == "stopped"
        # A running integration to another receiver shows when the 20 were dispatched.
        marker = await Receiver().start()
        try:
            await api.webhook("w2", marker.url)
            await api.publish(events(20, start=5))
            await eventually(lambda: len(marker.delivered_keys) == 20)
        finally:
            await marker.close()
        assert len(receiver.delivered) == 5
        assert (await api.start("w1"))["status"] == "running"
        await eventually(lambda: len(receiver.delivered_keys) == 25)
    assert sorted(r.body["payload"]["i"] for r in receiver.delivered) == list(range(25))


async def test_new_integration_gets_only_new_events_unless_starts_at(
        fast: DaemonProcess, receiver: Receiver) -> None:
    replay = await Receiver().start()
    try:
        async with ApiClient(fast) as api:
            await api.publish(events(10))
            await api.webhook("fresh", receiver.url)
            await api.webhook("replay", replay.url, starts_at="2000-01-01T00:00:00Z")
            await api.publish(events(5, start=10))
            await eventually(lambda: len(replay.delivered) == 15)
            await eventually(lambda: len(receiver.delivered) == 5)
    finally:
        await replay.close()
    assert sorted(r.body["payload"]["i"] for r in receiver.delivered) == list(range(10, 15))


async def test_temporary_integration_completes_and_is_deleted(
        fast: DaemonProcess, receiver: Receiver) -> None:
    async with ApiClient(fast) as api:
        await api.publish(events(10))
        health = await api.request("GET", "/healthz")
        assert health["head"] == 10
        from eventstreamd.timeutil import now_iso
        ends = now_iso()
        await anyio.sleep(0.05)
        await api.publish(events(5, start=10))  # after ends_at: not part of the range
        await api.create(id="tmp", integration_type="temporary",
                         starts_at="2000-01-01T00:00:00Z", ends_at=ends,
                         callback_parameters={"callback_url": receiver.url})
        await eventually(lambda: len(receiver.delivered) == 10)
        completed = await api.wait_logs("tmp", "integration_completed")
        assert "stopped automatically" in completed[0]["reason"]
        assert (await api.get("tmp"))["status"] == "stopped"
        gone = await eventually(lambda: api.answer("GET", f"{BASE}/tmp"),
                                lambda answer: answer[0] == 404, within=15,  # deleted after 1s
                                every=0.2, what="the temporary integration deleted")
        assert gone[1]["error_code"] == "integration_not_found"
    assert sorted(r.body["payload"]["i"] for r in receiver.delivered) == list(range(10))


async def test_slow_receiver_does_not_delay_another(fast: DaemonProcess) -> None:
    release = anyio.Event()

    async def stuck(received: Received, attempt: int) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    slow = await Receiver(stuck).start()
    quick = await Receiver().start()
    try:
        async with ApiClient(fast) as api:
            await api.webhook("slow", slow.url)
            await api.webhook("quick", quick.url)
            await api.publish(events(100))
            await eventually(lambda: len(quick.delivered) == 100)
            assert len(slow.delivered) == 0
            assert len(slow.requests) <= 8  # the slow one holds only its window
            release.set()
            await eventually(lambda: len(slow.delivered_keys) == 100, within=60)
    finally:
        release.set()
        await slow.close()
        await quick.close()


async def test_the_cursor_is_saved_by_its_bounds_not_per_delivery(
        daemon_factory: Factory, receiver: Receiver) -> None:
    """One request in flight keeps the window at its request limit all the time; that
    must not save the cursor (an fsync) per delivery: only `cursor_every` finished events
    or `cursor_interval` do, and here neither is reached."""
    d = daemon_factory({**FAST, "webhook": {**FAST["webhook"], "max_in_flight": 1},
                        "delivery": {"cursor_every": 1000, "cursor_interval": "1h"}})
    async with ApiClient(d) as api:
        await api.webhook("w1", receiver.url)
        await api.publish(events(50))
        await eventually(lambda: len(receiver.delivered_keys) == 50)
    client = await Line.connect(control_path(d))
    try:
        [status] = (await client.call("status"))["result"]["integrations"]
    finally:
        await client.close()
    assert status["cursor"] == 1 and status["lag_events"] == 50, status


async def test_sigkill_mid_delivery_redelivers_at_most_the_cursor_bound(
        daemon_factory: Factory) -> None:
    """The documented bound: a crash delivers at most `delivery.cursor_every` events again.
    The cursor interval is long here, so only the count bound saves it: the duplicates
    are then at most one cursor_every's worth (and the in-flight limit is smaller)."""
    cursor_every = 100
    d = daemon_factory({**FAST, "webhook": {**FAST["webhook"], "max_in_flight": 8},
                        "delivery": {"cursor_every": cursor_every, "cursor_interval": "1h"}})

    async def slowish(received: Received, attempt: int) -> web.Response:
        await asyncio.sleep(0.002)
        return web.Response(status=200)

    receiver = await Receiver(slowish).start()
    total = 5000
    try:
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            for start in range(0, total, 1000):
                await api.publish(events(1000, start=start))
            await eventually(lambda: len(receiver.delivered) >= 1500, within=120)
        d.send_signal(signal.SIGKILL)
        d.wait(10)
        delivered_before = len(receiver.delivered)
        assert delivered_before < total, "delivery finished before the kill; test proves nothing"
        d.start()
        await eventually(lambda: len(receiver.delivered_keys) == total, within=120)
        await wait_settled(d, ["w1"], cursor_saved=False)  # the last requests answered
    finally:
        await receiver.close()
    duplicates = len(receiver.delivered) - len(receiver.delivered_keys)
    assert duplicates <= cursor_every, duplicates
