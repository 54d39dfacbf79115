"""What only the JetStream backend has: a server that can go away and come back, start-up
against a server that is not there, NATS's message size limit, batches larger than one
atomic batch, and how the daemon reports the store's reachability."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from textual.widgets import DataTable

from eventstreamd.config import Config, JetStreamConfig, StorageConfig
from eventstreamd.storage.jetstream import JetStreamStore
from eventstreamd.tui.app import DashboardApp
from eventstreamd.tui.sample import SIZE, SNAPSHOT, SOCKET_LABEL
from tests.helpers.api import ApiClient
from tests.helpers.backends import JETSTREAM_ONLY, jetstream_settings
from tests.helpers.control import Line, control_path
from tests.helpers.daemon import FAST, DaemonProcess, Factory, write_config
from tests.helpers.nats_server import NatsServer
from tests.helpers.processes import free_port
from tests.helpers.receiver import Receiver
from tests.helpers.store import new_event, read_all
from tests.helpers.wait import eventually

BACKENDS = JETSTREAM_ONLY



def delivered_uids(receiver: Receiver) -> set[str]:
    return {r.body["payload"]["uid"] for r in receiver.delivered}


async def healthz(d: DaemonProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{d.url}/healthz") as r:
        assert r.status == 200
        return dict(await r.json())


async def post(d: DaemonProcess, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers=d.headers) as s, \
            s.post(f"{d.url}/events", data=orjson.dumps(body)) as r:
        return r.status, await r.json(content_type=None)


def test_startup_without_a_server_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "c.toml", {
        "storage": {"backend": "jetstream", "data_dir": str(tmp_path / "data")},
        "jetstream": {"servers": [url], "connect_timeout": "1s"},
        "server": {"port": 0}})
    result = subprocess.run([sys.executable, "-m", "eventstreamd", "run", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    # One line for the user (the rest of stderr is the log).
    lines = [line for line in result.stderr.splitlines() if line.startswith("eventstreamd:")]
    assert len(lines) == 1 and url in lines[0], result.stderr
    assert lines[0].startswith("eventstreamd: cannot connect to NATS JetStream")
    assert "Traceback" not in result.stderr


async def test_an_event_over_the_servers_max_payload_is_413(daemon: DaemonProcess) -> None:
    status, body = await post(daemon, [{"name": "a.b", "payload": {}},
                                       {"name": "a.b", "payload": {"x": "y" * 1_100_000}}])
    assert status == 413 and body["error_code"] == "payload_too_large"
    assert "event 1" in body["message"] and "max_payload" in body["message"]
    assert (await healthz(daemon))["head"] == 0  # nothing of the request
    status, body = await post(daemon, {"name": "a.b", "payload": {"x": "y" * 900_000}})
    assert status == 200 and body["last_seq"] == 1


async def test_requests_larger_than_one_atomic_batch_are_stored_in_order(
        daemon_factory: Factory) -> None:
    d = daemon_factory({"jetstream": {"max_batch": 10}})
    status, body = await post(d, [{"name": "a.b", "payload": {"i": i}} for i in range(35)])
    assert status == 200 and body == {"accepted": 35, "first_seq": 1, "last_seq": 35}
    d.stop()
    stored = await read_all(d)
    assert [orjson.loads(e.body)["payload"]["i"] for e in stored] == list(range(35))


async def test_healthz_and_status_name_the_store(daemon: DaemonProcess) -> None:
    health = await healthz(daemon)
    assert health["status"] == "ok" and health["store"]["backend"] == "jetstream"
    assert health["store"]["connected"] is True and health["store"]["error"] is None
    client = await Line.connect(control_path(daemon))
    try:
        status = (await client.call("status"))["result"]
    finally:
        await client.close()
    assert status["store"] == {**health["store"], "server": status["store"]["server"]}
    assert status["store"]["server"].startswith("nats://127.0.0.1:")
    assert "server" not in health["store"]  # /healthz is public: it names no server


async def publisher(d: DaemonProcess, name: str, acked: set[str], statuses: list[int],
                    stop: anyio.Event) -> None:
    """Small batches until told to stop; what was acknowledged, and every answer."""
    counter = 0
    async with aiohttp.ClientSession(headers=d.headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not stop.is_set() and counter < 50_000:
            batch: list[dict[str, Any]] = [
                {"name": "order.created", "payload": {"uid": f"{name}-{counter + i}"}}
                for i in range(5)]
            counter += 5
            async with session.post(f"{d.url}/events", data=orjson.dumps(batch)) as r:
                await r.read()
                statuses.append(r.status)
                if r.status == 200:
                    acked.update(e["payload"]["uid"] for e in batch)
            await anyio.sleep(0.02)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
async def test_nats_outage_while_publishing_and_delivering(
        daemon_factory: Factory, tmp_path: Path, how: signal.Signals) -> None:
    """nats-server goes away under load and comes back: publishes meanwhile got 503,
    /healthz and the control socket said so, nothing acknowledged is lost, delivery
    resumes by itself."""
    server = NatsServer(tmp_path / "nats").start()
    receiver = await Receiver().start()
    try:
        d = daemon_factory({**FAST, **jetstream_settings(server)})
        async with ApiClient(d) as api:
            await api.webhook("hook", receiver.url)
        acked: set[str] = set()
        statuses: list[int] = []
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for p in range(2):
                tg.start_soon(publisher, d, f"p{p}", acked, statuses, stop)
            await eventually(lambda: len(receiver.delivered),
                             lambda n: n >= 50, what="delivery under way")
            server.stop(how)
            health = await eventually(lambda: healthz(d), lambda h: h["status"] == "degraded",
                                      what="/healthz says the store is unreachable")
            assert health["store"]["connected"] is False and health["store"]["error"]
            client = await Line.connect(control_path(d))
            try:
                snapshot = (await client.call("status"))["result"]
            finally:
                await client.close()
            assert snapshot["store"]["connected"] is False
            assert [i["id"] for i in snapshot["integrations"]] == ["hook"]
            await eventually(lambda: statuses.count(503), lambda n: n >= 3,
                             what="publishes during the outage answered 503")
            server.start()
            await eventually(lambda: healthz(d), lambda h: h["status"] == "ok", within=30,
                             what="/healthz ok again")
            ok_before = statuses.count(200)
            await eventually(lambda: statuses.count(200),
                             lambda n: n >= ok_before + 5, what="publishing works again")
            stop.set()
        assert set(statuses) <= {200, 503}, collections.Counter(statuses)
        await eventually(lambda: acked <= delivered_uids(receiver), within=60)
        d.stop()
        stored = {orjson.loads(e.body)["payload"]["uid"] for e in await read_all(d)}
        assert acked <= stored
    finally:
        await receiver.close()
        server.stop()


async def test_the_dashboard_says_when_the_store_is_unreachable() -> None:
    """The connection bar turns "degraded" with the reason while a snapshot says the store
    cannot be reached, and back when it can."""
    down = {**SNAPSHOT, "store": {"backend": "jetstream", "connected": False,
                                  "server": "nats://127.0.0.1:4222",
                                  "error": "[Errno 111] Connection refused"}}
    app = DashboardApp(SOCKET_LABEL, snapshot=down)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        state, text = app.link
        assert state == "degraded"
        assert "jetstream at nats://127.0.0.1:4222 unreachable" in text
        assert "Connection refused" in text and "delivery paused" in text
        # The daemon still answers: its verdicts are shown, not "no data".
        health = app.query_one("#integrations", DataTable).get_cell("returns-erp", "health")
        assert str(health) == "✖ failing"
        app.apply_snapshot({**down, "store": {**down["store"], "connected": True,
                                              "error": None}})
        await pilot.pause()
        assert app.link[0] == "connected" and "unreachable" not in app.link[1]


@pytest.mark.parametrize("size", [1, 5], ids=["publish", "batch"])
async def test_an_unanswered_commit_is_resent_and_stored_once(
        tmp_path: Path, size: int, caplog: pytest.LogCaptureFixture) -> None:
    """The server freezes right after the commit left (SIGSTOP): no answer within
    `request_timeout`, so the outcome is unknown. The same commit is sent again; when the
    server wakes it stores the first and recognises the second as a duplicate (its
    `Nats-Msg-Id`): the publisher gets the right range, the stream holds it once."""
    caplog.set_level(logging.INFO, logger="eventstreamd.jetstream")
    server = NatsServer(tmp_path / "nats").start()
    config = Config(storage=StorageConfig(backend="jetstream", data_dir=str(tmp_path / "data")),
                    jetstream=JetStreamConfig(servers=(server.url,), prefix="resend",
                                              request_timeout=0.5))
    try:
        async with JetStreamStore(config) as store:
            assert await store.append([new_event("before", {})]) == (1, 1)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                async with anyio.create_task_group() as tg:
                    spans: list[tuple[int, int]] = []

                    async def publish() -> None:
                        spans.append(await store.append(
                            [new_event(f"e{i}", {"i": i}) for i in range(size)]))

                    tg.start_soon(publish)
                    await anyio.sleep(0.7)  # the first send timed out; a re-send is out
                    os.kill(server.proc.pid, signal.SIGCONT)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert "re-sending an unacknowledged commit" in caplog.text
            assert spans == [(2, 1 + size)]
            stored = await store.read_events(1, 100)
            assert [e.id for e in stored] == ["before"] + [f"e{i}" for i in range(size)]
            assert store.head == 1 + size
    finally:
        server.stop()
