"""`POST /events` against the real daemon: formats, all-or-nothing, auth, limits, durability.
Every daemon test runs on both backends (LMDB and JetStream)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from multidict import CIMultiDict

from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.daemon import DaemonProcess, Factory, write_config
from tests.helpers.store import decoded, read_all

BACKENDS = EVERY_BACKEND


async def post(d: DaemonProcess, body: bytes, content_type: str = "application/json",
               headers: dict[str, str] | None = None) -> tuple[int, Any, CIMultiDict[str]]:
    hdrs = {"Content-Type": content_type, **(d.headers if headers is None else headers)}
    async with aiohttp.ClientSession() as s, s.post(f"{d.url}/events", data=body,
                                                    headers=hdrs) as r:
        return r.status, await r.json(content_type=None), CIMultiDict(r.headers)


def assert_error_shape(body: Any, headers: CIMultiDict[str], code: str) -> None:
    assert set(body) == {"error_code", "message", "request_id"}
    assert body["error_code"] == code
    assert headers["X-Request-Id"] == body["request_id"]


async def test_single_object(daemon: DaemonProcess) -> None:
    status, body, headers = await post(daemon, orjson.dumps(
        {"name": "order.created", "payload": {"a": 1}, "tenant": "acme", "id": "evt-1",
         "published_at": "2024-05-01T12:00:00+02:00"}))
    assert status == 200 and body == {"accepted": 1, "first_seq": 1, "last_seq": 1}
    assert "X-Request-Id" in headers
    daemon.stop()
    [event] = await read_all(daemon)
    assert (event.id, event.tenant, event.name) == ("evt-1", "acme", "order.created")
    # The delivery body, encoded once at ingest, exactly as every sink will send it.
    assert event.body == (b'{"tenant":"acme","name":"order.created",'
                          b'"published_at":"2024-05-01T10:00:00.000Z","payload":{"a":1}}')


async def test_array_and_defaults(daemon: DaemonProcess) -> None:
    events = [{"name": "order.created", "payload": {"i": i}} for i in range(3)]
    status, body, _ = await post(daemon, orjson.dumps(events))
    assert status == 200 and body == {"accepted": 3, "first_seq": 1, "last_seq": 3}
    daemon.stop()
    stored = await read_all(daemon)
    assert [decoded(e)["payload"]["i"] for e in stored] == [0, 1, 2]
    assert all(e.tenant == "default" for e in stored)
    assert len({e.id for e in stored}) == 3 and all(len(e.id) == 36 for e in stored)
    assert all(decoded(e)["published_at"].endswith("Z") for e in stored)


async def test_ndjson(daemon: DaemonProcess) -> None:
    lines = b"\n".join(orjson.dumps({"name": "return.processed", "payload": {"i": i}})
                       for i in range(1000)) + b"\n\n"
    status, body, _ = await post(daemon, lines, "application/x-ndjson")
    assert status == 200 and body == {"accepted": 1000, "first_seq": 1, "last_seq": 1000}


BAD_EVENTS = [
    ({"payload": {}}, "'name'"),
    ({"name": "nodot", "payload": {}}, "'name'"),
    ({"name": "order.created"}, "'payload'"),
    ({"name": "order.created", "payload": []}, "'payload'"),
    ({"name": "order.created", "payload": {}, "published_at": "yesterday"}, "'published_at'"),
    ({"name": "order.created", "payload": {}, "tenant": ""}, "'tenant'"),
    ({"name": "order.created", "payload": {}, "id": "x" * 129}, "'id'"),
    ({"name": "order.created", "payload": {}, "playload": {}}, "'playload'"),
    ("not an object", "JSON object"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_EVENTS)
async def test_one_bad_event_rejects_the_request(daemon: DaemonProcess, bad: Any,
                                                 field: str) -> None:
    good = {"name": "order.created", "payload": {}}
    status, body, headers = await post(daemon, orjson.dumps([good, good, bad, good]))
    assert status == 400
    assert_error_shape(body, headers, "invalid_event")
    assert "event 2" in body["message"] and field in body["message"]
    async with aiohttp.ClientSession() as s, s.get(f"{daemon.url}/healthz") as r:
        assert (await r.json())["head"] == 0  # nothing of the request was stored


@pytest.mark.parametrize(("body", "ctype"), [
    (b"{nope", "application/json"),
    (b'{"name": "a.b", "payload": {}}\n{broken', "application/x-ndjson"),
    (b"[]", "application/json"),
])
async def test_malformed_bodies(daemon: DaemonProcess, body: bytes, ctype: str) -> None:
    status, parsed, headers = await post(daemon, body, ctype)
    assert status == 400 and parsed["error_code"] in ("invalid_json", "invalid_event")
    assert headers["X-Request-Id"] == parsed["request_id"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdA=="}])
async def test_auth_required(daemon: DaemonProcess, headers: dict[str, str]) -> None:
    status, body, hdrs = await post(daemon, b'{"name":"a.b","payload":{}}', headers=headers)
    assert status == 401
    assert_error_shape(body, hdrs, "unauthorized")


async def test_healthz_needs_no_auth_and_errors_have_one_shape(daemon: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{daemon.url}/healthz") as r:
            assert r.status == 200 and "X-Request-Id" in r.headers
        async with s.get(f"{daemon.url}/no/such/route", headers=daemon.headers) as r:
            assert r.status == 404
            assert_error_shape(await r.json(), CIMultiDict(r.headers), "not_found")
        async with s.delete(f"{daemon.url}/events", headers=daemon.headers) as r:
            assert r.status == 405
            assert_error_shape(await r.json(), CIMultiDict(r.headers), "method_not_allowed")
        async with s.get(f"{daemon.url}/no/such/route") as r:
            assert r.status == 401
            assert_error_shape(await r.json(), CIMultiDict(r.headers), "unauthorized")


async def test_body_over_limit_gets_413(daemon_factory: Factory) -> None:
    d = daemon_factory({"server": {"max_body": "64KiB"}})
    big = orjson.dumps({"name": "order.created", "payload": {"x": "y" * 70_000}})
    status, body, headers = await post(d, big)
    assert status == 413
    assert_error_shape(body, headers, "payload_too_large")
    status, _, _ = await post(d, b'{"name":"a.b","payload":{}}')
    assert status == 200


def store_size(backend: str, size: str) -> dict[str, Any]:
    """The setting that caps the store: LMDB's map, or the JetStream event stream."""
    if backend == "jetstream":
        return {"jetstream": {"max_bytes": size}}
    return {"storage": {"map_size": size}}


