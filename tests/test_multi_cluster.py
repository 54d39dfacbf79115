"""Several daemons on a three-node JetStream cluster (R3 streams): a node dies under load.

The short form runs in `make test`; it kills one node (whichever it is: the streams'
leader or a follower) while daemons publish and deliver, and checks that every
publish answered 200 was delivered to every integration, and that publishing and
delivery went on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.helpers.api import ApiClient
from tests.helpers.backends import new_prefix
from tests.helpers.cluster import Cluster, batch, sigkill_failover
from tests.helpers.daemon import DaemonProcess
from tests.helpers.nats_server import NatsCluster
from tests.helpers.receiver import Receiver
from tests.helpers.s3 import MotoServer
from tests.helpers.wait import eventually, eventually_sync


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats")
    try:  # a node that fails to start must not leave the others running
        cluster.start()
        cluster.wait_jetstream()
        yield cluster
    finally:
        cluster.stop()


def daemons(tmp_path: Path, cluster: NatsCluster, count: int) -> list[DaemonProcess]:
    prefix = new_prefix()
    made = []
    for number in range(count):
        workdir = tmp_path / f"d{number}"
        workdir.mkdir()
        made.append(DaemonProcess(workdir, {
            "storage": {"backend": "jetstream"},
            "jetstream": {"servers": cluster.urls, "prefix": prefix, "replicas": 3,
                          "instance": f"d{number}", "lease_ttl": "2s",
                          "connect_timeout": "20s"},
            "log": {"level": "info", "format": "json"},
            "webhook": {"retry_initial": "100ms", "retry_max": "1s"},
        }))
    return made


async def publish(session: aiohttp.ClientSession, daemon: DaemonProcess,
                  events: list[dict[str, Any]]) -> int:
    try:
        async with session.post(f"{daemon.url}/events", json=events,
                                headers=daemon.headers,
                                timeout=aiohttp.ClientTimeout(total=15)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def test_a_nats_node_dies_under_load(tmp_path: Path, nats_cluster: NatsCluster) -> None:
    ds = daemons(tmp_path, nats_cluster, 2)
    try:
        for daemon in ds:
            daemon.start()
        names = [f"n{i}" for i in range(4)]
        async with Receiver() as hooks, ApiClient(ds[0]) as api, aiohttp.ClientSession() as s:
            for name in names:
                await api.webhook(name, hooks.hook_url(name))
            acked: set[str] = set()
            refused = 0
            killed_at = None
            after_kill = 0
            start = time.monotonic()
            round_number = 0
            # Publish in rounds of 10 until 40 rounds went through after the kill
            # (bounded: 90 s in all).
            while after_kill < 40 and time.monotonic() - start < 90:
                events = batch(round_number * 10, 10)
                status = await publish(s, ds[round_number % 2], events)
                if status == 200:
                    acked.update(e["id"] for e in events)
                    if killed_at is not None:
                        after_kill += 1
                else:
                    assert status in (0, 503), status
                    refused += 1
                round_number += 1
                if round_number == 20:
                    nats_cluster.nodes[0].kill()
                    killed_at = time.monotonic()
                await anyio.sleep(0.05)
            assert after_kill >= 40, (after_kill, refused)
            await eventually(lambda: all(set(hooks.keys(n)) >= acked for n in names), within=90,
                             every=0.25)
    finally:
        for daemon in ds:
            daemon.kill()


def test_a_daemon_waits_for_a_cluster_still_forming(tmp_path: Path) -> None:
    """Two of three nodes up: JetStream answers, but "temporarily unavailable" (10008)
    or, once a meta leader is elected, "no suitable peers for placement, peer
    offline" (10005) for an R3 stream, until the third node reports in. A daemon
    started then waits (within connect_timeout) and comes up once the node does,
    instead of exiting: the README's scaling-out recipe starts the daemons right
    after the servers, and CI once caught it exiting on 10005."""
    cluster = NatsCluster(tmp_path / "nats")
    late = cluster.nodes[2]
    daemon = daemons(tmp_path, cluster, 1)[0]
    try:
        for node in cluster.nodes[:2]:
            node.start()
        daemon.start(wait=False)
        eventually_sync(lambda: any(f"JetStream error {code}" in daemon.log()
                                    for code in (10005, 10008)),
                        within=20, every=0.1, what="the daemon told the cluster is forming")
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        late.start()
        daemon.wait_ready()
        assert daemon.proc.poll() is None
    finally:
        daemon.kill()
        cluster.stop()


@pytest.mark.soak
async def test_sigkill_of_a_daemon_on_the_r3_cluster(tmp_path: Path,
                                                     nats_cluster: NatsCluster) -> None:
    """The three-daemon failover of `test_multi.py`, on the three-node cluster (R3)."""
    made: list[Cluster] = []

    def factory(count: int, extra: dict[str, Any] | None = None) -> Cluster:
        cluster = Cluster(tmp_path, nats_cluster.urls, count, extra, replicas=3)
        made.append(cluster)
        return cluster.start()

    moto = MotoServer().start()
    try:
        await sigkill_failover(factory, moto)
    finally:
        moto.stop()
        for cluster in made:
            cluster.close()
