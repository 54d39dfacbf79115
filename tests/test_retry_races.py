"""Concurrent `_retry` of one rejected event: one delivery at most, attempts that add up.

Through real daemons on both backends (a real nats-server for JetStream) with a real
receiver, and the store's claim itself in-process on both backends."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from eventstreamd.config import Config
from eventstreamd.model import RetryClaim, RetryOutcome
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.storage.base import RetryInProgress, Store
from eventstreamd.storage.factory import open_store
from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.daemon import Factory
from tests.helpers.receiver import Received, Receiver
from tests.helpers.store import CREATED, held, rejected_n, stored_hook
from tests.helpers.wait import eventually

BACKENDS = ("lmdb", "jetstream")
FAST = {"webhook": {"timeout": "5s", "retry_initial": "50ms", "retry_max": "200ms"}}


# ------------------------------------------------------------ the store's claim


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    async with held(open_store(store_config, SINK_TYPES)) as s:
        yield s


def claim(token: str, at_ms: int = 1_000, for_ms: int = 60_000) -> RetryClaim:
    return RetryClaim(token, at_ms, at_ms + for_ms)


async def test_one_claim_at_a_time_and_attempts_counted_in_the_store(store: Store) -> None:
    integration = stored_hook()
    await store.create_integration(integration, cursor=1, limit=10, log=CREATED)
    fence = integration.fence()
    assert await store.add_rejected(fence, dataclasses.replace(rejected_n(1), attempts=1), CREATED)

    async def try_claim(n: int) -> str:
        try:
            got = await store.claim_rejected("a", "r-1", claim(f"t{n}"))
        except RetryInProgress as exc:
            assert exc.claim.token.startswith("t")
            return "busy"
        assert got is not None and got.retry_claim == claim(f"t{n}")
        return f"t{n}"

    outcomes = await asyncio.gather(*(try_claim(n) for n in range(30)))
    winners = [o for o in outcomes if o != "busy"]
    assert len(winners) == 1
    # Released by its own retry only; a stranger's token leaves it held.
    assert await store.update_rejected(fence, "r-1", RetryOutcome("stranger", False), CREATED)
    with pytest.raises(RetryInProgress):
        await store.claim_rejected("a", "r-1", claim("later"))
    assert await store.update_rejected(fence, "r-1", RetryOutcome(winners[0], False), CREATED)
    entry = await store.claim_rejected("a", "r-1", claim("next"))
    assert entry is not None and entry.attempts == 1  # not attempted: not counted
    # A claim whose retry died lapses.
    assert await store.claim_rejected("a", "r-1", claim("after", at_ms=61_000)) is not None
    # Concurrent outcomes of attempts that reached the receiver all count.
    await asyncio.gather(*(store.update_rejected(
        fence, "r-1", RetryOutcome(f"u{n}", True, f"answer {n}", 400), CREATED)
        for n in range(20)))
    entry = await store.get_rejected("a", "r-1")
    assert entry is not None and entry.attempts == 21 and entry.status == 400
    assert await store.claim_rejected("a", "r-9", claim("x")) is None
    assert await store.delete_rejected("a", "r-1")
    assert await store.claim_rejected("a", "r-1", claim("y", at_ms=99_000_000)) is None


# --------------------------------------------------------- through the daemon


@dataclasses.dataclass
class OneRejected:
    api: ApiClient
    receiver: Receiver
    retries: list[Received]  # the retries the receiver got
    rejected_id: str


@asynccontextmanager
async def one_rejected(daemon_factory: Factory, answer: int,
                       delay: float) -> AsyncIterator[OneRejected]:
    """A daemon with one webhook integration and one rejected event: its receiver rejects
    each event once (400), then answers retries with `answer` after `delay` seconds."""
    retries: list[Received] = []

    async def respond(received: Received, attempt: int) -> web.Response:
        if attempt == 1:
            return web.Response(status=400, text="rejected once")
        retries.append(received)
        await anyio.sleep(delay)
        return web.Response(status=answer, text=f"answered {answer}")

    receiver = await Receiver(respond).start()
    try:
        async with ApiClient(daemon_factory(FAST)) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(1))
            [entry] = await eventually(lambda: api.rejected("w1"), lambda r: len(r) == 1)
            assert entry["attempts"] == 1
            yield OneRejected(api, receiver, retries, str(entry["id"]))
    finally:
        await receiver.close()


async def post(api: ApiClient, path: str, method: str = "POST") -> tuple[int, Any]:
    return await api.answer(method, f"{BASE}/w1/{path}")


async def test_concurrent_retries_deliver_once(daemon_factory: Factory) -> None:
    async with one_rejected(daemon_factory, 200, delay=0.3) as case:
        api, path = case.api, f"rejected_events/{case.rejected_id}/_retry"
        answers = await asyncio.gather(*(post(api, path) for _ in range(40)))
        statuses = sorted(status for status, _ in answers)
        assert statuses.count(200) == 1, statuses
        assert set(statuses) <= {200, 404, 409}, statuses
        for status, body in answers:
            if status == 409:
                assert body["error_code"] == "retry_in_progress"
                assert set(body) == {"error_code", "message", "request_id"}
        assert len(case.retries) == 1 and len(case.receiver.delivered) == 1
        assert await api.rejected("w1") == []
        # Once delivered it is gone: later retries find nothing.
        assert (await post(api, path))[0] == 404


async def test_retries_racing_deletes_deliver_at_most_once(daemon_factory: Factory) -> None:
    async with one_rejected(daemon_factory, 200, delay=0.2) as case:
        path = f"rejected_events/{case.rejected_id}"
        calls = [post(case.api, f"{path}/_retry") for _ in range(20)]
        calls += [post(case.api, path, "DELETE") for _ in range(20)]
        answers = await asyncio.gather(*calls)
        assert {status for status, _ in answers} <= {200, 204, 404, 409}, answers
        assert len(case.retries) <= 1 and len(case.receiver.delivered) <= 1
        assert await case.api.rejected("w1") == []


async def test_concurrent_failing_retries_count_every_attempt(daemon_factory: Factory) -> None:
    async with one_rejected(daemon_factory, 400, delay=0.02) as case:
        failed = 0

        async def retry_until_tried() -> None:
            """One retry that reaches the receiver, however many turns it waits."""
            nonlocal failed
            for _ in range(400):  # bounded: each turn waits for another retry's end
                status, body = await post(case.api,
                                          f"rejected_events/{case.rejected_id}/_retry")
                if status == 502:
                    failed += 1
                    return
                assert status == 409 and body["error_code"] == "retry_in_progress", body
                await anyio.sleep(0.01)
            raise AssertionError("never got its turn")

        await asyncio.gather(*(retry_until_tried() for _ in range(20)))
        assert failed == 20 and len(case.retries) == 20
        [entry] = await case.api.rejected("w1")
        assert entry["attempts"] == 1 + 20  # the first delivery, and every retry
        assert entry["status"] == 400
