"""What every scenario is given: the run's settings (quick or full, profiling, extra
daemon environment), its temp dir and child processes, and the ways to start a daemon,
run a worker process, measure one, share one nats-server and one stored backlog."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.backends import jetstream_settings
from tests.helpers.nats_server import NatsServer

from .common import Children, EventFactory, Helper, Meter
from .daemon import BenchDaemon

T = TypeVar("T")


def starts_at_now(seconds_ago: float = 5.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - seconds_ago))


class Ctx:
    def __init__(self, quick: bool, tmp: Path, children: Children,
                 profile: set[str], profile_dir: Path,
                 log: Callable[[str], None], daemon_env: dict[str, str] | None = None) -> None:
        self.quick = quick
        self.daemon_env = daemon_env or {}
        self.tmp = tmp
        self.children = children
        self.profile = profile
        self.profile_dir = profile_dir
        self.log = log
        self.published_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.factory = EventFactory(self.published_at)
        self._template: tuple[Path, dict[str, Any], str] | None = None
        self._daemons = 0
        self._nats: NatsServer | None = None
        self._prefixes = 0

    def nats(self) -> NatsServer:
        """One nats-server (JetStream, `sync_interval: always`) for every JetStream scenario
        of the run, started on first use; `close()` stops it."""
        if self._nats is None:
            self.log("  starting nats-server (JetStream, sync_interval: always)")
            self._nats = NatsServer(self.tmp / "nats").start()
        return self._nats

    def jetstream(self) -> dict[str, Any]:
        """Daemon settings for the JetStream backend, with a stream prefix of its own."""
        self._prefixes += 1
        return jetstream_settings(self.nats(), f"b{self._prefixes}")

    def close(self) -> None:
        if self._nats is not None:
            self._nats.stop()
            self._nats = None

    def size(self, full: T, quick: T) -> T:
        """The full run's value, or the quick run's."""
        return quick if self.quick else full

    def workdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def daemon(self, scenario: str, settings: dict[str, Any] | None = None,
               workdir: Path | None = None, start: bool = True) -> BenchDaemon:
        self._daemons += 1
        profile_cmd = None
        if scenario in self.profile:
            exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            out = self.profile_dir / f"{scenario}-{self._daemons}.txt"
            profile_cmd = [exe, "record", "--rate", "200", "--nonblocking", "--format", "raw",
                           "--output", str(out), "--"]
            self.log(f"  profiling the daemon with py-spy into {out}")
        daemon = BenchDaemon(self.children, workdir or self.workdir(f"{scenario}-daemon"),
                             settings, profile_cmd, self.daemon_env)
        return daemon.start() if start else daemon

    def worker(self, command: str, args: dict[str, Any]) -> Helper:
        return Helper(self.children, "bench.worker", command,
                      json.dumps({"published_at": self.published_at, **args}))

    def measure(self, command: str, args: dict[str, Any], pids: dict[str, int],
                timeout: float) -> tuple[dict[str, Any], dict[str, float]]:
        """Run a load-generating worker; its result and how busy everyone was meanwhile."""
        worker = self.worker(command, args)
        worker.line(60)  # {"phase": "start"}
        meter = Meter(pids)
        result = worker.result(timeout)
        # /proc figures cover start marker to worker exit, as seen from here.
        return result, {"loadgen": result["busy"], **meter.busy()}

    def run(self, command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.worker(command, args).result(timeout)

    def publish(self, daemon: BenchDaemon, events: int, timeout: float = 300) -> None:
        """The run's first `events` events, published to the daemon (not measured)."""
        self.run("publish_all", {"url": f"{daemon.url}/events", "events": events}, timeout)

    def template_store(self) -> tuple[Path, dict[str, Any], str]:
        """A data dir holding the backlog events, filled once per run and copied per scenario.

        Filled with the daemon's own store code (`LmdbStore.append`, 10,000
        events per transaction) before any daemon starts, rather than published.
        """
        if self._template is None:
            count = self.size(1_000_000, 50_000)
            data_dir = self.workdir("template") / "data"
            starts_at = starts_at_now(60)
            self.log(f"  filling a template store with {count:,} events (in-process LmdbStore)")
            info = self.run("fill_store", {"data_dir": str(data_dir), "count": count,
                                           "map_size": 4 << 30}, timeout=600)
            self._template = (data_dir, info, starts_at)
        return self._template

    def copy_template(self, name: str) -> tuple[Path, dict[str, Any], str]:
        data_dir, info, starts_at = self.template_store()
        target = self.workdir(name) / "data"
        shutil.copytree(data_dir, target)
        return target, info, starts_at
