"""Status, the API list and /metrics with hundreds of integrations, in-process: what they
read of the store does not grow by a read per integration, and a /metrics scrape leaves
the event loop answering. Counts only, no timing thresholds."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstreamd.daemon import metrics as metrics_module
from eventstreamd.daemon.metrics import Scrape, render
from eventstreamd.model import EventFilterSpec
from eventstreamd.sinks.webhook import WebhookTarget
from tests.helpers.inprocess import Wired, serving, wired
from tests.helpers.store import CREATED, new_event, rejected_n
from tests.helpers.wait import eventually

RUNNING, STOPPED = 250, 50
# Reads that answer for one integration, and the reads that answer for all at once.
PER_INTEGRATION = ("get_integration", "get_cursor", "count_rejected", "list_rejected",
                   "get_rejected", "list_logs", "get_sink_state", "read_events")
ALL_AT_ONCE = ("list_integrations", "cursors", "rejected_counts")
NOWHERE = "http://127.0.0.1:9/never"  # no event matches: never contacted


def count_reads(store: Any) -> collections.Counter[str]:
    """Count every call of the store's reads from now on (the store goes on answering)."""
    counts: collections.Counter[str] = collections.Counter()
    for name in PER_INTEGRATION + ALL_AT_ONCE:
        method = getattr(store, name)

        async def counted(*args: Any, method: Any = method, name: str = name,
                          **kwargs: Any) -> Any:
            counts[name] += 1
            return await method(*args, **kwargs)

        setattr(store, name, counted)
    return counts


async def quiet_integrations(h: Wired, running: int, stopped: int = 0) -> list[str]:
    """`running` + `stopped` webhook integrations whose filter matches nothing, every
    running sink parked at the head."""
    ids = [f"q{k:04d}" for k in range(running + stopped)]
    for integration_id in ids:
        await h.service.register(integration_id, "permanent", WebhookTarget(NOWHERE),
                                 filter_spec=EventFilterSpec(("return.processed",)))
    for integration_id in ids[running:]:
        await h.service.stop(integration_id)
    await eventually(lambda: h.supervisor.feed.parked, lambda n: n == running,
                     what="every running sink waiting at the head", within=60)
    return ids


async def test_status_list_and_metrics_read_the_store_once_not_per_integration(
        tmp_path: Path) -> None:
    async with wired(tmp_path, max_integrations=RUNNING + STOPPED) as h:
        ids = await quiet_integrations(h, RUNNING, STOPPED)
        with_rejected = ids[::15]
        for n, integration_id in enumerate(with_rejected):
            integration = await h.store.get_integration(integration_id)
            for k in range(1 + n % 3):
                assert await h.store.add_rejected(integration.fence(), rejected_n(k), CREATED)
        await h.store.append([new_event(f"e{i}", {}) for i in range(10)])  # nobody's
        await eventually(lambda: h.supervisor.feed.stats.reads, lambda n: n >= 1,
                         what="the feed read the new events")

        reads = count_reads(h.store)
        for _ in range(3):
            await h.sampler.tick()
        snapshots = [await h.sampler.snapshot() for _ in range(2)]
        listed = await h.service.list_integrations()
        text = (await render(h.metrics)).decode()

        per_integration = {name: reads[name] for name in PER_INTEGRATION}
        # The stopped ones stand where they were created: their lag's age is one read of
        # the event at that position (all share it), or none when the feed holds it.
        assert per_integration.pop("read_events") <= 1, reads
        assert not any(per_integration.values()), reads
        assert all(reads[name] <= 4 for name in ALL_AT_ONCE), reads  # one per call at most
        assert len(listed) == RUNNING + STOPPED
        assert text.count("eventstreamd_lag_events{") == RUNNING + STOPPED
        rows = {row["id"]: row for row in snapshots[-1]["integrations"]}
        assert len(rows) == RUNNING + STOPPED
        for n, integration_id in enumerate(with_rejected):
            assert rows[integration_id]["rejected_events"] == 1 + n % 3
        for integration_id in ids[:RUNNING]:  # filtered out: moved past everything
            assert rows[integration_id]["lag_events"] == 0
        for integration_id in ids[RUNNING:]:
            row = rows[integration_id]
            assert (row["status"], row["cursor"], row["lag_events"]) == ("stopped", 1, 10)
            assert row["lag_seconds"] is not None
        # The counts follow a write: a rejected event deleted is seen at the next snapshot.
        assert await h.store.delete_rejected(with_rejected[0], "r-0")
        rows = {row["id"]: row for row in (await h.sampler.snapshot())["integrations"]}
        assert rows[with_rejected[0]]["rejected_events"] == 0


async def test_a_scrape_is_rendered_while_the_loop_answers_healthz(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text of a scrape of hundreds of integrations is built in a worker thread: while
    it is (made to take a while here), /healthz requests on the same loop are answered."""
    windows: list[tuple[float, float]] = []
    real = metrics_module.render_text

    def slow_render(scrape: Scrape) -> bytes:
        started = time.monotonic()
        try:
            time.sleep(0.3)  # as a big scrape would take: the loop must go on meanwhile
            return real(scrape)
        finally:
            windows.append((started, time.monotonic()))

    monkeypatch.setattr(metrics_module, "render_text", slow_render)
    async with wired(tmp_path, max_integrations=RUNNING) as h:
        await quiet_integrations(h, RUNNING)
        async with serving(h) as api:
            answered: list[float] = []
            scraped = anyio.Event()

            async def healthz_until_scraped() -> None:
                while not scraped.is_set():
                    status, _ = await api.answer("GET", "/healthz")
                    assert status == 200
                    answered.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                tg.start_soon(healthz_until_scraped)
                status, text = await api.answer("GET", "/metrics")
                scraped.set()
    assert status == 200 and text.count("eventstreamd_lag_events{") == RUNNING
    assert len(windows) == 1
    started, ended = windows[0]
    during = [t for t in answered if started < t < ended]
    assert len(during) >= 3, (len(answered), ended - started)
