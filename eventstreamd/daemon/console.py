"""The web console's HTTP side: its static files under `/ui/`, and `GET /status`.

The console itself (`eventstreamd/console/`: HTML, CSS, JavaScript modules) is
package data; it talks to the configuration API and `/status` like any client,
with the API token, and never to internals.

Decisions:
- `/ui/` and its files need no token (auth.py lets `/ui` through): they hold
  no data. `GET /status` needs the token like the API; it answers the very
  snapshot the control socket's `status` gives (`StatusSampler.snapshot`), so
  a browser sees what the dashboard sees, rates included (the control server
  ticks the sampler once a second whether or not anyone is subscribed).
- The files are read once, when the app is built, into a fixed table of name
  -> bytes: a request can only name an entry of that table, so no path from
  a URL ever reaches the file system. `index.html` gets the API's base path
  (`server.base_path`) in a `<meta>` tag, HTML-escaped: the scripts read it
  from there, since an inline script would break the CSP.
- Cache: `Cache-Control: no-cache` and a content-hash `ETag` on every file,
  so a browser revalidates each load (a 304 costs one small request) and a
  new version is picked up at once, without versioned file names.
- Safety headers on every console file: a Content-Security-Policy that allows
  scripts, styles and connections from this origin only, no inline script or
  style, no framing, no `<base>`, and Trusted Types with no policy (the
  browser itself then refuses any sink that parses a string as HTML:
  the scripts build the page from elements and `textContent` only);
  `X-Content-Type-Options: nosniff`; `Referrer-Policy: no-referrer`.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web

from .errors import ApiError, Handler
from .status import StatusSampler

CONSOLE_PACKAGE = "eventstreamd.console"
PREFIX = "/ui"
INDEX = "index.html"
API_BASE_PLACEHOLDER = "{{api_base}}"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files(api_base: str) -> dict[str, StaticFile]:
    """Every console file by name; `index.html` with the API base path filled in."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files(CONSOLE_PACKAGE).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        if entry.name == INDEX:
            body = body.replace(API_BASE_PLACEHOLDER.encode(),
                                html.escape(api_base, quote=True).encode())
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    if INDEX not in files:
        raise RuntimeError(f"the web console's {INDEX} is missing from the package")
    return files


def _serve(files: dict[str, StaticFile]) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        found = files.get(request.match_info.get("name") or INDEX)
        if found is None:
            raise ApiError(404, "not_found", "no such file in the web console")
        headers = {**SECURITY_HEADERS, "ETag": found.etag}
        if found.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers={**headers,
                                                      "Content-Type": found.content_type})
    return serve


async def _redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently(f"{PREFIX}/")


def _status(sampler: StatusSampler) -> Handler:
    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(await sampler.snapshot()),
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})
    return status


def add_console_routes(app: web.Application, sampler: StatusSampler, api_base: str) -> None:
    """`GET /status` (token) and the console's files under `/ui/` (no token)."""
    serve = _serve(load_files(api_base))
    app.router.add_get("/status", _status(sampler))
    app.router.add_get(PREFIX, _redirect_to_index)
    app.router.add_get(f"{PREFIX}/", serve)
    app.router.add_get(PREFIX + "/{name:[A-Za-z0-9_.-]+}", serve)
