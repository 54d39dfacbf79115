"""Property: whatever `POST /events` accepts, every sink finishes, and nothing waits behind it.

Hypothesis generates events — deep nesting, unicode, control characters, long
strings, odd ids, names and tenants — and publishes each batch to one real
daemon with one webhook and one S3 integration. For every batch that got a 200:
each of its events reaches the receiver (or the integration's rejected list)
and the S3 bucket, with the payload intact, and a sentinel published after it
arrives too, within a bounded time. Batches that got a 400 must have stored
nothing. The receiver runs in its own thread and event loop, since hypothesis
drives the test synchronously.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.daemon import DaemonProcess
from tests.helpers.receiver import Receiver
from tests.helpers.s3 import MotoServer, s3_params

EXAMPLES = int(os.environ.get("EVENTSTREAMD_FUZZ_EXAMPLES", "25"))
WAIT = float(os.environ.get("PROPERTY_WAIT", "30"))
BUCKET = "property"

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
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


class ThreadedReceiver:
    """The test suite's aiohttp receiver, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver = Receiver()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedReceiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self

    def markers(self) -> dict[Any, dict[str, Any]]:
        """Delivered bodies by payload marker (ids may repeat: they are the client's)."""
        return {r.body["payload"].get("_marker"): r.body for r in list(self.receiver.delivered)}

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Http:
    def __init__(self, daemon: DaemonProcess) -> None:
        parts = urllib.parse.urlsplit(daemon.url)
        self.host, self.port = parts.hostname or "", parts.port or 0
        self.headers = {**daemon.headers, "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=self.headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return response.status, orjson.loads(data) if data else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Http, ThreadedReceiver,
                                                                      MotoServer]]:
    moto = MotoServer().start()
    receiver = ThreadedReceiver().start()
    daemon = DaemonProcess(Path(tmp_path_factory.mktemp("property")), {
        "log": {"level": "info"},
        "s3": {"endpoint_url": moto.url, "rotate_interval": "300ms"},
        "webhook": {"timeout": "5s", "retry_initial": "50ms", "retry_max": "200ms"},
    }).start()
    try:
        asyncio.run(moto.create_bucket(BUCKET))
        api = Http(daemon)
        base = "/api/v1/org/integrations/eventstream"
        for body in ({"id": "hook", "integration_type": "permanent",
                      "callback_parameters": {"callback_url": receiver.receiver.url}},
                     {"id": "bucket", "integration_type": "permanent",
                      "s3_parameters": s3_params(BUCKET)}):
            status, answer = api.call("POST", base, orjson.dumps(body))
            assert status == 200, answer
        yield api, receiver, moto
    finally:
        daemon.kill()
        receiver.stop()
        moto.stop()
    assert "sink crashed" not in daemon.log()


def _s3_ids(moto: MotoServer) -> dict[Any, dict[str, Any]]:
    objects = asyncio.run(moto.objects(BUCKET))
    lines = [orjson.loads(line) for body in objects.values() for line in body.splitlines()]
    return {line["payload"].get("_marker"): line for line in lines}


_counter = iter(range(10**9))


@given(batch=st.lists(events, min_size=1, max_size=4))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_accepted_event_is_finished_by_every_sink(
        world: tuple[Http, ThreadedReceiver, MotoServer], batch: list[dict[str, Any]]) -> None:
    api, receiver, moto = world
    round_no = next(_counter)
    for position, event in enumerate(batch):
        if isinstance(event["payload"], dict):
            # A marker to find the event in S3 (ids are not part of an S3 line).
            event["payload"] = {**event["payload"], "_marker": f"{round_no}-{position}"}
    # The stdlib encoder: it also writes what orjson refuses (nesting beyond 254).
    status, answer = api.call("POST", "/events", json.dumps(batch).encode())
    assert status in (200, 400), (status, answer)
    sentinel_id = f"sentinel-{round_no}"
    sentinel = {"name": "order.created", "id": sentinel_id, "tenant": "acme",
                "payload": {"_marker": sentinel_id}}
    first = answer["first_seq"] if status == 200 else None
    status_s, answer_s = api.call("POST", "/events", orjson.dumps([sentinel]))
    assert status_s == 200, answer_s
    if status == 400:
        assert answer["error_code"] in ("invalid_event", "invalid_json"), answer
        assert answer_s["first_seq"] == (answer_s["last_seq"])  # nothing stored before it
        expected = []
    else:
        assert answer["accepted"] == len(batch) and answer_s["first_seq"] == first + len(batch)
        expected = batch
    deadline = time.monotonic() + WAIT
    while True:  # bounded by WAIT
        delivered, in_s3 = receiver.markers(), _s3_ids(moto)
        markers = [sentinel_id, *(e["payload"]["_marker"] for e in expected)]
        webhook_done = all(m in delivered for m in markers)
        s3_done = all(m in in_s3 for m in markers)
        if webhook_done and s3_done:
            break
        assert time.monotonic() < deadline, (
            f"not finished within {WAIT}s: webhook={webhook_done} s3={s3_done} batch={batch!r}")
        time.sleep(0.1)
    for event in expected:
        for body in (in_s3[event["payload"]["_marker"]], delivered[event["payload"]["_marker"]]):
            assert body["payload"] == event["payload"]
            assert body["name"] == event["name"]
