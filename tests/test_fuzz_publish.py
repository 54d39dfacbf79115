"""Fuzz `POST /events` on a real daemon: nothing may crash it, 500, or store half a request."""

from __future__ import annotations

import http.client
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.daemon import DaemonProcess

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | \
    st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
maybe_event = st.fixed_dictionaries(
    {},
    optional={"name": st.text(max_size=30) | st.sampled_from(["order.created", "a.b"]) |
              json_values,
              "payload": json_values | st.just({}),
              "published_at": st.text(max_size=30) | st.just("2024-01-01T00:00:00Z") |
              json_values,
              "tenant": st.text(max_size=10) | json_values,
              "id": st.text(max_size=140) | json_values,
              "extra": json_values})
bodies = st.one_of(
    st.binary(max_size=300),  # anything, invalid UTF-8 included
    json_values.map(orjson.dumps),
    maybe_event.map(orjson.dumps),
    st.lists(maybe_event, max_size=5).map(orjson.dumps),
    st.lists(maybe_event, max_size=5).map(lambda es: b"\n".join(orjson.dumps(e) for e in es)),
)
content_types = st.sampled_from(["application/json", "application/x-ndjson", "text/plain", ""])


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(Path(tmp_path_factory.mktemp("fuzz")),
                      {"server": {"max_body": "256KiB"}, "log": {"level": "info"}}).start()
    yield d
    d.kill()


def post(d: DaemonProcess, body: bytes, content_type: str) -> tuple[int, Any]:
    parts = urllib.parse.urlsplit(d.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        headers = dict(d.headers)
        if content_type:
            headers["Content-Type"] = content_type
        conn.request("POST", "/events", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def head(d: DaemonProcess) -> int:
    status, body = post(d, b'{"name": "probe.ok", "payload": {}}', "application/json")
    assert status == 200
    return int(body["last_seq"])


@settings(max_examples=int(os.environ.get("EVENTSTREAMD_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies, content_type=content_types)
def test_random_bodies(fuzz_daemon: DaemonProcess, body: bytes, content_type: str) -> None:
    status, parsed = post(fuzz_daemon, body, content_type)
    assert status in (200, 400), (status, parsed)
    if status == 200:
        assert parsed["accepted"] == parsed["last_seq"] - parsed["first_seq"] + 1
    else:
        assert set(parsed) == {"error_code", "message", "request_id"}


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"name": "a.b", "payload": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b'{"name": "a.b", "payload": {"s": "\xff\xfe"}}',
    b"\n".join([b'{"name": "a.b", "payload": {}}'] * 3 + [b"nope"]),
], ids=["deeply-nested", "nested-payload", "invalid-utf8", "bad-last-ndjson-line"])
def test_nasty_bodies_are_refused_cleanly(fuzz_daemon: DaemonProcess, body: bytes) -> None:
    before = head(fuzz_daemon)
    status, parsed = post(fuzz_daemon, body, "application/x-ndjson" if b"\n" in body
                          else "application/json")
    assert status in (400, 413), (status, parsed)
    assert parsed["error_code"] and parsed["request_id"]
    assert head(fuzz_daemon) == before + 1  # nothing of the refused request was stored


def test_huge_payload_gets_413(fuzz_daemon: DaemonProcess) -> None:
    body = orjson.dumps({"name": "a.b", "payload": {"x": "y" * 300_000}})
    status, parsed = post(fuzz_daemon, body, "application/json")
    assert status == 413 and parsed["error_code"] == "payload_too_large"
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None
