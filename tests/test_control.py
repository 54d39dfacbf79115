"""The control socket: permissions, concurrent clients, a stuck client, malformed input; and the
status snapshot it pushes (lag, rates, health), built in-process from a real store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from anyio.abc import UNIXSocketStream

from eventstreamd.config import Config, StorageConfig
from eventstreamd.daemon.contracts import ChangeFeed, SinkStatus
from eventstreamd.daemon.control import ControlServer
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.status import StatusSampler, health
from eventstreamd.model import Change, Integration, LogEntry, Status, TargetParams
from eventstreamd.sinks.base import PipelineStatus, SinkStats
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.sinks.s3 import S3Target
from eventstreamd.sinks.webhook import WebhookTarget
from eventstreamd.storage.base import Store
from eventstreamd.storage.factory import open_store
from eventstreamd.storage.lmdb_store import LmdbStore
from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.control import Line, control_path
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.receiver import Receiver
from tests.helpers.store import held, new_event, opened
from tests.helpers.wait import eventually

BACKENDS = EVERY_BACKEND  # the daemon tests and the snapshot test run on both

WAIT = 20.0  # the bound on every wait in this file, in seconds


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a daemon log record carries (`extra={"fields": ...}`)."""
    found: dict[str, Any] = record.__dict__["fields"]
    return found


def integration(snapshot: dict[str, Any], integration_id: str) -> dict[str, Any] | None:
    return next((i for i in snapshot["integrations"] if i["id"] == integration_id), None)


# ------------------------------------------------------------- real daemon


async def test_socket_is_private_and_removed_on_stop(daemon: DaemonProcess) -> None:
    path = control_path(daemon)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert not [p for p in daemon.data_dir.iterdir() if p.name.startswith(".c")]  # bind dir gone
    client = await Line.connect(path)
    assert (await client.call("ping"))["result"]["protocol"] == 1
    await client.close()
    assert daemon.stop() == 0
    assert not path.exists()


async def test_stale_socket_is_replaced_live_or_foreign_file_refused(
        daemon_factory: Factory, tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    # A socket file nobody listens on: what a SIGKILLed daemon leaves behind.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    daemon = daemon_factory({"control": {"socket": str(path)}})
    client = await Line.connect(path)
    assert (await client.call("ping"))["ok"] is True
    await client.close()
    # A second daemon on the same socket would steal it: refused, the first keeps it.
    with pytest.raises(RuntimeError, match="another process is listening"):
        daemon_factory({"control": {"socket": str(path)}}, name="second")
    client = await Line.connect(path)
    assert (await client.call("ping"))["ok"] is True
    await client.close()
    assert daemon.stop() == 0
    foreign = tmp_path / "not-a-socket"
    foreign.write_text("keep me")
    with pytest.raises(RuntimeError, match="is not a socket"):
        daemon_factory({"control": {"socket": str(foreign)}}, name="third")
    assert foreign.read_text() == "keep me"


async def test_two_clients_at_once_share_the_api(daemon: DaemonProcess) -> None:
    receiver = await Receiver().start()
    try:
        async with ApiClient(daemon) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(3))
            await eventually(lambda: len(receiver.delivered) == 3)
            first = await Line.connect(control_path(daemon))
            second = await Line.connect(control_path(daemon))
            try:
                for client in (first, second):
                    subscribed = await client.call("subscribe")
                    assert subscribed["ok"] and subscribed["result"]["head"] == 3
                    assert (await client.push())["integrations"][0]["id"] == "w1"
                # What the socket lists is what the HTTP API lists.
                listed = (await first.call("list"))["result"]["integrations"]
                assert listed == (await api.request("GET", BASE))["integrations"]
                # One client stops the integration; the other sees it, and so does HTTP.
                stopped = await first.call("stop", integration_id="w1")
                assert stopped["result"]["status"] == "stopped"
                assert (await api.get("w1"))["status"] == "stopped"
                with anyio.fail_after(WAIT):
                    while True:
                        item = integration(await second.push(), "w1")
                        if item and item["status"] == "stopped":
                            break
                assert item["health"] == "stopped"
                assert item["cursor"] == 4 and item["lag_events"] == 0
                started = await second.call("start", integration_id="w1")
                assert started["result"]["status"] == "running"
                assert (await api.get("w1"))["status"] == "running"
                logs = (await first.call("logs", integration_id="w1"))["result"]["entries"]
                assert [e["action"] for e in logs[:2]] == ["integration_started",
                                                          "integration_stopped"]
            finally:
                await first.close()
                await second.close()
    finally:
        await receiver.close()


