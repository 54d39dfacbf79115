"""The real daemon as a subprocess, for the benchmarks: the test suite's `DaemonProcess`
(tests/helpers/daemon.py: TOML config on port 0, wait for `{data_dir}/runtime.json`),
plus what a benchmark needs on top:
- spawned through the run's process registry, so every child ends with the run;
- the daemon's own pid from runtime.json, for CPU time and RSS from /proc;
- an optional profiler wrapper (`py-spy record ... --`), in which case the
  Popen'd process is py-spy and the daemon is its child;
- log level `info` (the shipped default), not debug; the benchmark's token.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers.daemon import DaemonProcess, merge

from .common import API_BASE, TOKEN, Children, cpu_seconds, http, memory

STARTUP_TIMEOUT = 30.0


class BenchDaemon(DaemonProcess):
    """The test suite's daemon process, spawned through the run's process registry, with
    the benchmark's token and log level, and what a scenario measures on top."""

    def __init__(self, children: Children, workdir: Path, settings: dict[str, Any] | None = None,
                 profile_cmd: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.children = children
        workdir.mkdir(parents=True, exist_ok=True)
        base = {"auth": {"tokens": [TOKEN]}, "log": {"level": "info"}}
        super().__init__(workdir, merge(base, settings or {}), env,
                         wrapper=profile_cmd, wrapper_execs=not profile_cmd,
                         popen=children.spawn, poll_interval=0.005,
                         startup_timeout=STARTUP_TIMEOUT)
        self.profile_cmd = profile_cmd

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """`sig` to the daemon itself (also under a profiler, which runs it as a child);
        its exit code (0 when it never started)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None and self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.children.end(self.proc)
        return self.wait(10)

    def timed_stop(self) -> float:
        """A graceful stop; the seconds it took."""
        start = time.monotonic()
        self.stop()
        return time.monotonic() - start

    # ------------------------------------------------------------------- API

    def api(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        status, payload = http(method, f"{self.url}{path}", body, token=TOKEN)
        if expect is not None and status != expect:
            raise RuntimeError(f"{method} {path} answered {status}: {payload}")
        return payload

    def create_webhook(self, integration_id: str, url: str, starts_at: str | None,
                       controls: dict[str, Any] | None = None) -> Any:
        """A webhook integration; `controls` are more callback_parameters (max_rate, ...)."""
        body: dict[str, Any] = {"id": integration_id, "integration_type": "permanent",
                                "callback_parameters": {"callback_url": url,
                                                        **(controls or {})}}
        if starts_at:
            body["starts_at"] = starts_at
        return self.api("POST", API_BASE, body)

    def publish_ndjson(self, body: bytes) -> dict[str, Any]:
        status, payload = http("POST", f"{self.url}/events", raw=body, token=TOKEN,
                               content_type="application/x-ndjson", timeout=120)
        if status != 200:
            raise RuntimeError(f"publish answered {status}: {payload}")
        return dict(payload)
