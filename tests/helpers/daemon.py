"""Start the real daemon as a subprocess on port 0, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from .processes import end, output_of, until_ready

STARTUP_TIMEOUT = 20.0

# Settings for a test whose receiver fails on purpose: retries after milliseconds rather
# than the shipped seconds, and a request timeout of 2 s. A test that needs other values
# derives them: `merge(FAST, {"webhook": {"timeout": "1s"}})`.
FAST: dict[str, Any] = {"webhook": {"timeout": "2s", "retry_initial": "50ms",
                                    "retry_max": "200ms"}}


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

    def start(self, wait: bool = True) -> Self:
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
        try:
            self.url, self.pid = until_ready(self.proc, self._announced, "the daemon",
                                             self.startup_timeout, self.poll_interval, self.log)
        except RuntimeError:
            self.kill()
            raise

    def _announced(self) -> tuple[str, int] | None:
        assert self.proc is not None
        try:
            info = json.loads((self.data_dir / "runtime.json").read_text())
            if not self.wrapper_execs or info.get("pid") == self.proc.pid:
                return info["url"], int(info["pid"])
        except (OSError, ValueError, KeyError):
            pass
        return None

    def log(self) -> str:
        return output_of(self.log_path)

    def send_signal(self, sig: int) -> None:
        """`sig` to the daemon, not waiting for what it does (SIGKILL at a bad moment)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """`sig` to the daemon (when it runs), SIGKILL after `timeout`; its exit code."""
        assert self.proc is not None
        return self._ended(end(self.proc, sig, timeout))

    def wait(self, timeout: float) -> int:
        """Until the daemon exits of itself (SIGKILL after `timeout`); its exit code."""
        assert self.proc is not None
        return self._ended(end(self.proc, None, timeout))

    def kill(self) -> None:
        if self.proc is not None:
            self.stop(signal.SIGKILL, 10)

    def _ended(self, code: int) -> int:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return code

    def restart(self) -> Self:
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
        try:
            self.url = until_ready(self.proc, self._announced, "listen", STARTUP_TIMEOUT,
                                   output=self.output)
        except RuntimeError:
            self.stop()
            raise

    def _announced(self) -> str | None:
        first = self.output().split("\n", 1)[0]
        return first.split()[2] if first.startswith("listening on ") else None

    def output(self) -> str:
        return output_of(self.out_path)

    def deliveries(self) -> int:
        return self.output().count("\n--- #")

    def stop(self) -> int:
        code = end(self.proc)
        self._out.close()
        return code
