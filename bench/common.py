"""What every part of the benchmark shares: the events, process figures, child processes.

Decisions:
- One event shape for the whole suite: an `order.created` event whose NDJSON
  line is exactly `EVENT_LINE_BYTES` (400) bytes for every index, because
  every field is fixed-width. Fixed-width lines make the bytes an S3 file
  holds predictable, so the S3 scenario can line its files up with
  `s3.rotate_size` and know exactly how many bytes must arrive.
- Times that cross process boundaries use `time.monotonic_ns()`: on Linux
  CLOCK_MONOTONIC is one clock for every process, so a publisher's stamp and
  a receiver's arrival time can be subtracted.
- CPU time and memory of other processes come from `/proc` (no psutil).
- Every process of the benchmark that runs an event loop (load generators,
  baselines, the bare servers, the receiver) runs on the loop the daemon
  runs on (`run_on_daemon_loop`: uvloop where installed, as `eventstreamd
  run` chooses it), so a ratio compares the work done, not two event loops.
- Every child process is started through `Children`, which remembers it and
  ends exactly the processes it started (by their handles), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENT_LINE_BYTES = 400
EVENT_NAME = "order.created"
DEFAULT_TENANT = "default"
TOKEN = "bench-token-0123456789abcdef"
API_BASE = "/api/v1/org/integrations/eventstream"
MIB = 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def run_on_daemon_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the event loop the daemon uses: uvloop where it is installed
    (`eventstreamd run` picks it the same way), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --------------------------------------------------------------------- events

def published_at_now() -> str:
    """An RFC 3339 timestamp in the daemon's own canonical form (milliseconds, Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


STORES = 100  # distinct store_id values


def _payload(i: int, pad: int) -> dict[str, Any]:
    return {
        "order_id": f"ord-{i:010d}",
        "customer_id": f"cus-{(i * 7919) % 1_000_000:06d}",
        "store_id": f"store-{i % STORES:03d}",  # the keyed-order scenario's ordering key
        "currency": "EUR",
        "total_cents": f"{(i * 1237) % 10_000_000:07d}",
        "items": [
            {"sku": f"SKU-{(i * 31) % 100_000:06d}", "qty": f"{1 + i % 3}",
             "price_cents": "0001999"},
            {"sku": f"SKU-{(i * 17) % 100_000:06d}", "qty": "1", "price_cents": "0000500"},
        ],
        "shipping": {"method": "standard", "country": "DE", "postal_code": "10115"},
        "note": "x" * pad,
    }


def _pad_for(published_at: str) -> int:
    probe = orjson.dumps({"name": EVENT_NAME, "published_at": published_at,
                          "payload": _payload(0, 0)})
    return EVENT_LINE_BYTES - 1 - len(probe)  # the line is the JSON plus "\n"


class EventFactory:
    """Deterministic events; `line(i)` is exactly EVENT_LINE_BYTES bytes for every i."""

    def __init__(self, published_at: str) -> None:
        self.published_at = published_at
        self.pad = _pad_for(published_at)
        if self.pad < 0:
            raise ValueError("the event template is longer than EVENT_LINE_BYTES")

    def event(self, i: int) -> dict[str, Any]:
        return {"name": EVENT_NAME, "published_at": self.published_at,
                "payload": _payload(i, self.pad)}

    def line(self, i: int) -> bytes:
        return orjson.dumps(self.event(i)) + b"\n"

    def ndjson(self, start: int, count: int) -> bytes:
        return b"".join(self.line(i) for i in range(start, start + count))

    def delivery_body(self, i: int, tenant: str = DEFAULT_TENANT) -> bytes:
        """What the daemon POSTs to a webhook for event i (and writes as one S3 line)."""
        event = self.event(i)
        return orjson.dumps({"tenant": tenant, "name": event["name"],
                             "published_at": event["published_at"],
                             "payload": event["payload"]})


# ------------------------------------------------------------------ /proc data

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of a process, in MiB."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


class Meter:
    """How busy some processes, and the whole machine, were over a phase.

    CPU seconds / wall seconds: 1.0 = one core fully busy. `machine` counts every
    process on the host, so when it is well above the sum of the others,
    something outside the benchmark was competing for the CPU.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine0 = machine_cpu_seconds()
        self.wall0 = time.monotonic()

    def busy(self, wall: float | None = None) -> dict[str, float]:
        if wall is None:
            wall = time.monotonic() - self.wall0
        wall = max(wall, 1e-9)
        out = {name: (cpu_seconds(pid) - self.cpu0[name]) / wall
               for name, pid in self.pids.items()}
        out["machine"] = (machine_cpu_seconds() - self.machine0) / wall
        return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# --------------------------------------------------------------------- network

def http(method: str, url: str, body: Any = None, token: str | None = None,
         content_type: str = "application/json", timeout: float = 30.0,
         raw: bytes | None = None) -> tuple[int, Any]:
    """A blocking HTTP call for the orchestrator (never on a measured path)."""
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        status = exc.code
    try:
        return status, orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return status, payload.decode(errors="replace")


# --------------------------------------------------------------- child processes

def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT))


class Children:
    """Starts helper processes and ends exactly those (by handle) when the run ends."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("cwd", REPO_ROOT)
        proc = subprocess.Popen(args, **kwargs)
        self._procs.append(proc)
        return proc

    def module(self, module: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.spawn([sys.executable, "-m", module, *args], **kwargs)

    def end(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def end_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.end(proc)


class Helper:
    """A child process that reports JSON lines on stdout (stderr goes to a temp file).

    Workers print `{"phase": "start"}` when their measured phase begins, and
    their result as the last line; servers print `{"port": N}` when ready.
    """

    def __init__(self, children: Children, module: str, *args: str) -> None:
        self.children = children
        self.what = f"{module} {args[0] if args else ''}".strip()
        self._err = tempfile.TemporaryFile()
        self.proc = children.module(module, *args, stdout=subprocess.PIPE, stderr=self._err)
        self.pid = self.proc.pid
        self._buffer = b""
        self._eof = False

    def _fill(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    def line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if self._eof or left <= 0:
                self._fail(f"gave no line within {timeout:g}s" if left <= 0 else "exited")
            self._fill(min(left, 0.5))
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to end; its last JSON line."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"did not finish within {timeout:g}s")
            self._fill(min(left, 0.5))
        try:
            code = self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._fail("did not exit")
        if code != 0:
            self._fail(f"exited with {code}")
        lines = [ln for ln in self._buffer.decode().splitlines() if ln.strip()]
        if not lines:
            self._fail("printed no result")
        self.end()
        return dict(json.loads(lines[-1]))

    def stderr_tail(self, limit: int = 3000) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-limit:]

    def _fail(self, problem: str) -> None:
        tail = self.stderr_tail()
        self.end()
        raise RuntimeError(f"{self.what} {problem}" + (f":\n{tail}" if tail else ""))

    def end(self) -> None:
        self.children.end(self.proc)
        self._err.close()


def run_worker(children: Children, command: str, args: dict[str, Any],
               timeout: float) -> dict[str, Any]:
    """Run `python -m bench.worker COMMAND ARGS` to the end; return its JSON result."""
    return Helper(children, "bench.worker", command, json.dumps(args)).result(timeout)


def ticks(timeout: float, interval: float) -> Iterator[int]:
    """A bounded polling loop: at most `timeout` seconds and timeout/interval + 2 rounds."""
    end = time.monotonic() + timeout
    for n in range(int(timeout / interval) + 2):
        if time.monotonic() >= end:
            return
        yield n
        time.sleep(interval)
