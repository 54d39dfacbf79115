"""How the command-line clients (`publish`, `integrations`) find and talk to a running daemon.

Decisions:
- The daemon's address: `--url`, else the running daemon's
  `{data_dir}/runtime.json` (so `server.port = 0` works), else
  `server.host`/`server.port` from the config. A URL without a scheme is
  refused with the hint to add `http://`.
- The token: `--token`, `$EVENTSTREAMD_TOKEN`, `auth.tokens[0]` of the
  config, or the generated `{data_dir}/api_token`. Where it came from is
  kept, so a 401 (or no token at all) says where the client looked.
- stdlib `http.client` over one keep-alive connection: the clients are
  sequential, so asyncio would add nothing, and they start without loading
  the daemon, aiohttp, aiobotocore or jsonschema.
- Failures are `ClientError`s carrying the exit code scripts rely on:
  1 the daemon refused or failed the request, 3 the daemon cannot be reached,
  4 not found (404). (2 is the CLI's own: usage or config errors.)
"""

from __future__ import annotations

import http.client
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from .config import Config
from .runtime import read_runtime, token_file

TOKEN_ENV = "EVENTSTREAMD_TOKEN"

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4


class ClientError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class HttpError(ClientError):
    """The daemon answered with an error: its status, error_code and message."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {error_code}: {message}",
                         EXIT_NOT_FOUND if status == 404 else EXIT_FAILED)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Token:
    value: str | None
    source: str  # where it came from, or where the client looked


def resolve_token(config: Config, given: str | None = None) -> Token:
    if given:
        return Token(given, "--token")
    if os.environ.get(TOKEN_ENV):
        return Token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if config.auth.tokens:
        return Token(config.auth.tokens[0], f"auth.tokens in {config.source}")
    path = token_file(config)
    try:
        value = path.read_text().strip() or None
    except OSError:
        value = None
    if value:
        return Token(value, str(path))
    return Token(None, f"--token, ${TOKEN_ENV}, auth.tokens in {config.source} and {path}")


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        if "://" not in url:
            raise ClientError(f"bad daemon URL {url!r}: add the scheme, e.g. "
                              f"--url http://{url}", EXIT_USAGE)
        raise ClientError(f"bad daemon URL {url!r}: use http://HOST:PORT", EXIT_USAGE)
    return url.rstrip("/")


def resolve_target(config: Config, url: str | None = None) -> str:
    if url:
        return check_url(url)
    runtime = read_runtime(config)
    if runtime is not None:
        return runtime.url
    return f"http://{config.server.host}:{config.server.port}"


class HttpClient:
    """One keep-alive connection to the daemon."""

    def __init__(self, url: str, token: Token, timeout: float = 60.0,
                 api_base: str = "") -> None:
        self.url = check_url(url)
        parts = urllib.parse.urlsplit(self.url)
        conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                    else http.client.HTTPConnection)
        self._conn = conn_cls(parts.hostname or "", parts.port, timeout=timeout)
        self._prefix = parts.path
        self.token = token
        self.api_base = api_base  # the configuration API's path: {server.base_path}/eventstream
        self._headers: dict[str, str] = {}
        if token.value:
            self._headers["Authorization"] = f"Bearer {token.value}"

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            self._conn.request(method, self._prefix + path, body=body, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise Unreachable(f"cannot reach the daemon at {self.url}: {exc} (is it running? "
                              "--config or --url say where)") from None
        return response.status, data

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON request; the parsed answer (None when empty). Raises HttpError."""
        data = orjson.dumps(body) if body is not None else None
        return self._answer(*self.request(method, path, data))

    def call_ndjson(self, body: bytes) -> dict[str, Any]:
        """POST /events with an NDJSON body; the daemon's answer. Raises HttpError."""
        parsed = self._answer(*self.request("POST", "/events", body, "application/x-ndjson"))
        return parsed if isinstance(parsed, dict) else {}

    def _answer(self, status: int, raw: bytes) -> Any:
        """The parsed JSON answer (None when empty or not JSON), or HttpError."""
        parsed: Any = None
        if raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
        if status >= 400:
            raise self.error(status, parsed, raw)
        return parsed

    def error(self, status: int, parsed: Any, raw: bytes) -> HttpError:
        if isinstance(parsed, dict) and "error_code" in parsed:
            code, message = str(parsed["error_code"]), str(parsed.get("message", ""))
        else:
            code, message = "error", raw[:200].decode(errors="replace")
        if status == 401:
            message += (f" (token from {self.token.source})" if self.token.value
                        else f" (no token found; looked at {self.token.source})")
        return HttpError(status, code, message)

    def close(self) -> None:
        self._conn.close()
