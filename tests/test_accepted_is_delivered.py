"""Property: whatever `POST /events` accepts, every sink finishes, and nothing waits behind it.

Hypothesis generates events — deep nesting, unicode, control characters, long
strings, odd ids, names and tenants — and publishes each batch to one real
daemon with one webhook and one S3 integration. For every batch that got a 200:
each of its events reaches the receiver (or the integration's rejected list)
and the S3 bucket, with the payload intact, and a sentinel published after it
arrives too, within a bounded time. Batches that got a 400 must have stored
nothing. The receiver and the API client run on an event loop in a thread of their
own, since hypothesis drives the test synchronously.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.api import ApiClient
from tests.helpers.background import LoopThread
from tests.helpers.daemon import FAST, DaemonProcess, merge
from tests.helpers.receiver import Receiver
from tests.helpers.s3 import MotoServer, s3_params
from tests.helpers.wait import eventually_sync

EXAMPLES = int(os.environ.get("EVENTSTREAMD_FUZZ_EXAMPLES", "25"))
WAIT = float(os.environ.get("PROPERTY_WAIT", "30"))
BUCKET = "property"

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # not encodable as UTF-8
text = st.text(st.characters(codec="utf-8", exclude_categories=SURROGATES), max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(text, inner, max_size=3), max_leaves=12)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A payload nested far beyond what other strategies reach: sometimes too deep."""
    depth = draw(st.integers(1, 300))
    value: Any = draw(scalars)
    for _ in range(depth):
        value = {"d": value} if draw(st.booleans()) else [value]
    return {"deep": value}


payloads = st.dictionaries(text, values, max_size=4) | deep()
event_ids = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), min_size=1,
                    max_size=130) | text
names = st.sampled_from(["order.created", "return.processed"]) | text
tenants = st.sampled_from(["acme", "beta.co", "..", "a\n"]) | text
events = st.fixed_dictionaries(
    {"name": names, "payload": payloads},
    optional={"id": event_ids, "tenant": tenants,
              "published_at": st.sampled_from(["2024-05-01T12:00:00Z",
                                               "2024-05-01T12:00:00+02:00"]) | text})


@dataclass
class World:
    """One daemon with a webhook and an S3 integration, its receiver and its bucket; the
    receiver and the API client run on `loop`, the test thread waits for them."""

    loop: LoopThread
    api: ApiClient
    receiver: Receiver
    moto: MotoServer

    def markers(self) -> dict[Any, dict[str, Any]]:
        """Delivered bodies by payload marker (ids may repeat: they are the client's)."""
        return {r.body["payload"].get("_marker"): r.body for r in list(self.receiver.delivered)}

    def in_s3(self) -> dict[Any, dict[str, Any]]:
        objects = self.loop.run(self.moto.objects(BUCKET))
        lines = [orjson.loads(line) for body in objects.values() for line in body.splitlines()]
        return {line["payload"].get("_marker"): line for line in lines}

    def publish(self, body: bytes) -> tuple[int, Any]:
        return self.loop.run(self.api.answer("POST", "/events", raw=body))


async def _client(daemon: DaemonProcess) -> ApiClient:
    return ApiClient(daemon)  # its session belongs to the loop it is made on


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    moto = MotoServer().start()
    loop = LoopThread().start()
    receiver = loop.run(Receiver().start())
    daemon = DaemonProcess(Path(tmp_path_factory.mktemp("property")), {
        "log": {"level": "info"},
        "s3": {"endpoint_url": moto.url, "rotate_interval": "300ms"},
        **merge(FAST, {"webhook": {"timeout": "5s"}}),
    }).start()
    api = loop.run(_client(daemon))
    try:
        loop.run(moto.create_bucket(BUCKET))
        loop.run(api.webhook("hook", receiver.url))
        loop.run(api.create(id="bucket", s3_parameters=s3_params(BUCKET)))
        yield World(loop, api, receiver, moto)
    finally:
        daemon.kill()
        loop.run(api.__aexit__())
        loop.run(receiver.close())
        loop.stop()
        moto.stop()
    assert "sink crashed" not in daemon.log()


_counter = iter(range(10**9))


@given(batch=st.lists(events, min_size=1, max_size=4))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_accepted_event_is_finished_by_every_sink(
        world: World, batch: list[dict[str, Any]]) -> None:
    round_no = next(_counter)
    for position, event in enumerate(batch):
        if isinstance(event["payload"], dict):
            # A marker to find the event in S3 (ids are not part of an S3 line).
            event["payload"] = {**event["payload"], "_marker": f"{round_no}-{position}"}
    # The stdlib encoder: it also writes what orjson refuses (nesting beyond 254).
    status, answer = world.publish(json.dumps(batch).encode())
    assert status in (200, 400), (status, answer)
    sentinel_id = f"sentinel-{round_no}"
    sentinel = {"name": "order.created", "id": sentinel_id, "tenant": "acme",
                "payload": {"_marker": sentinel_id}}
    first = answer["first_seq"] if status == 200 else None
    status_s, answer_s = world.publish(orjson.dumps([sentinel]))
    assert status_s == 200, answer_s
    if status == 400:
        assert answer["error_code"] in ("invalid_event", "invalid_json"), answer
        assert answer_s["first_seq"] == (answer_s["last_seq"])  # nothing stored before it
        expected = []
    else:
        assert first is not None
        assert answer["accepted"] == len(batch) and answer_s["first_seq"] == first + len(batch)
        expected = batch
    markers = [sentinel_id, *(e["payload"]["_marker"] for e in expected)]

    def finished() -> dict[str, bool]:
        delivered, in_s3 = world.markers(), world.in_s3()
        return {"webhook": all(m in delivered for m in markers),
                "s3": all(m in in_s3 for m in markers)}

    eventually_sync(finished, lambda done: all(done.values()), within=WAIT, every=0.1,
                    what=f"every sink finished batch={batch!r}")
    delivered, in_s3 = world.markers(), world.in_s3()
    for event in expected:
        for body in (in_s3[event["payload"]["_marker"]], delivered[event["payload"]["_marker"]]):
            assert body["payload"] == event["payload"]
            assert body["name"] == event["name"]
