"""`eventstreamd publish` against the real daemon: three input formats, progress, failures."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from eventstreamd.config import load_config
from eventstreamd.publisher import PublishError, iter_batches, iter_events
from tests.helpers.daemon import DaemonProcess


def run_publish(
    d: DaemonProcess, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventstreamd", "publish", "--config", str(d.config_path), *args],
        input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
        timeout=120,
    )


def head(d: DaemonProcess) -> int:
    import urllib.request
    with urllib.request.urlopen(f"{d.url}/healthz", timeout=10) as r:
        return int(orjson.loads(r.read())["head"])


@pytest.mark.parametrize("shape", ["object", "pretty_object", "array", "ndjson"])
def test_input_formats(shape: str) -> None:
    events = [{"name": "order.created", "payload": {"i": i}} for i in range(3)]
    data = {
        "object": orjson.dumps(events[0]),
        "pretty_object": orjson.dumps(events[0], option=orjson.OPT_INDENT_2),
        "array": orjson.dumps(events, option=orjson.OPT_INDENT_2),
        "ndjson": b"\n".join(orjson.dumps(e) for e in events) + b"\n",
    }[shape]
    parsed = list(iter_events(io.BytesIO(data)))
    assert parsed == (events[:1] if "object" in shape else events)


def test_batches_are_bounded() -> None:
    batches = list(iter_batches(iter([{"n": i} for i in range(2500)])))
    assert [count for count, _ in batches] == [1000, 1000, 500]


def test_bad_input_is_reported() -> None:
    with pytest.raises(PublishError, match="line 2"):
        list(iter_events(io.BytesIO(b'{"a": 1}\n{bad\n')))


def test_publish_file_and_stdin(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps({"name": "order.created", "payload": {"i": i}})
                                for i in range(2500)))
    result = run_publish(daemon, str(path))
    assert result.returncode == 0, result.stderr
    assert "published 2,500 events" in result.stderr
    result = run_publish(daemon, "-", stdin=b'[{"name": "a.b", "payload": {}}]')
    assert result.returncode == 0, result.stderr
    assert head(daemon) == 2501


def test_publish_failure_exits_non_zero(daemon: DaemonProcess) -> None:
    result = run_publish(daemon, "-", stdin=b'{"name": "nodot", "payload": {}}')
    assert result.returncode == 1 and "HTTP 400" in result.stderr and "'name'" in result.stderr
    result = run_publish(daemon, "--token", "wrong", "-", stdin=b'{"name": "a.b", "payload": {}}')
    assert result.returncode == 1 and "HTTP 401" in result.stderr
    daemon.stop()
    result = run_publish(daemon, "--url", daemon.url, "-", stdin=b'{"name": "a.b", "payload": {}}')
    assert result.returncode == 1 and "cannot reach the daemon" in result.stderr


def test_target_comes_from_runtime_file(daemon: DaemonProcess) -> None:
    from eventstreamd.apiclient import resolve_target
    assert resolve_target(load_config(daemon.config_path), None) == daemon.url
