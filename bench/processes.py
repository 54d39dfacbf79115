"""The servers a scenario runs beside the daemon, each a child process of the run: the
webhook receiver (`python -m bench.receiver`), moto's S3 server, and what a fresh
interpreter takes to start (the floor under the daemon's own start-up).

moto is the tests' `MotoServer` (tests/helpers/s3.py), spawned through the run's
process registry; the daemon is `bench.daemon.BenchDaemon`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.nats_server import NatsServer
from tests.helpers.s3 import MotoServer

from .common import Children, Helper, http, ticks


class ReceiverProc:
    """A `bench.receiver` process: the webhook endpoint for daemon and baseline alike."""

    def __init__(self, children: Children) -> None:
        self.helper = Helper(children, "bench.receiver")
        self.url = f"http://127.0.0.1:{self.helper.line(20)['port']}"
        self.pid = self.helper.pid

    def stats(self, skip: int = 0) -> dict[str, Any]:
        status, payload = http("GET", f"{self.url}/_stats?skip={skip}")
        if status != 200:
            raise RuntimeError(f"receiver stats answered {status}")
        return dict(payload)

    def reset(self) -> None:
        http("POST", f"{self.url}/_reset")

    def wait_count(self, count: int, timeout: float, idle_timeout: float = 30.0) -> dict[str, Any]:
        """Wait until `count` requests arrived, or nothing new came for `idle_timeout`."""
        stats = self.stats()
        last_change, last_count = time.monotonic(), stats["count"]
        for _ in ticks(timeout, 0.05):
            stats = self.stats()
            if stats["count"] >= count:
                break
            if stats["count"] != last_count:
                last_change, last_count = time.monotonic(), stats["count"]
            elif time.monotonic() - last_change > idle_timeout:
                break
        return stats

    def stop(self) -> None:
        self.helper.end()


def start_moto(children: Children) -> MotoServer:
    """moto's S3 server on a free port, ended with the run."""
    return MotoServer(popen=children.spawn).start()


def pid_of(server: MotoServer | NatsServer) -> int:
    """The server process's pid (0 before it started), for the busyness meter."""
    return server.proc.pid if server.proc is not None else 0


def import_floor(cwd: Path) -> float:
    """Seconds for a fresh interpreter to import the daemon's modules (a floor for start-up)."""
    return _seconds([sys.executable, "-c",
                     "import eventstreamd.cli, eventstreamd.daemon.lifecycle"], cwd)


def nats_connect_floor(url: str, cwd: Path) -> float:
    """Seconds for a fresh interpreter to connect with bare nats-py and ask for the account."""
    return _seconds([sys.executable, "-c", (
        "import asyncio, nats\n"
        "async def main():\n"
        f"    nc = await nats.connect({url!r})\n"
        "    await nc.request('$JS.API.INFO', b'', timeout=5)\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n")], cwd)


def _seconds(command: list[str], cwd: Path) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, timeout=60, cwd=cwd)
    return time.monotonic() - start
