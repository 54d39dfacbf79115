"""Child processes of the tests and the benchmarks: a free loopback port, waiting until a
process is ready, and ending one.

Decisions:
- `free_port` binds port 0 and lets the kernel choose. Another process could take
  the port before the child binds it; the servers that need a port named in their
  config (nats-server, moto) accept that small window.
- `until_ready` is `eventually_sync` that also gives up as soon as the process has
  exited, with its output in the error, instead of waiting out the bound.
- `end` is the one way a child is ended: the signal, a bounded wait, SIGKILL after it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .wait import eventually_sync

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def output_of(path: Path) -> str:
    """What a child wrote to its log file ("" before there is one)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def until_ready(proc: subprocess.Popen[bytes], probe: Callable[[], T | None], what: str,
                within: float, every: float = 0.02,
                output: Callable[[], str] = lambda: "") -> T:
    """`probe()` until it returns something (not None); fails at once when `proc` exits."""
    def checked() -> T | None:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{output()}")
        return probe()

    try:
        found = eventually_sync(checked, lambda value: value is not None, within=within,
                                every=every, what=what)
    except AssertionError:
        raise RuntimeError(f"{what} not within {within:g}s:\n{output()}") from None
    assert found is not None
    return found


def end(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM,
        timeout: float = 10.0) -> int:
    """Send `sig` (if it still runs; None: none), wait up to `timeout`, then SIGKILL; its
    exit code."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
