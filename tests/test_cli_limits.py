"""Command-line clients given endless, huge or odd input: bounded memory, one line, a
non-zero exit. Each command runs as a child process against a real daemon, fed through a
pipe (up to 1 GiB, generated, never on disk); its peak RSS comes from the kernel
(`wait4`'s ru_maxrss).

The memory bound (200 MiB, against inputs of 1 GiB) is generous on purpose: the
interpreter with its imports takes ~40 MiB, one event may take 10 MiB (server.max_body)
and the commands hold a few of those; reading any of these inputs whole would take GiBs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.api import ApiClient
from tests.helpers.daemon import DaemonProcess
from tests.helpers.wait import eventually

GIB = 1 << 30
MIB = 1 << 20
MEMORY_BOUND_KIB = 200 * 1024
PIECE = b"x" * MIB


@dataclass
class Finished:
    code: int
    stderr: str
    peak_kib: int  # ru_maxrss: KiB on Linux
    fed: int  # bytes the command took from its stdin before it ended

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


# Runs the command as a child of a small process of its own and reports the child's peak
# RSS: a child forked straight from the test process would count that process's memory
# (Linux's ru_maxrss covers the forked copy before exec), which under xdist is ~240 MiB.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(args: list[str], cwd: Path, feed: Iterator[bytes] | None = None,
                 timeout: float = 120.0) -> Finished:
    """`eventstreamd ARGS` in a child process, its stdin fed from `feed` until it ends or
    the child stops reading; exit code, stderr and peak RSS."""
    tag = f"{os.getpid()}-{threading.get_ident()}"
    err_path, peak_path = cwd / f"stderr-{tag}.txt", cwd / f"peak-{tag}.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(peak_path),
                                 sys.executable, "-m", "eventstreamd", *args], cwd=cwd,
                                stdin=subprocess.PIPE if feed is not None else None,
                                stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, EVENTSTREAMD_CONFIG=""),
                                start_new_session=True)
    fed = 0

    def write() -> None:
        nonlocal fed
        assert proc.stdin is not None
        try:
            for chunk in feed or ():
                proc.stdin.write(chunk)
                fed += len(chunk)
        except (BrokenPipeError, ValueError):
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=write, daemon=True)
    if feed is not None:
        writer.start()
    try:
        code = proc.wait(timeout)  # a bound, not a measured figure
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(10)
    if feed is not None:
        writer.join(30)
    peak = int(peak_path.read_text()) if peak_path.exists() else -1
    return Finished(code, err_path.read_text(errors="replace"), peak, fed)


def repeated(head: bytes, body: bytes = PIECE, total: int = GIB,
             tail: bytes = b"") -> Iterator[bytes]:
    yield head
    for _ in range(total // len(body)):
        yield body
    yield tail


def assert_refused(done: Finished, command: str, *phrases: str, code: int = 1) -> None:
    assert done.code == code, done
    assert done.peak_kib > 0, done
    assert len(done.lines) == 1 and done.lines[0].startswith(f"eventstreamd {command}: "), \
        done.lines[:5]
    for phrase in phrases:
        assert phrase in done.lines[0], done.lines[0]
    assert done.peak_kib < MEMORY_BOUND_KIB, f"peak RSS {done.peak_kib / 1024:.0f} MiB"


def publish(d: DaemonProcess, *more: str) -> list[str]:
    return ["publish", "--config", str(d.config_path), *more]


# ------------------------------------------------------------------- publish


def test_publish_of_random_bytes_ends_at_once(daemon: DaemonProcess) -> None:
    done = run_measured(publish(daemon, "/dev/urandom"), daemon.workdir)
    assert_refused(done, "publish")


def test_publish_of_a_1gib_line_stops_at_the_event_limit(daemon: DaemonProcess) -> None:
    feed = repeated(b'{"name": "order.created", "payload": {"s": "', tail=b'"}}\n')
    done = run_measured(publish(daemon), daemon.workdir, feed)
    assert_refused(done, "publish", "line 1 is longer than 10 MiB")
    assert done.fed < 64 * MIB  # nothing much was read past the limit


def test_publish_of_a_1gib_array_element_stops_at_the_event_limit(
        daemon: DaemonProcess) -> None:
    feed = repeated(b'[{"name": "order.created", "payload": {"s": "', tail=b'"}}]')
    done = run_measured(publish(daemon), daemon.workdir, feed)
    assert_refused(done, "publish", "event 0 of the array is larger than 10 MiB")
    assert done.fed < 64 * MIB


def test_publish_of_a_1gib_document_stops_at_the_event_limit(daemon: DaemonProcess) -> None:
    feed = repeated(b'{\n  "name": "order.created",\n  "payload": {"s": "',
                    tail=b'"}\n}\n')
    done = run_measured(publish(daemon), daemon.workdir, feed)
    assert_refused(done, "publish", "larger than 10 MiB (so not one event)")
    assert done.fed < 64 * MIB


async def test_publish_streams_a_1gib_array(daemon: DaemonProcess) -> None:
    """1,000 events spread over 1 GiB of array (white space between them): all are sent,
    in memory that does not grow with the array."""
    event = b'{"name": "order.created", "payload": {"n": 1}}'
    padding = b" " * MIB
    count = 1000

    def feed() -> Iterator[bytes]:
        yield b"[" + event
        for n in range(1, count):
            yield padding + b"," + event.replace(b'"n": 1', b'"n": %d' % n)
        yield b" " * (GIB - (count - 1) * MIB) + b"]\n"

    done = run_measured(publish(daemon), daemon.workdir, feed())
    assert done.code == 0, done.stderr[-2000:]
    assert done.fed > GIB
    assert done.peak_kib < MEMORY_BOUND_KIB, f"peak RSS {done.peak_kib / 1024:.0f} MiB"
    async with ApiClient(daemon) as api:
        health = await eventually(lambda: api.request("GET", "/healthz"),
                                  lambda h: h["head"] == count)
        assert health["head"] == count


# --------------------------------------------------------- integrations --file


def integrations(d: DaemonProcess, *more: str) -> list[str]:
    return ["integrations", *more, "--config", str(d.config_path)]


def test_integration_file_of_dev_zero_is_refused_at_once(daemon: DaemonProcess) -> None:
    done = run_measured(integrations(daemon, "create", "z", "--file", "/dev/zero"),
                        daemon.workdir)
    assert_refused(done, "integrations", "/dev/zero: larger than 1,024 KiB", code=2)


def test_integration_file_from_an_endless_stdin_is_refused(daemon: DaemonProcess) -> None:
    done = run_measured(integrations(daemon, "create", "z", "--file", "-"), daemon.workdir,
                        repeated(b'{"id": "', total=GIB))
    assert_refused(done, "integrations", "larger than 1,024 KiB", code=2)
    assert done.fed < 64 * MIB


def test_integration_file_with_a_parameter_group_not_an_object(daemon: DaemonProcess) -> None:
    body = daemon.workdir / "body.json"
    for group in ("callback_parameters", "s3_parameters", "filter_conditions"):
        body.write_text(f'{{"id": "w1", "{group}": "not an object"}}')
        done = run_measured(integrations(daemon, "create", "--file", str(body), "--webhook",
                                         "http://127.0.0.1:9/x", "--entities", "order"),
                            daemon.workdir)
        assert_refused(done, "integrations", f"'{group}' must be an object", code=2)


def test_toml_nested_5000_deep_is_one_line(daemon: DaemonProcess) -> None:
    deep = daemon.workdir / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    done = run_measured(integrations(daemon, "create", "z", "--file", str(deep)),
                        daemon.workdir)
    assert_refused(done, "integrations", "nested too deeply", code=2)
    done = run_measured(["check-config", str(deep)], daemon.workdir)
    assert done.code == 2 and len(done.lines) == 1, done
    assert "nested too deeply" in done.lines[0]


async def test_ids_are_percent_encoded_in_paths(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        await api.webhook("w1", "http://127.0.0.1:9/x")
    for odd in ("w1/logs", "w1?x=1", "w1#frag", "w1/rejected_events", "../eventstream"):
        done = run_measured(integrations(daemon, "show", odd), daemon.workdir)
        assert done.code == 4, (odd, done)  # that id, which does not exist
        assert "HTTP 404 integration_not_found" in done.lines[-1], done.lines
    done = run_measured(integrations(daemon, "show", "w1"), daemon.workdir)
    assert done.code == 0, done


def test_check_config_takes_config_as_every_command_does(daemon: DaemonProcess) -> None:
    done = run_measured(["check-config", "--config", str(daemon.config_path)],
                        daemon.workdir)
    assert done.code == 0, done
    done = run_measured(["check-config", "--config", str(daemon.config_path),
                         str(daemon.workdir / "other.toml")], daemon.workdir)
    assert done.code == 2 and "give the file once" in done.lines[-1], done
