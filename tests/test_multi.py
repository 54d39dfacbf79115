"""Several daemons on one JetStream: leases, failover, fencing, shared API.

Real processes on loopback: the session's nats-server (one node; see
`test_multi_cluster.py` for the three-node cluster), daemons that share one stream
prefix with a short `lease_ttl`, a webhook receiver that records which daemon sent each
request (the User-Agent names the instance), and moto for S3.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers.api import BASE, ApiClient
from tests.helpers.backends import jetstream_settings, new_prefix
from tests.helpers.cluster import (
    TTL,
    Cluster,
    ClusterFactory,
    batch,
    sigkill_failover,
    sink_stops,
)
from tests.helpers.control import Line, control_path, status
from tests.helpers.daemon import DaemonProcess
from tests.helpers.nats_server import NatsServer
from tests.helpers.receiver import Receiver, delayed
from tests.helpers.s3 import MotoServer
from tests.helpers.wait import eventually

HANDOVER_TTL = 10.0


@pytest.fixture
def cluster_factory(tmp_path: Path, nats_server: NatsServer) -> Iterator[ClusterFactory]:
    made: list[Cluster] = []

    def factory(count: int, extra: dict[str, Any] | None = None) -> Cluster:
        cluster = Cluster(tmp_path, [nats_server.url], count, extra)
        made.append(cluster)
        return cluster.start()

    yield factory
    for cluster in made:
        cluster.close()


# --------------------------------------------------------------------- failover


async def test_sigkill_moves_integrations_to_survivors_nothing_lost(
        cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    moto = MotoServer().start()
    try:
        await sigkill_failover(cluster_factory, moto)
    finally:
        moto.stop()


# -------------------------------------------------------------------- partition


async def test_frozen_daemon_sends_nothing_for_leases_it_lost(
        cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(2)
    names = [f"p{i}" for i in range(4)]
    async with Receiver(delayed(0.02)) as hooks, ApiClient(cluster.daemons[0]) as api0, \
            ApiClient(cluster.daemons[1]) as api1:
        for name in names:
            await api0.webhook(name, hooks.hook_url(name))
        await api1.publish(batch(0, 40))
        await eventually(lambda: set(hooks.owners().values()) == {"d0", "d1"}, within=30)
        # Who holds what now, by d0's own account (who delivered last can be stale: a
        # daemon that started alone claims everything and hands the extras over).
        held: dict[str, set[str]] = {}

        async def balanced() -> bool:
            nonlocal held
            held = {e["instance"]: set(e["owns"])
                    for e in (await status(cluster.daemons[0]))["cluster"]["instances"]}
            return ([len(held.get(d, ())) for d in ("d0", "d1")] == [2, 2]
                    and held["d0"] | held["d1"] == set(names))
        await eventually(balanced, within=30, every=0.25)
        frozen = held["d0"]
        # Hold d0's requests until each of its sinks has its whole window (8) waiting on
        # an answer: every worker has sent and none is between its lease check and its
        # request, so whatever d0 sends after the thaw it decided to send after it.
        hooks.hold(lambda r: r.instance == "d0")
        await api1.publish(batch(40, 400))
        await eventually(lambda: all(hooks.held(n) == 8 for n in frozen), within=20)
        d0 = cluster.daemons[0]
        assert d0.proc is not None
        d0.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        hooks.release()  # the answers wait in d0's sockets; its window frees on the thaw
        await api1.publish(batch(440, 100))
        # d1 takes the frozen daemon's integrations over and delivers everything.
        await eventually(lambda: all(len(hooks.keys(n)) >= 540 for n in names), within=60)
        taken_over = time.time()
        assert taken_over - stopped_at > TTL  # nothing moved before the lease ran out
        await anyio.sleep(max(0.0, stopped_at + 3 * TTL - time.time()))
        d0.proc.send_signal(signal.SIGCONT)
        resumed_at = time.time()
        await api1.publish(batch(540, 100))
        await eventually(lambda: all(len(hooks.keys(n)) >= 640 for n in names), within=60)
        await anyio.sleep(2 * TTL)  # let d0 rebalance and deliver again, if it would
    # After it woke up, d0 sent requests only for integrations it claimed again since.
    # (Without its own lease check it sends the next events of its window at once: the
    # renewal that would tell it the lease is gone needs a round trip to NATS first.)
    claims = cluster.claims(0)
    late = [h for h in hooks.delivered if h.instance == "d0" and h.at >= resumed_at
            and not any(name == h.hook and resumed_at <= at <= h.at
                        for at, name in claims)]
    assert not late, (late[:5], claims)
    assert frozen  # the test froze a daemon that was delivering something


# ------------------------------------------------------------------ shared API


async def test_api_races_across_instances(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(3)
    async with Receiver() as hooks, ApiClient(cluster.daemons[0]) as api0, \
            ApiClient(cluster.daemons[1]) as api1, ApiClient(cluster.daemons[2]) as api2:
        apis = [api0, api1, api2]

        async def create(api: ApiClient, name: str) -> int:
            body = {"id": name, "integration_type": "permanent",
                    "callback_parameters": {"callback_url": hooks.hook_url(name)}}
            status, _ = await api.answer("POST", BASE, body)
            return status

        # Eleven created at once, spread over the instances, with room for ten: ten win.
        results = await asyncio.gather(*(create(apis[i % 3], f"c{i}") for i in range(11)))
        assert results.count(200) == 10, results
        for api in apis:
            listed = await api.request("GET", BASE)
            assert len(listed["integrations"]) == 10
        loser = next(f"c{i}" for i, status in enumerate(results) if status != 200)
        await api2.get(loser, expect=404)
        winner = next(f"c{i}" for i, status in enumerate(results) if status == 200)
        await api2.request("DELETE", f"{BASE}/{winner}", expect=200)
        # The same id created at once through two instances: one 200, one 409.
        twice = await asyncio.gather(create(api0, "same"), create(api1, "same"))
        assert sorted(twice) == [200, 409]
        # Stop through one instance while another delivers it: delivery stops there.
        await api0.publish(batch(0, 10))
        await eventually(lambda: len(hooks.keys("same")) == 10, within=30)
        owner = hooks.owners()["same"]
        other = apis[(int(owner[1:]) + 1) % 3]
        owner_daemon = cluster.daemons[int(owner[1:])]
        stops = sink_stops(owner_daemon, "same")
        await other.stop("same")
        # The owner learns of it from the stream: once its sink has stopped, events
        # published after that are not delivered to "same".
        await eventually(lambda: sink_stops(owner_daemon, "same") > stops, within=30)
        await api0.publish(batch(10, 10))
        others = [f"c{i}" for i, status in enumerate(results) if status == 200
                  and f"c{i}" != winner]
        await eventually(lambda: all(len(hooks.keys(n)) == 20 for n in others), within=30)
        assert set(hooks.keys("same")) == {f"e{i}" for i in range(10)}
        # Stop and start racing through two instances end in one state, seen by all.
        await asyncio.gather(api1.start("same"), api2.stop("same"))
        views = [await api.get("same") for api in apis]
        assert all(v == views[0] for v in views)
        if views[0]["status"] == "stopped":
            await api0.start("same")
        await eventually(lambda: len(hooks.keys("same")) == 20, within=30)


# ------------------------------------------------------------------- visibility


async def test_any_instance_shows_the_whole_cluster(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(2)
    names = [f"v{i}" for i in range(4)]
    async with Receiver() as hooks, ApiClient(cluster.daemons[0]) as api0, \
            ApiClient(cluster.daemons[1]) as api1:
        for name in names:
            await api0.webhook(name, hooks.hook_url(name))
        await api0.publish(batch(0, 30))
        await eventually(lambda: set(hooks.owners().values()) == {"d0", "d1"}
                    and all(len(hooks.keys(n)) == 30 for n in names), within=30)
        delivered_by = hooks.owners()
        client = await Line.connect(control_path(cluster.daemons[0]))
        try:
            async def settled() -> dict[str, Any] | None:
                snapshot = (await client.call("status"))["result"]
                cluster_view = snapshot["cluster"]
                owners = {i["id"]: i["owner"] for i in snapshot["integrations"]}
                remote = [i for i in snapshot["integrations"] if i["owner"] == "d1"]
                owned = sorted(o for e in cluster_view["instances"] for o in e["owns"])
                ok = (owners == delivered_by and len(cluster_view["instances"]) == 2
                      and owned == names
                      and all(e["live"] for e in cluster_view["instances"])
                      and all(i["delivered"] == 30 for i in remote))
                return snapshot if ok else None

            snapshot = await eventually(settled, lambda s: s is not None, within=20,
                                        every=0.25, what="the cluster view settled")
        finally:
            await client.close()
        assert snapshot is not None
        view = snapshot["cluster"]
        assert view["instance"] == "d0"
        by_name = {e["instance"]: e for e in view["instances"]}
        assert by_name["d0"]["this"] and not by_name["d1"]["this"]
        assert sorted(by_name["d0"]["owns"] + by_name["d1"]["owns"]) == names
        # The HTTP API's answers are the spec's, the same through every instance.
        for name in names:
            one, other = await api0.get(name), await api1.get(name)
            assert one == other and "owner" not in one


# ---------------------------------------------------------------------- restart


async def test_restart_after_sigkill_resumes_without_waiting_for_the_lease(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """The lease TTL (30 s here, far above the time a restart takes) is not waited out by
    a daemon restarted on the data dir of the one that held the leases: only one live
    daemon can hold a data dir."""
    settings = jetstream_settings(nats_server)
    settings["log"] = {"level": "info", "format": "json"}
    settings["jetstream"]["lease_ttl"] = "30s"
    (tmp_path / "solo").mkdir()
    daemon = DaemonProcess(tmp_path / "solo", settings)
    try:
        daemon.start()
        async with Receiver() as hooks:
            async with ApiClient(daemon) as api:
                await api.webhook("r0", hooks.hook_url("r0"))
                await api.publish(batch(0, 5))
                await eventually(lambda: len(hooks.keys("r0")) == 5, within=20)
            daemon.kill()
            daemon.start()
            restarted = time.time()
            async with ApiClient(daemon) as api:
                await api.publish(batch(5, 5))
            await eventually(lambda: len(hooks.keys("r0")) == 10, within=20)
            resumed = max(h.at for h in hooks.delivered)
            assert resumed - restarted < 15.0  # not the 30 s TTL
    finally:
        daemon.kill()


async def test_two_daemons_under_one_name_are_reported(tmp_path: Path,
                                                       nats_server: NatsServer) -> None:
    prefix = new_prefix()
    twins = []
    for number in range(2):
        settings = jetstream_settings(nats_server, prefix)
        settings["jetstream"].update(instance="twin", lease_ttl="2s")
        (tmp_path / f"t{number}").mkdir()
        twins.append(DaemonProcess(tmp_path / f"t{number}", settings))
    try:
        for daemon in twins:
            daemon.start()
        await eventually(lambda: any("another daemon announces itself under this instance name"
                                in d.log() for d in twins), within=20)
    finally:
        for daemon in twins:
            daemon.kill()


# -------------------------------------------------------------- join and leave


async def test_a_joining_daemon_takes_its_share_and_a_leaving_one_hands_over(
        cluster_factory: ClusterFactory) -> None:
    """Graceful both ways: the extras are given up after their cursors are saved (no
    event delivered twice), and a daemon stopping cleanly releases its leases, so the
    others resume at once rather than after the TTL."""
    # A TTL well above a handover's time: "resumed before the TTL" then shows the lease
    # was released, not run out, even on a loaded machine.
    cluster = cluster_factory(2, extra={"jetstream": {"lease_ttl": f"{HANDOVER_TTL:g}s"}})
    d0, d1 = cluster.daemons
    d1.stop()  # d1 joins later
    names = [f"j{i}" for i in range(6)]
    async with Receiver(delayed(0.005)) as hooks, ApiClient(d0) as api0:
        for name in names:
            await api0.webhook(name, hooks.hook_url(name))
        await api0.publish(batch(0, 30))
        await eventually(lambda: all(len(hooks.keys(n)) == 30 for n in names), within=30)
        assert set(hooks.owners().values()) == {"d0"}
        d1.start()
        joined = time.time()
        # Keep events coming while the integrations move.
        for round_number in range(1, 11):
            await api0.publish(batch(round_number * 30, 30))
            await anyio.sleep(0.2)
        await eventually(lambda: all(len(hooks.keys(n)) == 330 for n in names), within=30)
        await eventually(lambda: collections.Counter(hooks.owners().values())
                         == {"d0": 3, "d1": 3}, within=20)
        assert time.time() - joined < 20
        moved = [n for n, i in hooks.owners().items() if i == "d1"]
        for name in names:  # handed over with the cursor saved: nothing twice
            assert max(hooks.keys(name).values()) == 1, name
        # d1 leaves cleanly: d0 takes its integrations at once, not after the TTL.
        assert d1.stop() == 0
        left = time.time()
        await api0.publish(batch(330, 30))
        await eventually(lambda: all(len(hooks.keys(n)) == 360 for n in names), within=30)
        for name in moved:
            resumed = min(h.at for h in hooks.delivered if h.hook == name and h.at > left)
            assert resumed - left < HANDOVER_TTL, (name, resumed - left)
        for name in names:
            assert max(hooks.keys(name).values()) == 1, name
