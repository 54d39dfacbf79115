"""Faults underneath a running daemon: NATS connections cut again and again, an event log
replaced (JetStream stream recreated, an LMDB data dir older than its cursors), a wiped
nats-server. Real daemons, a real nats-server, real receivers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import nats
import orjson
from aiohttp import web

from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.backends import new_prefix
from tests.helpers.control import status as control_status
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.fill import publish_until_full
from tests.helpers.nats_server import NatsServer
from tests.helpers.receiver import Received, Receiver
from tests.helpers.store import opened
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.wait import eventually

NAMES = tuple(f"w{i}" for i in range(1, 9))
CUTS = 30
FAST = {"webhook": {"timeout": "2s", "retry_initial": "50ms", "retry_max": "300ms"}}


def jetstream(servers: list[str], prefix: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"storage": {"backend": "jetstream"},
            "jetstream": {"servers": servers, "prefix": prefix or new_prefix(), **extra}}


def metric(text: str, name: str, integration: str) -> float | None:
    match = re.search(rf'^{name}\{{[^}}]*integration="{integration}"[^}}]*\}} (\S+)$', text,
                      flags=re.M)
    return float(match.group(1)) if match else None


async def scrape(d: DaemonProcess) -> str:
    async with aiohttp.ClientSession(headers=d.headers) as session, \
            session.get(f"{d.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def publish_while(api: ApiClient, running: anyio.Event, acknowledged: list[int]) -> None:
    """Publish numbered events until `running` is set; keep the numbers the daemon
    acknowledged (a 503 while NATS is away is expected, and such a batch is not counted)."""
    number = 0
    while not running.is_set():
        batch = [{"name": "order.created", "payload": {"n": number + i}} for i in range(20)]
        try:
            status, answer = await api.answer("POST", "/events", batch)
            if status == 200:
                acknowledged.extend(range(number, number + 20))
            else:
                assert status == 503, answer
        except aiohttp.ClientError:
            pass
        number += 20
        await anyio.sleep(0.01)


# ------------------------------------------------------------ disconnect storm


async def storm(daemon_factory: Factory, nats_server: NatsServer, cuts: int,
                **jetstream_settings: Any) -> tuple[DaemonProcess, Receiver, list[int], str]:
    """Integrations NAMES delivering to one receiver while every NATS connection of the
    daemon is cut `cuts` times (each once it was made again) and events are published;
    once every acknowledged event reached every integration: the daemon, the receiver
    (closed by the caller), the acknowledged numbers and /metrics."""
    proxy = await TcpProxy(nats_server.port).start()
    receiver = await Receiver().start()
    try:
        # Started from a thread: the proxy runs in this event loop.
        settings = {**jetstream([proxy.url], **jetstream_settings), **FAST}
        d = await anyio.to_thread.run_sync(daemon_factory, settings)
        async with ApiClient(d) as api:
            for name in NAMES:
                await api.webhook(name, receiver.url, api_key=f"key-{name}")
            done, acknowledged = anyio.Event(), list[int]()
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_while, api, done, acknowledged)
                for _ in range(cuts):  # cut every connection to NATS, again and again
                    await eventually(proxy.connections, within=10, what="reconnected")
                    await anyio.sleep(0.2)
                    proxy.cut()
                await anyio.sleep(1.0)
                done.set()
            assert len(acknowledged) > 100
            try:
                await eventually(lambda: all(set(acknowledged) <= set(delivered(
                    receiver, name)) for name in NAMES), within=60)
            except AssertionError:
                missing = {name: len(set(acknowledged) - set(delivered(receiver, name)))
                           for name in NAMES}
                notes = [line for line in d.log().splitlines()
                         if " WARNING " in line or " ERROR " in line][-40:]
                raise AssertionError(f"not delivered: {missing}\n" + "\n".join(notes)) \
                    from None
            return d, receiver, acknowledged, await scrape(d)
    except BaseException:
        await receiver.close()
        raise
    finally:
        await proxy.close()


def delivered(receiver: Receiver, name: str) -> Counter[int]:
    """How often each event number reached integration `name`."""
    return Counter(r.body["payload"]["n"] for r in receiver.delivered
                   if r.headers.get("Authorization") == f"Bearer key-{name}")


async def test_disconnect_storm_pauses_delivery_without_crashing_a_sink(
        daemon_factory: Factory, nats_server: NatsServer) -> None:
    d, receiver, _, metrics = await storm(daemon_factory, nats_server, CUTS)
    await receiver.close()
    log = d.log()
    assert "sink crashed" not in log, log[-3000:]
    assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line]
    assert log.count("disconnected from NATS") >= CUTS  # the storm did reach the daemon
    for name in NAMES:
        assert metric(metrics, "eventstreamd_sink_restarts_total", name) == 0
        # No sink crashed, so nothing was sent again beyond the bound a restart allows
        # (delivery.cursor_every + webhook.max_in_flight; with these leases, none at all
        # unless one lapsed under load, see the next test).
        assert sum(n - 1 for n in delivered(receiver, name).values()) <= 1000 + 8


async def test_leases_lapsing_while_nats_is_frozen_resume_by_themselves(
        daemon_factory: Factory, tmp_path: Path) -> None:
    """NATS frozen (SIGSTOP) longer than a 2 s lease while sinks deliver a backlog: they
    stop by their own clock; the renewal sent before the freeze is answered after it,
    the lease is still theirs, and delivery must resume by itself, not wait for ever."""
    server = NatsServer(tmp_path / "nats").start()

    async def slow(received: Received, attempt: int) -> web.Response:
        await anyio.sleep(0.02)
        return web.Response(status=200)

    receiver = await Receiver(slow).start()
    try:
        d = daemon_factory({**jetstream([server.url], lease_ttl="2s"), **FAST})
        async with ApiClient(d) as api:
            for name in ("w1", "w2"):
                await api.webhook(name, receiver.url, api_key=f"key-{name}")
            await api.publish([{"name": "order.created", "payload": {"n": n}}
                               for n in range(3000)])
            await eventually(lambda: len(receiver.delivered) > 200)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                await anyio.sleep(3.0)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            await eventually(lambda: all(
                set(range(3000)) <= set(delivered(receiver, name)) for name in ("w1", "w2")),
                within=60)
        log = d.log()
        assert "lease expired before it was renewed" in log  # the case this test is about
        assert "sink crashed" not in log
    finally:
        await receiver.close()
        server.stop()


# --------------------------------------------------- a log that went back


class JetStreamAdmin:
    """The JetStream API as an operator (or an accident) uses it: stream info, delete and
    create, over a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Any = None

    async def __aenter__(self) -> JetStreamAdmin:
        self.nc = await nats.connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def api(self, endpoint: str, body: Any = None) -> dict[str, Any]:
        msg = await self.nc.request(f"$JS.API.{endpoint}",
                                    orjson.dumps(body) if body is not None else b"", timeout=5)
        answer: dict[str, Any] = orjson.loads(msg.data)
        assert "error" not in answer, answer
        return answer

    async def recreate(self, stream: str) -> None:
        """Delete the stream and create an empty one with the same settings."""
        config = (await self.api(f"STREAM.INFO.{stream}"))["config"]
        await self.api(f"STREAM.DELETE.{stream}")
        await self.api(f"STREAM.CREATE.{stream}", config)

    async def delete(self, stream: str) -> None:
        await self.api(f"STREAM.DELETE.{stream}")