async def test_full_store_gets_507_and_recovers(daemon_factory: Factory, backend: str) -> None:
    d = daemon_factory(store_size(backend, "1MiB"))
    event = orjson.dumps({"name": "order.created", "payload": {"pad": "x" * 8000}})
    acknowledged = 0
    for _ in range(500):  # bounded: 1 MiB fills after ~100 of these
        status, body, headers = await post(d, event)
        if status != 200:
            break
        acknowledged += 1
    assert status == 507
    assert_error_shape(body, headers, "insufficient_storage")
    assert 0 < acknowledged < 500
    # A small event may still fit; either way the daemon answers and stays up.
    status, _, _ = await post(d, b'{"name":"a.b","payload":{}}')
    assert status in (200, 507)
    extra = 1 if status == 200 else 0
    # Grow the map and restart: everything acknowledged is there, and publishing works.
    d.reconfigure(store_size(backend, "16MiB"))
    d.restart()
    status, body, _ = await post(d, event)
    assert status == 200 and body["first_seq"] == acknowledged + extra + 1
    d.stop()
    assert len(await read_all(d)) == acknowledged + extra + 1


async def test_sigkill_after_ack_loses_nothing(daemon: DaemonProcess) -> None:
    acked: list[tuple[int, int]] = []

    async def publisher(n: int) -> None:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                body = orjson.dumps([{"name": "order.created", "payload": {"p": n, "i": i}}] * 5)
                async with s.post(f"{daemon.url}/events", data=body,
                                  headers=daemon.headers) as r:
                    assert r.status == 200
                    data = await r.json()
                    acked.append((data["first_seq"], data["last_seq"]))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(publisher, n)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start()
    async with aiohttp.ClientSession() as s, s.get(f"{daemon.url}/healthz") as r:
        assert (await r.json())["head"] == 800
    daemon.stop()
    stored = {e.seq for e in await read_all(daemon)}
    assert all(seq in stored for first, last in acked for seq in range(first, last + 1))
    assert len(acked) == 160


async def test_sigterm_and_sigint_exit_zero(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    daemon.start()
    assert daemon.stop(signal.SIGINT) == 0
    assert not (daemon.data_dir / "runtime.json").exists()


def test_generated_token(daemon_factory: Factory) -> None:
    d = daemon_factory({"auth": {"tokens": []}})
    token_file = d.data_dir / "api_token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.data_dir).st_mode) == 0o700
    # Never logged, in either format: the log says where it is, once, on the start that
    # made it.
    assert token not in d.log()
    assert d.log().count(f"stored it in {token_file}") == 1
    d.restart()
    assert token_file.read_text().strip() == token
    assert token not in d.log()
    assert d.log().count(f"stored it in {token_file}") == 1


def test_failed_start_generates_no_token(daemon: DaemonProcess) -> None:
    port = int(daemon.url.rsplit(":", 1)[1])
    data_dir = daemon.workdir / "other-data"
    other = write_config(daemon.workdir / "second.toml", {
        "server": {"host": "127.0.0.1", "port": port}, "log": {"format": "json"},
        "storage": {"data_dir": str(data_dir)}})
    result = subprocess.run([sys.executable, "-m", "eventstreamd", "run", "--config",
                             str(other)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot listen" in result.stderr
    assert not (data_dir / "api_token").exists()
    assert "generated an API token" not in result.stderr
