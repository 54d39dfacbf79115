"""Several daemons on one JetStream prefix (a cluster of instances d0, d1, ...), and the
SIGKILL failover scenario that the single-node tests and the three-node cluster's soak
test both run.

Deliveries are told apart by the receiver: every integration has a URL of its own
(`Receiver.hook_url`) and each request's User-Agent names the instance that sent it.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import orjson

from .api import ApiClient
from .backends import new_prefix
from .daemon import DaemonProcess
from .receiver import Receiver, delayed
from .s3 import MotoServer, s3_params
from .wait import eventually

TTL = 2.0  # the lease TTL of a cluster's daemons, in seconds


class Cluster:
    """Daemons d0, d1, ... on one prefix of one JetStream."""

    def __init__(self, root: Path, servers: list[str], count: int,
                 extra: dict[str, Any] | None = None, replicas: int = 1) -> None:
        self.prefix = new_prefix()
        self.daemons: list[DaemonProcess] = []
        for number in range(count):
            settings: dict[str, Any] = {
                "storage": {"backend": "jetstream"},
                "jetstream": {"servers": servers, "prefix": self.prefix,
                              "replicas": replicas, "instance": f"d{number}",
                              "lease_ttl": f"{TTL:g}s", "connect_timeout": "20s"}}
            settings.update({"log": {"level": "info", "format": "json"},
                             "webhook": {"retry_initial": "100ms", "retry_max": "500ms"},
                             "delivery": {"cursor_every": 50}})
            for section, values in (extra or {}).items():
                settings.setdefault(section, {}).update(values)
            workdir = root / f"d{number}"
            workdir.mkdir()
            self.daemons.append(DaemonProcess(workdir, settings))

    def start(self) -> Cluster:
        for daemon in self.daemons:
            daemon.start(wait=False)
        for daemon in self.daemons:
            daemon.wait_ready()
        return self

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    daemon.proc.send_signal(signal.SIGCONT)
            daemon.kill()

    def claims(self, number: int) -> list[tuple[float, str]]:
        """(wall time, integration) of every lease daemon `number` claimed, from its log."""
        found = []
        for line in self.daemons[number].log().splitlines():
            if '"lease claimed"' not in line:
                continue
            record = orjson.loads(line)
            found.append((log_time(record["ts"]), record["integration"]))
        return found


class ClusterFactory(Protocol):
    """Starts a cluster of `count` daemons with `extra` settings (the test stops it)."""

    def __call__(self, count: int, extra: dict[str, Any] | None = None) -> Cluster: ...


def sink_stops(daemon: DaemonProcess, integration: str) -> int:
    """How often the daemon's JSON log says the integration's sink stopped."""
    return sum('"sink stopped"' in line and orjson.loads(line).get("integration") == integration
               for line in daemon.log().splitlines())


def log_time(text: str) -> float:
    """A daemon's JSON log time stamp as wall-clock seconds (`Received.at`'s clock)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def batch(start: int, count: int) -> list[dict[str, Any]]:
    """Events e{start} ... with payload {"i": n}: the id says which one arrived."""
    return [{"id": f"e{i}", "name": "order.created", "payload": {"i": i}}
            for i in range(start, start + count)]


async def sigkill_failover(make_cluster: ClusterFactory, moto: MotoServer) -> None:
    """Three daemons share 10 webhook and 2 S3 integrations; d0 is SIGKILLed while events
    are published through the others. Its integrations resume elsewhere within the lease
    bound, nothing acknowledged is lost, S3 holds every event exactly once."""
    bucket = "multi"
    await moto.create_bucket(bucket)
    cluster = make_cluster(3, {"s3": {"endpoint_url": moto.url, "rotate_interval": "1s"},
                               "limits": {"max_integrations": 12}})
    webhooks = [f"w{i}" for i in range(10)]
    async with Receiver(delayed(0.005)) as hooks, ApiClient(cluster.daemons[0]) as api0, \
            ApiClient(cluster.daemons[1]) as api1, ApiClient(cluster.daemons[2]) as api2:
        apis = [api0, api1, api2]
        for number, name in enumerate(webhooks):  # created through every instance
            await apis[number % 3].webhook(name, hooks.hook_url(name))
        for name in ("s0", "s1"):
            await api1.create(id=name, s3_parameters=s3_params(bucket, name))
        # Spread: every daemon delivers some (balanced by count: 12 over 3 -> 4 each).
        await api0.publish(batch(0, 20))
        await eventually(lambda: all(len(hooks.keys(n)) == 20 for n in webhooks), within=40)
        await eventually(lambda: set(hooks.owners().values()) == {"d0", "d1", "d2"}, within=20)
        counts = collections.Counter(hooks.owners().values())
        assert max(counts.values()) <= 5, counts

        # Publish steadily through the survivors while d0 dies mid-stream.
        acked: list[str] = [f"e{i}" for i in range(20)]
        victim_owned = {n for n, i in hooks.owners().items() if i == "d0"}
        assert victim_owned
        killed_at = 0.0
        for round_number in range(30):
            start = 20 + round_number * 20
            api = apis[1 + round_number % 2]
            answer = await api.publish(batch(start, 20))
            assert answer["accepted"] == 20
            acked += [f"e{i}" for i in range(start, start + 20)]
            if round_number == 5:
                cluster.daemons[0].kill()  # SIGKILL
                killed_at = time.time()
            await anyio.sleep(0.1)
        expected = set(acked)
        await eventually(lambda: all(set(hooks.keys(n)) >= expected for n in webhooks),
                         within=60)

        # The dead daemon's integrations resumed elsewhere: a lease is taken once it has
        # not been renewed for the TTL (its last renewal is up to TTL/3 before the kill),
        # seen by a balancer that runs every TTL/5, plus a sink's start and the next
        # event's publish: about TTL + 1 s here (2.0-3.9 s measured); bounded loosely
        # (a loaded CI machine), yet well short of what no failover would give.
        for name in victim_owned:
            resumed = min(r.at for r in hooks.delivered
                          if r.hook == name and r.at > killed_at and r.instance != "d0")
            print(f"{name} resumed {resumed - killed_at:.2f}s after the SIGKILL")
            assert resumed - killed_at < 2 * TTL + 4.0, (name, resumed - killed_at)
        assert not [r for r in hooks.delivered if r.instance == "d0" and r.at > killed_at + 0.5]
        # Duplicates: at most what the dead daemon had delivered past its last cursor.
        for name in webhooks:
            duplicates = sum(c - 1 for c in hooks.keys(name).values())
            print(f"{name}: {duplicates} duplicates")
            assert duplicates <= 50 + 8, (name, duplicates)

        # S3: every acknowledged event exactly once per integration, whoever uploaded.
        async def complete() -> bool:
            objects = await moto.objects(bucket)
            return all(_payloads(objects, n) >= len(expected) for n in ("s0", "s1"))
        await eventually(complete, within=60, every=0.5)
        objects = await moto.objects(bucket)
        for name in ("s0", "s1"):
            lines = collections.Counter(
                orjson.loads(line)["payload"]["i"] for key, body in objects.items()
                if key.startswith(f"{name}/") for line in body.splitlines())
            assert set(lines) == {int(e[1:]) for e in expected}
            assert max(lines.values()) == 1, [k for k, v in lines.items() if v > 1][:10]


def _payloads(objects: dict[str, bytes], name: str) -> int:
    return sum(len(body.splitlines()) for key, body in objects.items()
               if key.startswith(f"{name}/"))
