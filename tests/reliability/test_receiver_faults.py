"""A receiver failing every way: each event ends delivered or rejected, once, with reasons."""

from __future__ import annotations

import collections

import anyio
import pytest

from tests.helpers.api import ApiClient, events
from tests.helpers.daemon import Factory
from tests.helpers.faulty_receiver import FaultyReceiver

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_event_ends_delivered_or_rejected(daemon_factory: Factory,
                                                      seed: int) -> None:
    d = daemon_factory({
        "webhook": {"timeout": "500ms", "retry_initial": "20ms", "retry_max": "100ms",
                    "max_in_flight": 8},
        "limits": {"rejected_events": 1000, "log_entries": 1000},
    })
    receiver = await FaultyReceiver(seed=seed).start()
    total = 150
    try:
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(total))
            with anyio.fail_after(90):
                while len(receiver.final()) < total:
                    await anyio.sleep(0.2)
            final = receiver.final()
            expected_rejected = {k for k, answer in final.items() if answer == "reject"}
            with anyio.fail_after(20):
                while True:
                    rejected = await api.rejected("w1")
                    if len(rejected) >= len(expected_rejected):
                        break
                    await anyio.sleep(0.1)
            logs = await api.logs("w1")
    finally:
        await receiver.close()
    # Every event got a final answer, and only one: nothing was retried after it.
    assert len(final) == total
    assert all(answers[-1] in ("ok", "reject") and
               all(a not in ("ok", "reject") for a in answers[:-1])
               for answers in receiver.answers.values())
    # Rejected events are listed exactly once each.
    assert len(rejected) == len(expected_rejected)
    assert len({r["id"] for r in rejected}) == len(rejected)
    # The log says why each retry happened.
    reasons = collections.Counter()
    for entry in logs:
        if entry["action"] == "retry_triggered":
            for cause in ("status code 500", "status code 429", "timed out",
                          "closed the connection",
                          "ClientResponseError", "ClientPayloadError",
                          "ServerDisconnectedError", "BadStatusLine", "cannot connect"):
                if cause in entry["reason"]:
                    reasons[cause] += 1
    faults = collections.Counter(a for answers in receiver.answers.values() for a in answers)
    assert sum(reasons.values()) > 0 and faults["error"] + faults["throttle"] > 0
    assert reasons["status code 500"] > 0 and reasons["status code 429"] > 0
    assert reasons["timed out"] > 0
    assert sum(1 for e in logs if e["action"] == "event_rejected") == len(expected_rejected)
