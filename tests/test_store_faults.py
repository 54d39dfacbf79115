"""Faults underneath a running daemon: NATS connections cut again and again, an event log
replaced (JetStream stream recreated, an LMDB data dir older than its cursors), a wiped
nats-server. Real daemons, a real nats-server, real receivers."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import aiohttp
import anyio
import anyio.to_thread

from tests.conftest import new_prefix
from tests.helpers.api import ApiClient
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.nats_server import NatsServer
from tests.helpers.receiver import Receiver
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
            async with api._session.post(f"{api.daemon.url}/events",
                                         json=batch) as response:
                if response.status == 200:
                    acknowledged.extend(range(number, number + 20))
                else:
                    assert response.status == 503, await response.text()
        except aiohttp.ClientError:
            pass
        number += 20
        await anyio.sleep(0.01)


# ------------------------------------------------------------ disconnect storm


async def test_disconnect_storm_pauses_delivery_without_crashing_a_sink(
        daemon_factory: Factory, nats_server: NatsServer) -> None:
    proxy = await TcpProxy(nats_server.port).start()
    receiver = await Receiver().start()
    try:
        # Started from a thread: the proxy runs in this event loop.
        d = await anyio.to_thread.run_sync(daemon_factory, {**jetstream([proxy.url]), **FAST})
        async with ApiClient(d) as api:
            for name in NAMES:
                await api.webhook(name, receiver.url, api_key=f"key-{name}")
            done, acknowledged = anyio.Event(), []
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_while, api, done, acknowledged)
                for _ in range(CUTS):  # cut every connection to NATS, again and again
                    await eventually(proxy.connections, within=10, what="reconnected")
                    await anyio.sleep(0.2)
                    proxy.cut()
                await anyio.sleep(1.0)
                done.set()
            assert len(acknowledged) > 100

            def delivered(name: str) -> Counter[int]:
                return Counter(r.body["payload"]["n"] for r in receiver.delivered
                               if r.headers.get("Authorization") == f"Bearer key-{name}")

            await receiver.wait_for(lambda: all(set(acknowledged) <= set(delivered(name))
                                                for name in NAMES), 60)
            metrics = await scrape(d)
        log = d.log()
        assert "sink crashed" not in log, log[-3000:]
        assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line]
        assert log.count("disconnected from NATS") == CUTS  # the storm did reach the daemon
        for name in NAMES:
            assert metric(metrics, "eventstreamd_sink_restarts_total", name) == 0
            # No sink restarted, so nothing was sent twice (the bound after a crash is
            # delivery.cursor_every + webhook.max_in_flight).
            assert max(delivered(name).values()) == 1
    finally:
        await receiver.close()
        await proxy.close()
