"""Fuzz the control socket of a real daemon: malformed messages get an answer, never a crash."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.daemon import DaemonProcess

EXAMPLES = int(os.environ.get("EVENTSTREAMD_FUZZ_EXAMPLES", "200"))
OPS = ["ping", "status", "subscribe", "unsubscribe", "list", "get", "logs", "rejected",
       "rejected_event", "start", "stop", "retry_rejected", "delete_rejected", "nope", ""]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10)
requests = st.fixed_dictionaries(
    {}, optional={"op": st.sampled_from(OPS) | values, "id": values,
                  "integration_id": st.sampled_from(["w1", "nope", "../x", ""]) | values,
                  "event_id": st.text(max_size=40) | values, "extra": values})
lines = st.one_of(
    requests.map(orjson.dumps),
    # Blank lines are skipped by the protocol (like NDJSON), so they get no answer.
    st.binary(max_size=200).filter(lambda b: b"\n" not in b and b.strip() != b""),
    values.map(orjson.dumps),
)


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(Path(tmp_path_factory.mktemp("cfuzz")), {"log": {"level": "info"}}).start()
    yield d
    d.kill()


class Conn:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def ask(self, line: bytes) -> dict[str, object]:
        self.sock.sendall(line + b"\n")
        while True:  # bounded by the socket timeout; skips status pushes
            reply = json.loads(self.file.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def conn(fuzz_daemon: DaemonProcess) -> Iterator[Conn]:
    c = Conn(fuzz_daemon.data_dir / "control.sock")
    yield c
    c.close()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(line=lines)
def test_every_line_gets_an_answer(conn: Conn, line: bytes) -> None:
    reply = conn.ask(line)
    assert isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        error = reply["error"]
        assert isinstance(error, dict) and error["error_code"] != "internal_error", reply


def test_daemon_still_serves_after_the_fuzz(fuzz_daemon: DaemonProcess, conn: Conn) -> None:
    assert conn.ask(b'{"op": "ping", "id": 1}')["ok"] is True
    fresh = Conn(fuzz_daemon.data_dir / "control.sock")
    try:
        assert fresh.ask(b'{"op": "list"}')["ok"] is True
    finally:
        fresh.close()
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None
