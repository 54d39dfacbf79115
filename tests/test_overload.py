"""Overload degrades, never kills: connection cap, descriptor exhaustion, slow and idle
clients, clients that leave mid-body. Real daemons, raw sockets on loopback.

Every wait is bounded (`WAIT`, or a count of bytes trickled); no assertion is about how
fast anything happens, only about what happens before a bound runs out.
"""

from __future__ import annotations

import json
import resource
import select
import shutil
import socket
import time
from urllib.parse import urlsplit

import aiohttp
import pytest

from eventstreamd.daemon.http_server import connection_cap
from tests.helpers.api import BASE, events
from tests.helpers.control import Line, control_path
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.store import read_all
from tests.helpers.wait import eventually

WAIT = 20.0  # seconds: the bound on every wait for something the daemon should do
TRICKLE = 0.3  # seconds between the bytes of a slow client
SLOW_BYTES = 40  # a slow client gives up after this many bytes (12 s at TRICKLE)
TOKEN_HEADER = "Authorization: Bearer test-token-0123456789\r\n"


def connect(d: DaemonProcess) -> socket.socket:
    url = urlsplit(d.url)
    return socket.create_connection((url.hostname, url.port), timeout=WAIT)


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (Content-Length framed), starting with `data` already read."""
    sock.settimeout(WAIT)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed inside the response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_daemon(sock: socket.socket, within: float = WAIT) -> bool:
    """Whether the daemon closes the connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def trickle(sock: socket.socket, data: bytes) -> bytes | None:
    """Send `data` a byte every TRICKLE seconds. b"" as soon as the daemon closes the
    connection; what it sent if it answers; None if every byte went out unanswered."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return b""
        readable, _, _ = select.select([sock], [], [], TRICKLE)
        if readable:
            try:
                return sock.recv(65536)
            except ConnectionResetError:
                return b""
    return None


async def healthz_status(d: DaemonProcess, refused: int | None = 503) -> int:
    """The status of /healthz on a new connection; what is not 200 must be `refused`
    (anything, when None)."""
    async with aiohttp.ClientSession() as fresh, fresh.get(d.url + "/healthz") as r:
        assert r.status in (200, refused) or refused is None, r.status
        return r.status


def assert_error_shape(headers: dict[str, str], body: bytes) -> dict[str, str]:
    parsed = json.loads(body)
    assert set(parsed) == {"error_code", "message", "request_id"}
    assert headers["x-request-id"] == parsed["request_id"]
    return parsed


def test_connection_cap_fits_the_open_file_limit() -> None:
    assert connection_cap(1024, 1_048_576) == 1024  # the configured cap
    assert connection_cap(1024, 1024) == 768  # a quarter kept for everything else
    assert connection_cap(1024, 256) == 192  # ... and at least 64
    assert connection_cap(5, 256) == 5
    assert connection_cap(1024, 40) == 1  # never 0: the daemon stays reachable


async def test_connections_over_the_cap_get_503_and_the_others_are_served(
        daemon_factory: Factory) -> None:
    d = daemon_factory({"server": {"max_connections": 5, "header_timeout": "60s",
                                   "idle_timeout": "60s"}})
    held: list[socket.socket] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(d.url + "/healthz") as r:  # connection 1, kept alive
            assert r.status == 200
        try:
            held = [connect(d) for _ in range(4)]  # connections 2-5, idle
            sixth = connect(d)
            status, headers, body = read_response(sixth)
            assert status == 503
            assert assert_error_shape(headers, body)["error_code"] == "unavailable"
            assert headers["retry-after"] == "1" and headers["connection"].lower() == "close"
            assert closed_by_daemon(sixth)
            sixth.close()
            # The admitted connections are served as before.
            async with session.post(d.url + "/events", json=events(2),
                                    headers=d.headers) as r:
                assert r.status == 200
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(held[0])[0] == 200
        finally:
            for sock in held:
                sock.close()
    # Slots free up as connections close.
    await eventually(lambda: healthz_status(d), lambda status: status == 200, within=WAIT,
                     every=0.1, what="/healthz served again")
    assert "connection limit reached" in d.log()


async def test_running_out_of_descriptors_degrades_and_recovers(
        daemon_factory: Factory) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:  # this test process holds 300 sockets
        if hard != resource.RLIM_INFINITY and hard < 1024:
            pytest.skip("the test needs 1024 open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    # Timeouts long enough that the idle connections stay for the whole test.
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("needs prlimit (util-linux)")
    d = daemon_factory({"server": {"header_timeout": "60s", "idle_timeout": "60s"}},
                       wrapper=[prlimit, "--nofile=256"])  # soft and hard; prlimit execs
    acked: list[tuple[int, int]] = []

    async def publish(session: aiohttp.ClientSession, n: int) -> int:
        async with session.post(d.url + "/events", json=events(n), headers=d.headers) as r:
            if r.status == 200:
                body = await r.json()
                acked.append((body["first_seq"], body["last_seq"]))
            else:
                assert_error_shape({k.lower(): v for k, v in r.headers.items()}, await r.read())
            return r.status

    idle: list[socket.socket] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as kept:
        assert await publish(kept, 10) == 200  # before; its connection stays open
        try:
            idle = [connect(d) for _ in range(300)]  # more than the daemon's 256 descriptors
            # The connection admitted before still works: publish and /healthz.
            assert await publish(kept, 10) == 200
            async with kept.get(d.url + "/healthz") as r:
                assert r.status == 200
            # A new connection is answered at once: 200, or 503 over the cap.
            async with aiohttp.ClientSession() as fresh:
                assert await publish(fresh, 5) in (200, 503)
                async with fresh.get(d.url + "/healthz") as r:
                    assert r.status in (200, 503)
            # The control socket still accepts, and the daemon lives on.
            client = await Line.connect(control_path(d))
            assert (await client.call("ping"))["ok"] is True
            await client.close()
            assert d.proc is not None and d.proc.poll() is None
        finally:
            for sock in idle:
                sock.close()
        # Descriptors free up: new connections are served again.
        await eventually(lambda: healthz_status(d, refused=None), lambda status: status == 200,
                         within=WAIT, every=0.1, what="/healthz served again")
        assert await publish(kept, 10) == 200  # after
    assert d.stop() == 0
    stored = {e.seq for e in await read_all(d.data_dir)}
    assert all(seq in stored for first, last in acked for seq in range(first, last + 1))
    assert sum(last - first + 1 for first, last in acked) >= 30
    log = d.log()
    assert "HTTP connection cap lowered to fit the open-file limit" in log
    assert "max_connections=192" in log  # 256 less the reserve of 64
    assert "Traceback" not in log


def test_slow_and_idle_connections_are_closed(daemon_factory: Factory) -> None:
    d = daemon_factory({"server": {"header_timeout": "1s", "idle_timeout": "1s"}})
    # Connected, never a byte: closed (the first request's headers count from connect).
    silent = connect(d)
    assert closed_by_daemon(silent)
    # Slowloris: a header byte every TRICKLE seconds, never finishing.
    slow = connect(d)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert trickle(slow, b"X-Slow: " + b"a" * SLOW_BYTES) == b""
    # Idle after a request (keep-alive): closed after idle_timeout.
    kept = connect(d)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(kept)[0] == 200
    assert closed_by_daemon(kept)
    for sock in (silent, slow, kept):
        sock.close()
    assert d.proc is not None and d.proc.poll() is None


def test_slow_headers_of_a_later_request_are_closed(daemon_factory: Factory) -> None:
    # A long idle timeout: what closes the connection is the header deadline, which
    # for a later request counts from its first byte.
    d = daemon_factory({"server": {"header_timeout": "1s", "idle_timeout": "60s"}})
    sock = connect(d)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    # Idle between requests for longer than header_timeout is fine...
    time.sleep(2.0)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    # ... a request whose headers trickle in is not.
    assert trickle(sock, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * SLOW_BYTES) == b""
    sock.close()


@pytest.mark.parametrize("path", ["/events", BASE])
def test_a_slow_body_gets_408(daemon_factory: Factory, path: str) -> None:
    d = daemon_factory({"server": {"body_timeout": "1s"}})
    sock = connect(d)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}"
                 "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n".encode())
    answer = trickle(sock, b"[" + b" " * SLOW_BYTES)
    assert answer, "the daemon neither answered nor closed"
    status, headers, body = read_response(sock, answer)
    assert status == 408
    assert assert_error_shape(headers, body)["error_code"] == "request_timeout"
    assert closed_by_daemon(sock)  # at once, not after draining the rest
    sock.close()
    after = connect(d)  # the daemon serves on
    after.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(after)[0] == 200
    after.close()
    assert "Traceback" not in d.log()


def test_a_client_leaving_mid_body_is_one_info_line(daemon: DaemonProcess) -> None:
    for path in ("/events", BASE):
        sock = connect(daemon)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     '[{"name": "order.created"'.encode())
        time.sleep(0.2)  # let the handler start reading the body
        sock.close()
    deadline = time.monotonic() + WAIT
    while daemon.log().count("client disconnected before the response") < 2:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    sock = connect(daemon)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()
    log = daemon.log()
    lines = [line for line in log.splitlines() if "client disconnected" in line]
    assert len(lines) == 2 and all(" INFO " in line for line in lines)
    assert "ERROR" not in log and "Traceback" not in log