async def test_api_errors_are_the_http_api_errors(daemon: DaemonProcess) -> None:
    client = await Line.connect(control_path(daemon))
    try:
        async with ApiClient(daemon) as api:
            for op, fields, method, path in [
                ("get", {"integration_id": "nope"}, "GET", f"{BASE}/nope"),
                ("start", {"integration_id": "nope"}, "POST", f"{BASE}/nope/_start"),
                ("rejected_event", {"integration_id": "nope", "event_id": "e"}, "GET",
                 f"{BASE}/nope/rejected_events/e"),
            ]:
                response = await client.call(op, **fields)
                http = await api.request(method, path, expect=404)
                assert response["ok"] is False
                assert response["error"] == {"error_code": http["error_code"],
                                             "message": http["message"], "status": 404}
    finally:
        await client.close()


async def test_malformed_lines_get_errors_and_the_daemon_survives(
        daemon: DaemonProcess) -> None:
    path = control_path(daemon)
    client = await Line.connect(path)
    cases: list[tuple[bytes, str]] = [
        (b"this is not json", "invalid_json"),
        (b"{\"op\": \"ping\"", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b"\"ping\"", "invalid_request"),
        (b"{\"id\": {\"x\": 1}, \"op\": \"ping\"}", "invalid_request"),
        (b"{\"id\": 5}", "missing_field"),
        (b"{\"id\": 6, \"op\": \"explode\"}", "unknown_op"),
        (b"{\"id\": 7, \"op\": 42}", "unknown_op"),
        (b"{\"id\": 8, \"op\": \"stop\"}", "missing_field"),
        (b"{\"id\": 9, \"op\": \"stop\", \"integration_id\": 3}", "invalid_request"),
        (b"{\"id\": 10, \"op\": \"retry_rejected\", \"integration_id\": \"w\"}", "missing_field"),
        (b"\xff\xfe binary", "invalid_json"),
    ]
    try:
        for line, code in cases:
            await client.send_raw(line + b"\n")
            response = await client.response()
            assert response["ok"] is False, line
            assert response["error"]["error_code"] == code, (line, response)
            assert response["error"]["message"]
        await client.send_raw(b"\n   \n")  # blank lines are ignored, not answered
        assert (await client.call("ping"))["ok"] is True  # still usable
        # A line longer than the limit cannot be framed: error, then the server closes.
        await client.send_raw(b"{\"op\": \"" + b"x" * (70 * 1024) + b"\"}\n")
        response = await client.response()
        assert response["error"]["error_code"] == "line_too_long"
        # Closed with the rest of our line unread, so the kernel may report a reset.
        with anyio.fail_after(WAIT), pytest.raises((anyio.IncompleteRead, anyio.EndOfStream,
                                                    anyio.BrokenResourceError)):
            await client.read()
    finally:
        await client.close()
    # A client that hangs up mid-request, and one that half-closes after a request
    # without a trailing newline (as `printf ... | socat` does), harm nothing.
    rude = await Line.connect(path)
    await rude.send_raw(b"{\"id\": 1, \"op\": \"sta")
    await rude.close()
    polite = await Line.connect(path)
    await polite.send_raw(b"{\"id\": 2, \"op\": \"status\"}")
    await polite.stream.send_eof()
    answer = await polite.response()
    assert answer["id"] == 2 and answer["ok"] and "head" in answer["result"]
    await polite.close()
    fresh = await Line.connect(path)
    assert (await fresh.call("status"))["ok"] is True
    await fresh.close()
    async with ApiClient(daemon) as api:
        assert (await api.request("GET", "/healthz"))["status"] == "ok"


