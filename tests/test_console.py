"""The web console's HTTP side against a real daemon: `/ui/` and its files (public, with
the CSP and cache headers), and `GET /status` (the control socket's snapshot, behind the
token). What the console does in a browser is tests/test_console_browser.py."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from multidict import CIMultiDict

from eventstreamd.daemon.console import CONTENT_SECURITY_POLICY
from tests.helpers.api import ApiClient, events
from tests.helpers.control import status as control_status
from tests.helpers.daemon import DaemonProcess, Factory

CONSOLE = resources.files("eventstreamd.console")
MODULES = sorted(p.name for p in CONSOLE.iterdir() if p.name.endswith(".js"))


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str],
                                                                              bytes]:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers or {}, allow_redirects=False) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_the_console_is_served_without_a_token_with_its_safety_headers(
        daemon: DaemonProcess) -> None:
    code, headers, body = await fetch(daemon.url + "/ui/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == "'self'" and policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and policy["connect-src"] == "'self'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache" and headers["ETag"]
    # The API's base path reaches the scripts through a meta tag, not an inline script.
    assert b'<meta name="eventstreamd-api" content="/api/v1/org/integrations/eventstream">' in body
    assert not re.search(rb"<script(?![^>]*\bsrc=)", body), "no inline script"
    for name in MODULES:
        code, headers, _ = await fetch(f"{daemon.url}/ui/{name}")
        assert code == 200, name
        assert headers["Content-Type"] == "text/javascript; charset=utf-8", name
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    code, headers, _ = await fetch(daemon.url + "/ui/console.css")
    assert code == 200 and headers["Content-Type"].startswith("text/css")


async def test_a_new_version_is_picked_up_and_an_unchanged_one_costs_a_304(
        daemon: DaemonProcess) -> None:
    _, headers, _ = await fetch(daemon.url + "/ui/app.js")
    code, again, body = await fetch(daemon.url + "/ui/app.js",
                                    {"If-None-Match": headers["ETag"]})
    assert code == 304 and body == b"" and again["ETag"] == headers["ETag"]
    code, _, body = await fetch(daemon.url + "/ui/app.js", {"If-None-Match": '"older"'})
    assert code == 200 and body


async def raw_get(daemon: DaemonProcess, path: str) -> bytes:
    """A GET with the path exactly as given (an HTTP client would resolve its dot segments)."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    stream = await anyio.connect_tcp(host, int(port))
    async with stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                          .encode())
        answer = b""
        with anyio.fail_after(10):
            while True:
                try:
                    answer += await stream.receive()
                except anyio.EndOfStream:
                    return answer


async def test_only_the_console_files_are_public(daemon: DaemonProcess) -> None:
    code, headers, _ = await fetch(daemon.url + "/ui")
    assert code == 301 and headers["Location"] == "/ui/"
    for path in ("/ui/no-such.js", "/ui/__init__.py", "/ui/..%2fstatus", "/ui/../status",
                 "/ui/%2e%2e/status", "/ui/x/../../status", "/ui//status", "/ui/./index.html"):
        answer = await raw_get(daemon, path)
        status_line, _, body = answer.partition(b"\r\n\r\n")
        assert status_line.startswith((b"HTTP/1.1 401", b"HTTP/1.1 404")), (path, status_line)
        assert b'"head"' not in body and b"error_code" in body, path


async def test_a_base_path_is_escaped_into_the_page(daemon_factory: Factory) -> None:
    d = daemon_factory({"server": {"base_path": '/api/"x"<y>'}})
    _, _, body = await fetch(d.url + "/ui/")
    assert b'content="/api/&quot;x&quot;&lt;y&gt;/eventstream"' in body


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}])
async def test_status_needs_the_token(daemon: DaemonProcess, headers: dict[str, str]) -> None:
    code, response_headers, body = await fetch(daemon.url + "/status", headers)
    assert code == 401 and b'"error_code":"unauthorized"' in body.replace(b" ", b"")
    assert response_headers["X-Request-Id"]


async def test_status_is_the_control_sockets_snapshot(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        await api.webhook("w1", "http://127.0.0.1:9/refused")
        await api.publish(events(3))
    code, headers, body = await fetch(daemon.url + "/status", daemon.headers)
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    over_http: dict[str, Any] = orjson.loads(body)
    over_socket = await control_status(daemon)
    assert set(over_http) == set(over_socket)
    assert over_http["head"] == over_socket["head"] == 3
    assert [set(i) for i in over_http["integrations"]] == [
        set(i) for i in over_socket["integrations"]]
    assert over_http["integrations"][0]["id"] == "w1"


def test_every_module_the_console_imports_is_shipped() -> None:
    """A missing file would only show as a blank page in a browser."""
    names = {p.name for p in CONSOLE.iterdir()}
    assert "index.html" in names and "console.css" in names and "app.js" in names
    for name in MODULES:
        for imported in re.findall(r'from "\./([\w.-]+)"', CONSOLE.joinpath(name).read_text()):
            assert imported in names, f"{name} imports {imported}, which is not shipped"


def test_no_script_turns_text_into_markup() -> None:
    """Daemon data goes in as text: none of the markup sinks appears in the console's code
    (the CSP's Trusted Types would refuse them at run time as well)."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                       r"new Function|setAttribute\(\s*[\"']on|srcdoc")
    for name in MODULES:
        found = sinks.findall(CONSOLE.joinpath(name).read_text())
        assert not found, f"{name} uses {found}"
