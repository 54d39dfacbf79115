"""Start the real daemon as a subprocess on port 0, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 20.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write a TOML file from {"tenant": ..., "server": {...}, ...}."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


class DaemonProcess:
    """One daemon subprocess; `start()` waits until runtime.json and /healthz say it is up."""

    def __init__(self, workdir: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, *, wrapper: list[str] | None = None,
                 wrapper_execs: bool = True, cwd: Path | None = None,
                 popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
                 poll_interval: float = 0.02, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.env = dict(env or {})
        self.workdir = workdir
        # A command prefix such as `setpriv --reuid=nobody ...` (run as another user)
        # or `prlimit --nofile=256` (tighter limits), which exec the daemon (same pid);
        # or a profiler that runs it as a child (`wrapper_execs=False`).
        self.wrapper = list(wrapper or [])
        self.wrapper_execs = wrapper_execs
        self.cwd = cwd or workdir
        self.popen = popen  # the benchmarks spawn through their own process registry
        self.poll_interval = poll_interval
        self.startup_timeout = startup_timeout
        self.pid = 0  # the daemon's own pid, from runtime.json
        self.data_dir = workdir / "data"
        base = {
            "server": {"host": "127.0.0.1", "port": 0},
            "auth": {"tokens": ["test-token-0123456789"]},
            "storage": {"data_dir": str(self.data_dir)},
            "log": {"level": "debug"},
        }
        self.settings = merge(base, settings or {})
        # Relative to the config file's directory, as the daemon resolves it.
        self.data_dir = workdir / self.settings["storage"]["data_dir"]
        self.config_path = write_config(workdir / "eventstreamd.toml", self.settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_args: list[str] = []  # more arguments of `eventstreamd run`
        self.url = ""
        self.log_path = workdir / "daemon.log"
        self._log_fh: Any = None

    @property
    def token(self) -> str:
        return str(self.settings["auth"]["tokens"][0]) if self.settings["auth"].get("tokens") \
            else (self.data_dir / "api_token").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def reconfigure(self, settings: dict[str, Any]) -> None:
        self.settings = merge(self.settings, settings)
        write_config(self.config_path, self.settings)

    def start(self, wait: bool = True) -> DaemonProcess:
        runtime = self.data_dir / "runtime.json"
        if runtime.exists():
            runtime.unlink()  # left by a killed predecessor
        self._log_fh = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = self.popen(
            [*self.wrapper, sys.executable, "-m", "eventstreamd", "run",
             "--config", str(self.config_path), *self.run_args],
            cwd=self.cwd, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until runtime.json names this daemon (its pid, unless a profiler runs it)."""
        assert self.proc is not None
        runtime = self.data_dir / "runtime.json"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(runtime.read_text())
                if not self.wrapper_execs or info.get("pid") == self.proc.pid:
                    self.url, self.pid = info["url"], int(info["pid"])
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(self.poll_interval)
        self.kill()
        raise RuntimeError(f"daemon did not start within {self.startup_timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.wait(timeout)
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return code

    def restart(self) -> DaemonProcess:
        self.stop()
        return self.start()


# The `daemon_factory` fixture's type (tests/conftest.py).
Factory = Callable[..., DaemonProcess]


class Listener:
    """`eventstreamd listen` as a subprocess on a free port; its output in a file."""

    def __init__(self, workdir: Path, *args: str, cwd: Path | None = None) -> None:
        self.out_path = workdir / f"listen-{len(list(workdir.glob('listen-*')))}.out"
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventstreamd", "listen", "--port", "0", *args],
            cwd=cwd or workdir, stdout=self._out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            first = self.output().split("\n", 1)[0]
            if first.startswith("listening on "):
                self.url = first.split()[2]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"listen exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"listen did not start:\n{self.output()}")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def deliveries(self) -> int:
        return self.output().count("\n--- #")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._out.close()
        return code
