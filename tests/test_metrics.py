"""GET /metrics parsed with prometheus_client's own text parser; the counters match what a real
receiver saw. GET /readyz. Both against a real daemon."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from eventstreamd.daemon.slices import in_slices
from tests.helpers.api import ApiClient
from tests.helpers.daemon import FAST, DaemonProcess, Factory
from tests.helpers.receiver import Received, Receiver
from tests.helpers.wait import eventually


async def scrape(d: DaemonProcess, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{d.url}/metrics", headers=d.headers if headers is None else headers) as r:
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_metrics_match_what_the_receiver_saw(daemon_factory: Factory) -> None:
    # Per event, by its payload's "n": 400 (rejected) for n % 5 == 0; for n % 3 == 0 one
    # 500 first (a failed attempt, then delivered); else 200.
    def respond(received: Received, attempt: int) -> web.Response:
        n = received.body["payload"]["n"]
        if n % 5 == 0:
            return web.Response(status=400, text="no")
        if n % 3 == 0 and attempt == 1:
            return web.Response(status=500)
        return web.Response(status=200)

    receiver = await Receiver(respond).start()
    d = daemon_factory(FAST)
    try:
        async with ApiClient(d) as api:
            await api.webhook("hook", receiver.url)
            sizes = [1, 7, 30]
            n = 0
            for size in sizes:
                await api.publish([{"name": "order.created", "payload": {"n": n + i}}
                                   for i in range(size)])
                n += size
            await api.request("POST", "/events", [{"name": "nodot", "payload": {}}], expect=400)
            rejected = sum(1 for i in range(n) if i % 5 == 0)
            await eventually(lambda: len(receiver.delivered) + rejected == n and
                                    len(receiver.requests) == len(receiver.delivered)
                                    + rejected + sum(1 for i in range(n)
                                                     if i % 5 and i % 3 == 0))

            async def settled() -> dict[Any, float]:
                return samples((await scrape(d))[1])

            found = await eventually(settled, lambda f: value(
                f, "eventstreamd_lag_events", integration="hook", kind="webhook") == 0,
                what="lag drains to 0")
        hook = {"integration": "hook", "kind": "webhook"}
        failed_answers = sum(1 for r in receiver.requests if r.body["payload"]["n"] % 5
                             and r not in receiver.delivered)
        assert value(found, "eventstreamd_delivered_events_total", **hook) == \
            len(receiver.delivered)
        assert value(found, "eventstreamd_delivery_failed_attempts_total", **hook) == \
            failed_answers
        assert value(found, "eventstreamd_rejected_events_total", **hook) == rejected
        assert value(found, "eventstreamd_rejected_events_stored", **hook) == rejected
        assert value(found, "eventstreamd_sink_restarts_total", **hook) == 0
        assert value(found, "eventstreamd_in_flight", **hook) == 0
        assert value(found, "eventstreamd_lag_seconds", **hook) == 0
        assert value(found, "eventstreamd_integration_running", **hook) == 1
        latency_count = value(found, "eventstreamd_delivery_latency_seconds_count", **hook)
        assert latency_count == len(receiver.delivered)
        assert value(found, "eventstreamd_delivery_latency_seconds_bucket", le="+Inf",
                     **hook) == latency_count
        # Ingest: events and requests by status, one batch observation per request.
        assert value(found, "eventstreamd_ingest_events_total") == n
        assert value(found, "eventstreamd_ingest_requests_total", code="200") == len(sizes)
        assert value(found, "eventstreamd_ingest_requests_total", code="400") == 1
        assert value(found, "eventstreamd_ingest_batch_events_count") == len(sizes)
        assert value(found, "eventstreamd_ingest_batch_events_sum") == n
        assert value(found, "eventstreamd_ingest_batch_events_bucket", le="1.0") == 1
        assert value(found, "eventstreamd_ingest_batch_events_bucket", le="10.0") == 2
        assert value(found, "eventstreamd_head_seq") == n
        assert value(found, "eventstreamd_store_events") == n
        used, capacity = (value(found, "eventstreamd_store_size_bytes"),
                          value(found, "eventstreamd_store_capacity_bytes"))
        free = value(found, "eventstreamd_store_free_bytes")
        # free: the room left before publishing answers 507 (a reserve stays for the rest)
        assert used and capacity and free is not None and 0 < free < capacity - used
        assert value(found, "eventstreamd_ready") == 1
        # Neither the target nor its key is shown.
        assert receiver.url not in (await scrape(d))[1]
    finally:
        await receiver.close()


async def test_a_stopped_integration_has_lag_but_no_counters(daemon_factory: Factory) -> None:
    d = daemon_factory()
    async with ApiClient(d) as api:
        await api.webhook("idle", "http://127.0.0.1:9/never")
        await api.stop("idle")
        await api.publish([{"name": "order.created", "payload": {}}] * 4)
    idle = {"integration": "idle", "kind": "webhook"}

    async def probe() -> dict[Any, float]:
        return samples((await scrape(d))[1])

    # The sink winds down in the background after _stop; then its counters go.
    found = await eventually(probe, lambda f: value(
        f, "eventstreamd_delivered_events_total", **idle) is None, what="counters gone")
    assert value(found, "eventstreamd_lag_events", **idle) == 4
    assert value(found, "eventstreamd_integration_running", **idle) == 0


async def test_metrics_need_the_token_unless_public(daemon_factory: Factory) -> None:
    private = daemon_factory()
    status, text = await scrape(private, headers={})
    assert status == 401 and "unauthorized" in text
    assert (await scrape(private))[0] == 200
    public = daemon_factory({"metrics": {"public": True}})
    status, text = await scrape(public, headers={})
    assert status == 200 and "eventstreamd_ingest_events_total" in text


async def test_readyz(daemon_factory: Factory) -> None:
    d = daemon_factory()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{d.url}/readyz") as r:  # no token needed
            assert r.status == 200
            assert (await r.json())["status"] == "ready"
    d.stop()
    with anyio.fail_after(5):
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(f"{d.url}/readyz") as r:
                    raise AssertionError(f"a stopped daemon answered {r.status}")
            except aiohttp.ClientConnectionError:
                pass


async def test_long_walks_hand_the_event_loop_back_between_slices() -> None:
    """A scrape or a snapshot walks every integration; `in_slices` lets other tasks (a
    /healthz, a publish) run every `size` items instead of after the whole walk."""
    turns: list[int] = []
    walked: list[int] = []

    async def other_task() -> None:
        while len(walked) < 1000:
            turns.append(len(walked))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()  # it has started and is waiting for its turn
        async for item in in_slices(range(1000), size=100):
            walked.append(item)
    assert walked == list(range(1000))
    # It ran between slices (after 100, 200, ... items), never inside one.
    inside = sorted(set(turns) - {0})
    assert inside == list(range(100, 1000, 100)), inside