# ------------------------------------------------------------- in-process


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ControlServer, LmdbStore, Path]]:
    """A real store, service and control server with a tiny queue and a fast push rate."""
    config = Config(storage=StorageConfig(data_dir=str(tmp_path / "data")))
    async with held(opened(config.data_dir)) as store:
        changes = ChangeFeed()
        service = IntegrationService(store, config, changes, None)
        path = tmp_path / "c.sock"
        # No sinks run: the snapshot says only what the store says.
        server = ControlServer(path, service, StatusSampler(store, Sinks(), config),
                               queue_size=4, push_interval=0.005)
        for i in range(10):  # ~5 KiB snapshots: the kernel buffer fills in a few dozen pushes
            await service.create({"id": f"webhook-{i}", "integration_type": "permanent",
                                  "callback_parameters": {
                                      "callback_url": f"http://127.0.0.1:9/hook/{i}"}})
        # A plain task, not a task group: the fixture's setup and teardown run in
        # different tasks.
        task = asyncio.create_task(server.run())
        await eventually(path.exists, within=WAIT, every=0.01, what="the control socket")
        yield server, store, path
        await server.stop()
        with anyio.move_on_after(5):
            await task


async def test_a_client_that_never_reads_is_dropped(
        served: tuple[ControlServer, LmdbStore, Path]) -> None:
    server, _, path = served
    healthy = await Line.connect(path)
    assert (await healthy.call("subscribe"))["ok"]
    stuck = await anyio.connect_unix(path)
    await stuck.send(b"{\"id\": 1, \"op\": \"subscribe\"}\n")  # ... and never reads again
    pushes_seen = 0
    with anyio.fail_after(WAIT):
        while server.dropped == 0:
            await healthy.push()  # the healthy client keeps reading all along
            pushes_seen += 1
    assert server.dropped == 1
    assert server.high_water <= server.queue_size  # never more queued than the bound
    assert len(server.clients) == 1  # only the healthy one is left
    # The healthy client is unaffected and still gets pushes.
    for _ in range(3):
        assert len((await healthy.push())["integrations"]) == 10
    # The stuck client's connection was closed: what was in flight, then EOF.
    with anyio.fail_after(WAIT):
        try:
            while await stuck.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    await stuck.aclose()
    await healthy.close()
    assert pushes_seen > 0


async def test_clients_beyond_the_limit_are_refused_when_none_is_idle(
        served: tuple[ControlServer, LmdbStore, Path]) -> None:
    server, _, path = served
    server.max_clients = 1
    server.push_interval = 0.5  # the subscriber may pause reading while the test connects
    first = await Line.connect(path)
    assert (await first.call("subscribe"))["ok"]  # subscribed: never idle, never evicted
    second = await Line.connect(path)
    refused = await second.read()
    assert refused["error"]["error_code"] == "too_many_clients"
    with anyio.fail_after(WAIT), pytest.raises((anyio.IncompleteRead, anyio.EndOfStream)):
        await second.read()
    await second.close()
    assert (await first.call("ping"))["ok"]  # the admitted client is unaffected
    await first.close()


async def closed_by_server(client: Line) -> bool:
    """Whether the server closes the connection within WAIT (reading past any pushes)."""
    with anyio.move_on_after(WAIT):
        try:
            while True:
                await client.read()
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            return True
    return False