def prefix_of(d: DaemonProcess) -> str:
    return str(d.settings["jetstream"]["prefix"])


async def publish_retrying(api: ApiClient, batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Publish, retrying 503s (the daemon may be between a stream's loss and its return)."""
    async def attempt() -> dict[str, Any] | None:
        status, answer = await api.answer("POST", "/events", batch)
        return answer if status == 200 else None
    result = await eventually(attempt, lambda r: r is not None, within=20, every=0.2,
                              what="publish accepted")
    assert result is not None
    return result


async def assert_reset_reported(api: ApiClient, d: DaemonProcess, name: str,
                                resets: int = 1) -> str:
    entries = await api.wait_logs(name, "cursor_reset")
    reason = entries[0]["reason"]
    assert "past the newest event in the log" in reason, reason
    assert "cursor past the newest event in the log" in d.log()
    assert any(" WARNING " in line for line in d.log().splitlines()
               if "cursor past the newest event" in line)
    assert metric(await scrape(d), "eventstreamd_cursor_resets_total", name) == resets
    return str(reason)


async def test_lmdb_cursor_past_a_restored_log_is_reset_and_reported(
        daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    try:
        d = daemon_factory(FAST)
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(10))
            await eventually(lambda: len(receiver.delivered) == 10)
        d.stop()
        # A data dir restored from an older copy: its cursors are past its log's head.
        async with opened(d.data_dir) as store:
            integration = await store.get_integration("w1")
            assert await store.set_cursor(integration.fence(), 501)
            assert store.head == 10
        d.start()
        async with ApiClient(d) as api:
            result = await api.publish(events(3, start=100))
            assert (result["first_seq"], result["last_seq"]) == (11, 13)
            await eventually(lambda: len(receiver.delivered) == 13)
            assert sorted(r.body["payload"]["i"] for r in receiver.delivered[10:]) == \
                [100, 101, 102]
            reason = await assert_reset_reported(api, d, "w1")
            assert "seq 501" in reason and "seq 10)" in reason and "from seq 11" in reason
            status = await eventually(lambda: api.get("w1"), lambda i: i is not None)
            assert status["status"] == "running"
    finally:
        await receiver.close()


async def test_jetstream_stream_replaced_under_a_running_daemon(
        daemon_factory: Factory, nats_server: NatsServer) -> None:
    receiver = await Receiver().start()
    try:
        d = daemon_factory({**jetstream([nats_server.url]), **FAST})
        async with ApiClient(d) as api, JetStreamAdmin(nats_server.url) as admin:
            await api.webhook("w1", receiver.url)
            await api.publish(events(30))
            await eventually(lambda: len(receiver.delivered) == 30)
            await admin.recreate(f"{prefix_of(d)}_events")
            result = await publish_retrying(api, events(5, start=100))
            assert result["first_seq"] == 1  # the new stream counts from 1 again
            # Every event of the new stream reaches the receiver, the first ones too.
            await eventually(lambda: len(receiver.delivered) == 35)
            assert sorted(r.body["payload"]["i"] for r in receiver.delivered[30:]) == \
                [100, 101, 102, 103, 104]
            reason = await assert_reset_reported(api, d, "w1")
            assert "from seq 1;" in reason
            assert "the event stream was replaced" in d.log()
            health = await api.request("GET", "/healthz")
            assert health["status"] == "ok"
    finally:
        await receiver.close()


async def test_jetstream_event_stream_deleted_while_down(
        daemon_factory: Factory, nats_server: NatsServer) -> None:
    receiver = await Receiver().start()
    try:
        d = daemon_factory({**jetstream([nats_server.url]), **FAST})
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(40))
            await eventually(lambda: len(receiver.delivered) == 40)
        d.stop()
        async with JetStreamAdmin(nats_server.url) as admin:
            await admin.delete(f"{prefix_of(d)}_events")
        # The daemon used that stream: it does not silently make an empty one.
        refused = run_daemon_once(d)
        assert refused.returncode == 1
        line = refused.stderr.strip().splitlines()[-1]  # after the log lines, one line
        assert line.startswith("eventstreamd: the JetStream streams"), line
        assert f"{prefix_of(d)}_events is gone" in line and "--accept-new-streams" in line
        d.run_args = ["--accept-new-streams"]
        d.start()
        async with ApiClient(d) as api:
            result = await api.publish(events(5, start=100))
            assert (result["first_seq"], result["last_seq"]) == (1, 5)
            await eventually(lambda: len(receiver.delivered) == 45)
            assert sorted(r.body["payload"]["i"] for r in receiver.delivered[40:]) == \
                [100, 101, 102, 103, 104]
            await assert_reset_reported(api, d, "w1")
        # Accepted once: the next start knows the new stream.
        d.run_args = []
        d.restart()
        async with ApiClient(d) as api:
            assert (await api.get("w1"))["status"] == "running"
    finally:
        await receiver.close()


def run_daemon_once(d: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """`eventstreamd run` on the daemon's config, expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "eventstreamd", "run", "--config",
                           str(d.config_path), *d.run_args], capture_output=True, text=True,
                          timeout=60, cwd=d.workdir)


# ------------------------------------------------------------- a wiped server


async def test_wiped_nats_server_is_reported_and_not_silently_started_over(
        daemon_factory: Factory, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    receiver = await Receiver().start()
    try:
        d = daemon_factory({**jetstream([server.url]), **FAST})
        async with ApiClient(d) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(5))
            await eventually(lambda: len(receiver.delivered) == 5)
            # The server comes back with an empty store under the running daemon.
            server.stop()
            shutil.rmtree(server.store_dir)
            server.start()
            health = await eventually(lambda: api.request("GET", "/healthz"),
                                      lambda h: h["store"]["connected"]
                                      and h["status"] == "degraded", within=20,
                                      what="/healthz degraded, NATS reachable")
            assert "gone" in health["store"]["error"], health
            status, body = await api.answer("POST", "/events", events(1))
            assert status == 503
            assert "gone" in body["message"] and "election" not in body["message"], body
            status, body = await api.answer("POST", BASE, {
                "id": "w2", "integration_type": "permanent",
                "callback_parameters": {"callback_url": receiver.url}})
            assert status == 503 and "gone" in body["message"], body
            control = await control_status(d)
            assert "gone" in control["store"]["error"]
        d.stop()
        refused = run_daemon_once(d)
        assert refused.returncode == 1, refused
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith("eventstreamd: the JetStream streams"), line
        assert "is gone" in line and "--accept-new-streams" in line
        d.run_args = ["--accept-new-streams"]
        d.start()
        async with ApiClient(d) as api:
            assert (await api.request("GET", "/healthz"))["status"] == "ok"
            assert (await api.request("GET", BASE))["integrations"] == []
    finally:
        await receiver.close()
        server.stop()


# ------------------------------------------------------------ a full LMDB map


async def test_integrations_can_be_stopped_started_and_deleted_while_the_map_is_full(
        daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    try:
        d = daemon_factory({"storage": {"map_size": "2MiB"}, **FAST})
        async with ApiClient(d) as api:
            for name in ("w1", "w2"):
                await api.webhook(name, receiver.url)
            acknowledged, error = await publish_until_full(api, 2000)
            assert error["status"] == 507 and acknowledged > 0
            # Then to the last page: small events until not even one fits.
            for n in range(acknowledged, acknowledged + 5000):
                status, answer = await api.answer(
                    "POST", "/events", [{"name": "order.created", "payload": {"i": n}}])
                if status == 507:
                    break
                assert status == 200, answer
                acknowledged += 1
            else:
                raise AssertionError("the map never filled up")
            # Publishing is refused, but what operators do with integrations is not.
            for _ in range(3):
                assert (await api.stop("w1"))["status"] == "stopped"
                assert (await api.start("w1"))["status"] == "running"
            await api.request("DELETE", f"{BASE}/w2")
            await api.webhook("w3", receiver.url)
            assert (await api.stop("w3"))["status"] == "stopped"
            # Delivery went on meanwhile: every acknowledged event reached w1.
            await eventually(lambda: {r.body["payload"]["i"] for r in receiver.delivered}
                                    >= set(range(acknowledged)), within=60)
            status, _ = await api.answer("POST", "/events", events(1))
            assert status == 507  # still full: the room kept is not for events
        assert "integration log entry dropped" not in d.log()
    finally:
        await receiver.close()
