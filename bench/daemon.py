"""The real daemon as a subprocess, for the benchmarks.

The same approach as `tests/daemon_proc.py` (TOML config on port 0, wait for
`{data_dir}/runtime.json`), whose config writing it shares, plus what a
benchmark needs on top:
- the daemon's own pid from runtime.json, for CPU time and RSS from /proc;
- an optional profiler wrapper (`py-spy record ... --`), in which case the
  Popen'd process is py-spy and the daemon is its child;
- log level `info` (the shipped default), not debug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.daemon import merge, write_config

from .common import API_BASE, TOKEN, Children, child_env, cpu_seconds, http, memory

STARTUP_TIMEOUT = 30.0


class BenchDaemon:
    def __init__(self, children: Children, workdir: Path, settings: dict[str, Any] | None = None,
                 profile_cmd: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.children = children
        self.env = dict(env or {})
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        base = {
            "server": {"host": "127.0.0.1", "port": 0},
            "auth": {"tokens": [TOKEN]},
            "storage": {"data_dir": str(workdir / "data")},
            "log": {"level": "info"},
        }
        self.settings = merge(base, settings or {})
        self.data_dir = Path(self.settings["storage"]["data_dir"])
        self.config_path = write_config(workdir / "eventstreamd.toml", self.settings)
        self.log_path = workdir / "daemon.log"
        self.profile_cmd = profile_cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.url = ""
        self.started_ns = 0

    def start(self, wait: bool = True) -> BenchDaemon:
        runtime = self.data_dir / "runtime.json"
        if runtime.exists():
            runtime.unlink()
        cmd = [sys.executable, "-m", "eventstreamd", "run", "--config", str(self.config_path)]
        if self.profile_cmd:
            cmd = [*self.profile_cmd, *cmd]
        self.started_ns = time.monotonic_ns()
        with open(self.log_path, "ab") as log:
            self.proc = self.children.spawn(cmd, cwd=self.workdir, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env={**child_env(), **self.env})
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        runtime = self.data_dir / "runtime.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                info = json.loads(runtime.read_text())
                self.pid, self.url = int(info["pid"]), str(info["url"])
                if self.profile_cmd or self.pid == self.proc.pid:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        raise RuntimeError(f"daemon did not start within {STARTUP_TIMEOUT:g}s:\n"
                           f"{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory(self.pid)

    def stop(self, timeout: float = 40.0) -> float:
        """SIGTERM (to the daemon itself, also under a profiler); the seconds it took."""
        if self.proc is None:
            return 0.0
        start = time.monotonic()
        if self.proc.poll() is None and self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.children.end(self.proc)
        return time.monotonic() - start

    # ------------------------------------------------------------------- API

    def api(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        status, payload = http(method, f"{self.url}{path}", body, token=TOKEN)
        if expect is not None and status != expect:
            raise RuntimeError(f"{method} {path} answered {status}: {payload}")
        return payload

    def create_webhook(self, integration_id: str, url: str, starts_at: str | None) -> Any:
        body: dict[str, Any] = {"id": integration_id, "integration_type": "permanent",
                                "callback_parameters": {"callback_url": url}}
        if starts_at:
            body["starts_at"] = starts_at
        return self.api("POST", API_BASE, body)

    def publish_ndjson(self, body: bytes) -> dict[str, Any]:
        status, payload = http("POST", f"{self.url}/events", raw=body, token=TOKEN,
                               content_type="application/x-ndjson", timeout=120)
        if status != 200:
            raise RuntimeError(f"publish answered {status}: {payload}")
        return dict(payload)
