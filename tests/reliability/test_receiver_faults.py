"""A receiver failing every way: each event ends delivered or rejected, once, with reasons."""

from __future__ import annotations

import collections

import pytest

from tests.helpers.api import ApiClient, events
from tests.helpers.daemon import Factory
from tests.helpers.receiver import RandomFaults, Receiver
from tests.helpers.wait import eventually

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_event_ends_delivered_or_rejected(daemon_factory: Factory,
                                                      seed: int) -> None:
    d = daemon_factory({
        "webhook": {"timeout": "500ms", "retry_initial": "20ms", "retry_max": "100ms",
                    "max_in_flight": 8},
        "limits": {"rejected_events": 1000, "log_entries": 1000},
    })
    faults = RandomFaults(seed=seed)
    receiver = await Receiver(faults).start()
    total = 150
    try:
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(total))
            final = await eventually(faults.final, lambda f: len(f) >= total, within=90,
                                     every=0.2, what="a final answer to every event")
            expected_rejected = {k for k, answer in final.items() if answer == "reject"}
            rejected = await eventually(lambda: api.rejected("w1"),
                                        lambda r: len(r) >= len(expected_rejected), within=20,
                                        every=0.1, what="the rejected events listed")
            logs = await api.logs("w1")
    finally:
        await receiver.close()
    # Every event got a final answer, and only one: nothing was retried after it.
    assert len(final) == total
    assert all(answers[-1] in ("ok", "reject") and
               all(a not in ("ok", "reject") for a in answers[:-1])
               for answers in faults.answers.values())
    # Rejected events are listed exactly once each.
    assert len(rejected) == len(expected_rejected)
    assert len({r["id"] for r in rejected}) == len(rejected)
    # The log says why each retry happened.
    reasons: collections.Counter[str] = collections.Counter()
    for entry in logs:
        if entry["action"] == "retry_triggered":
            for cause in ("status code 500", "status code 429", "timed out",
                          "closed the connection",
                          "ClientResponseError", "ClientPayloadError",
                          "ServerDisconnectedError", "BadStatusLine", "cannot connect"):
                if cause in entry["reason"]:
                    reasons[cause] += 1
    answered = collections.Counter(a for answers in faults.answers.values() for a in answers)
    assert sum(reasons.values()) > 0 and answered["error"] + answered["throttle"] > 0
    assert reasons["status code 500"] > 0 and reasons["status code 429"] > 0
    assert reasons["timed out"] > 0
    assert sum(1 for e in logs if e["action"] == "event_rejected") == len(expected_rejected)
