"""Auto-stop through the real daemon: an integration whose every delivery attempt failed
for `stop_after_failing` is stopped, says why (log, status, metric), keeps its cursor, and
`_start` delivers everything it missed even after `limits.restart_window`; the failure
streak's start survives a daemon restart."""

from __future__ import annotations

import time

import anyio
import pytest

from tests.helpers.api import ApiClient, events
from tests.helpers.control import status
from tests.helpers.daemon import Factory
from tests.helpers.receiver import Receiver, Switch, answer
from tests.helpers.wait import eventually
from tests.test_metrics import samples, scrape, value

BOTH = pytest.mark.parametrize("backend", ["lmdb", "jetstream"])
FAST = {"webhook": {"retry_initial": "50ms", "retry_max": "100ms"}}


async def test_an_integration_failing_too_long_is_stopped_and_resumes_with_nothing_lost(
        daemon_factory: Factory) -> None:
    switch = Switch(answer(503, "down for maintenance"))
    receiver = await Receiver(switch).start()
    d = daemon_factory({**FAST, "limits": {"restart_window": "1s"}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("flaky", receiver.url, controls={"stop_after_failing": "2s"})
            await api.publish(events(10))
            await eventually(lambda: api.get("flaky"), lambda i: i["status"] == "stopped",
                             within=30, what="the integration stopped by itself")
            [entry] = await api.wait_logs("flaky", "auto_stopped")
            assert "Every delivery attempt failed for" in entry["reason"]
            assert "down for maintenance" in entry["reason"]
            assert "(HTTP status code 503)" in entry["reason"]
            [item] = (await status(d))["integrations"]
            assert item["auto_stopped"] is True and item["health"] == "stopped"
            assert "down for maintenance" in item["stop_reason"]
            _, text = await scrape(d)
            assert value(samples(text), "eventstreamd_integration_auto_stopped",
                         integration="flaky", kind="webhook") == 1
            await api.publish(events(10, start=10))  # missed while stopped
            await anyio.sleep(1.5)  # past the restart window
            switch.flip()
            await api.start("flaky")
            await eventually(lambda: len(receiver.delivered_keys) == 20)
            assert "events_skipped" not in {e["action"] for e in await api.logs("flaky")}
            [item] = (await status(d))["integrations"]
            assert item["auto_stopped"] is False and item["stop_reason"] is None
            _, text = await scrape(d)
            assert value(samples(text), "eventstreamd_integration_auto_stopped",
                         integration="flaky", kind="webhook") == 0
    finally:
        await receiver.close()


@BOTH
async def test_the_failure_streak_survives_a_daemon_restart(daemon_factory: Factory) -> None:
    switch = Switch(answer(503, "down for maintenance"))
    receiver = await Receiver(switch).start()
    limit = 6.0
    d = daemon_factory(FAST)
    try:
        async with ApiClient(d) as api:
            await api.webhook("streak", receiver.url,
                              controls={"stop_after_failing": f"{limit:g}s"})
            await api.publish(events(3))
            await eventually(lambda: len(receiver.requests) >= 1, within=30)
            first_failure = receiver.requests[0].at
        await anyio.sleep(max(0.0, first_failure + limit - 2.0 - time.time()))
        d.restart()
        restarted = time.time()
        async with ApiClient(d) as api:
            await api.wait_logs("streak", "auto_stopped", timeout=30)
            stopped = time.time()
            assert (await api.get("streak"))["status"] == "stopped"
        # Begun anew at the restart, the streak would last `limit` more seconds.
        assert stopped - restarted < limit - 1.0, (stopped - restarted)
        assert receiver.delivered == []
    finally:
        await receiver.close()