async def test_idle_clients_make_room_for_a_new_one(
        served: tuple[ControlServer, LmdbStore, Path], caplog: pytest.LogCaptureFixture) -> None:
    server, _, path = served
    caplog.set_level(logging.INFO, "eventstreamd.control")
    assert server.max_clients == 32
    idle = [await Line.connect(path) for _ in range(server.max_clients)]
    for client in idle[1:]:
        assert (await client.call("ping"))["ok"]  # all active since the first one
    newcomer = await Line.connect(path)  # not locked out: the longest-idle one makes room
    assert (await newcomer.call("ping"))["ok"]
    assert await closed_by_server(idle[0])
    assert server.evicted == 1 and len(server.clients) == server.max_clients
    assert (await idle[1].call("ping"))["ok"]  # the others are untouched
    for client in [newcomer, *idle]:
        await client.close()
    gone = [r for r in caplog.records if r.getMessage() == "control client gone"]
    assert any("evicted" in fields(r)["reason"] for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_idle_clients_are_closed_after_the_idle_timeout(
        served: tuple[ControlServer, LmdbStore, Path], caplog: pytest.LogCaptureFixture) -> None:
    server, _, path = served
    caplog.set_level(logging.INFO, "eventstreamd.control")
    server.idle_timeout = 0.5
    server.push_interval = 0.05
    silent = await Line.connect(path)  # never sends a thing
    asked = await Line.connect(path)  # one request, then nothing
    assert (await asked.call("ping"))["ok"]
    partial = await Line.connect(path)  # a request it never finishes
    await partial.send_raw(b'{"op": "pi')
    subscriber = await Line.connect(path)  # subscribed and reading: never idle
    assert (await subscriber.call("subscribe"))["ok"]
    for client in (silent, asked, partial):
        assert await closed_by_server(client)
    for _ in range(5):  # pushes keep coming well past the idle timeout
        await subscriber.push()
    assert (await subscriber.call("ping"))["ok"]
    for client in (silent, asked, partial, subscriber):
        await client.close()
    reasons = [fields(r)["reason"] for r in caplog.records
               if r.getMessage() == "control client gone" and r.levelno == logging.INFO]
    assert sum("idle" in reason for reason in reasons) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_accept_survives_running_out_of_descriptors(
        served: tuple[ControlServer, LmdbStore, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Real EMFILE: this process's descriptors are used up while a client waits in the
    backlog; the server keeps going and accepts it once they are back."""
    server, _, path = served
    caplog.set_level(logging.WARNING, "eventstreamd.control")
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # made while there is room
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/dev/fd"))  # the descriptors open now (Linux and macOS)
    fillers: list[int] = []
    warned = False
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, in_use + 64), hard))
    try:
        with contextlib.suppress(OSError):  # EMFILE: every descriptor is in use
            for _ in range(in_use + 64):
                fillers.append(os.dup(waiting.fileno()))
        waiting.connect(str(path))  # needs no new descriptor here; the server's accept does
        with anyio.move_on_after(WAIT):
            while not warned:
                await anyio.sleep(0.05)
                warned = any("accept failed" in r.getMessage() for r in caplog.records)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert warned and server.accept_failures >= 1
    waiting.setblocking(False)
    client = Line(await UNIXSocketStream.from_socket(waiting))
    assert (await client.call("ping"))["ok"]  # accepted once descriptors were back
    fresh = await Line.connect(path)
    assert (await fresh.call("status"))["ok"]
    await client.close()
    await fresh.close()


async def test_stop_closes_clients_and_removes_the_socket(
        served: tuple[ControlServer, LmdbStore, Path]) -> None:
    server, _, path = served
    client = await Line.connect(path)
    assert (await client.call("subscribe"))["ok"]
    await server.stop()
    assert not path.exists()
    with anyio.fail_after(WAIT), pytest.raises((anyio.IncompleteRead, anyio.EndOfStream)):
        while True:
            await client.read()
    await client.close()
    await server.stop()  # twice is fine


# ------------------------------------------------------------- the snapshot


class Sinks:
    """Live sink status as `Supervisor.sink_status` reports it, set by the test."""

    def __init__(self) -> None:
        self.status: dict[str, SinkStatus] = {}

    def sink_status(self, integration_id: str) -> SinkStatus | None:
        return self.status.get(integration_id)

    def delivered_counts(self) -> dict[str, int]:
        return {i: status.stats.delivered for i, status in self.status.items()}

    def ingested_at(self, seq: int) -> int | None:
        return None  # no feed here: status reads the store


def sink(delivered: int, cursor: int, pipeline: PipelineStatus | None = None,
         failures: int = 0) -> SinkStatus:
    return SinkStatus(stats=SinkStats(delivered=delivered, failures=failures), crashes=0,
                      crashed=False, restart_in=None, cursor=cursor,
                      pipeline=pipeline or PipelineStatus())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    async with held(open_store(store_config, SINK_TYPES)) as store:
        yield store


def _integration(integration_id: str, target: TargetParams,
                 status: Status = "running") -> Integration:
    return Integration(id=integration_id, type="permanent", status=status,
                       target=target, incarnation="i-1", created_at="2024-01-01T00:00:00Z")


async def _put(store: Store, integration: Integration, cursor: int) -> None:
    if await store.get_integration(integration.id) is None:
        await store.create_integration(integration, cursor=cursor, limit=10,
                                       log=LogEntry("2024-01-01T00:00:00Z", "created", "test"))
        return
    await store.change_integration(integration.id, lambda current, view: Change(integration))


async def _publish(store: Store, n: int) -> None:
    await store.append([new_event(f"e{i}", {}, tenant="t") for i in range(n)])


async def test_snapshot_lag_rates_and_restarted_counters(store: Store) -> None:
    await _publish(store, 10)
    oldest = (await store.read_events(4, 1))[0].ingested_at / 1000
    hook = WebhookTarget("https://user:pw@hooks.example.com/x?token=1")
    await _put(store, _integration("w1", hook), cursor=4)
    await _put(store, _integration("s3", S3Target("us-east-1", "b", key_prefix="p")),
               cursor=11)
    sinks = Sinks()
    clock = Clock(oldest + 5.0)
    sampler = StatusSampler(store, sinks, Config(), clock=clock)
    sinks.status["w1"] = sink(0, 4, PipelineStatus(in_flight=2))
    sinks.status["s3"] = sink(0, 11, PipelineStatus(buffered_bytes=2048,
                                                     buffered_since=clock.now - 30))
    await sampler.tick()
    await _publish(store, 5)
    clock.now += 2.0
    sinks.status["w1"] = sink(10, 4, PipelineStatus(in_flight=2))
    await sampler.tick()
    snap = await sampler.snapshot()
    assert snap["head"] == 15 and snap["ingest_rate"] == 2.5
    w1 = integration(snap, "w1")
    assert w1 is not None
    # The target shows host and path, never userinfo or the query.
    assert (w1["kind"], w1["target"], w1["cursor"]) == ("webhook", "hooks.example.com/x", 4)
    assert w1["lag_events"] == 12  # 15 - 4 + 1
    assert w1["lag_seconds"] == pytest.approx(7.0, abs=0.1)
    assert w1["delivered_rate"] == 5.0 and w1["delivered_history"] == [5.0]
    assert w1["health"] == "ok" and w1["in_flight"] == 2
    assert w1["buffered_bytes"] is None and w1["buffered_age"] is None
    s3 = integration(snap, "s3")
    assert s3 is not None
    assert (s3["kind"], s3["target"], s3["lag_events"]) == ("s3", "s3://b/p", 5)
    assert (s3["buffered_bytes"], s3["buffered_age"]) == (2048, 32.0)
    assert (s3["s3_open_file_bytes"], s3["s3_open_file_age"]) == (2048, 32.0)  # protocol 1
    # A sink restart resets its counter: the new value is the whole delta, never negative.
    clock.now += 1.0
    sinks.status["w1"] = sink(3, 4)
    await sampler.tick()
    w1 = integration(await sampler.snapshot(), "w1")
    assert w1 is not None and w1["delivered_rate"] == 3.0
    # A stopped integration has no live counters, but its stored lag stays.
    del sinks.status["w1"]
    await _put(store, _integration("w1", hook, status="stopped"), cursor=4)
    w1 = integration(await sampler.snapshot(), "w1")
    assert w1 is not None
    assert (w1["health"], w1["delivered"], w1["failures"], w1["lag_events"]) == \
        ("stopped", None, None, 12)
    assert orjson.loads(orjson.dumps(await sampler.snapshot()))  # plain JSON all the way


def test_health_rules() -> None:
    base: dict[str, Any] = {"status": "running", "done": False, "lag_events": 5,
                            "lag_seconds": 1.0, "last_error_at": None, "now": 1000.0}
    assert health(**base) == "ok"
    assert health(**{**base, "last_error_at": 990.0}) == "failing"
    assert health(**{**base, "last_error_at": 990.0, "lag_events": 0}) == "ok"  # caught up
    assert health(**{**base, "last_error_at": 900.0}) == "ok"  # an old failure
    assert health(**{**base, "lag_seconds": 31.0}) == "lagging"
    assert health(**{**base, "lag_seconds": 31.0, "lag_allowance": 300.0}) == "ok"  # S3 file
    assert health(**{**base, "status": "stopped", "last_error_at": 990.0}) == "stopped"
    assert health(**{**base, "done": True, "status": "stopped"}) == "completed"
    assert WebhookTarget("http://[::1]:8080/x").describe() == "[::1]:8080/x"
    assert S3Target("us-east-1", "b").describe() == "s3://b"
