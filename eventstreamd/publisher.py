"""`eventstreamd publish`: send events from a file or stdin to a running daemon.

Decisions:
- Input is one JSON object, a JSON array, or NDJSON, told apart by content:
  `[` starts an array; otherwise lines are read one by one as NDJSON, and if
  the first line is not a whole JSON value the input is parsed as one
  (pretty-printed) object. NDJSON is streamed, so a file of any size is sent
  in constant memory.
- Events go out as NDJSON batches (at most `BATCH_EVENTS` events or
  `BATCH_BYTES` bytes) over one keep-alive connection (stdlib http.client: the
  command is sequential, so asyncio would add nothing).
- The daemon's address comes from `--url`, else the running daemon's
  `runtime.json` in the configured data dir, else `server.host`/`server.port`;
  the token from `--token`, `$EVENTSTREAMD_TOKEN`, `auth.tokens[0]` or the
  generated `{data_dir}/api_token`.
- Progress goes to stderr once a second for large inputs; any failure prints
  the server's message, how many events were already accepted, and exits 1.
"""

from __future__ import annotations

import http.client
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

import orjson

from .config import Config
from .runtime import read_runtime, read_token

BATCH_EVENTS = 1000
BATCH_BYTES = 4 * 1024 * 1024
PROGRESS_EVERY = 1.0


class PublishError(Exception):
    pass


def iter_events(stream: IO[bytes]) -> Iterator[Any]:
    """Yield the raw event objects of a JSON object, JSON array or NDJSON stream."""
    first = stream.readline()
    while first and not first.strip():
        first = stream.readline()
    if not first:
        return
    if first.lstrip().startswith(b"["):
        document = _loads(first + stream.read(), "input")
        if not isinstance(document, list):
            raise PublishError("input starts with '[' but is not a JSON array")
        yield from document
        return
    try:
        yield orjson.loads(first)
    except orjson.JSONDecodeError:
        yield _loads(first + stream.read(), "input")  # one pretty-printed object
        return
    for line_no, line in enumerate(stream, start=2):
        if line.strip():
            yield _loads(line, f"line {line_no}")


def _loads(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PublishError(f"{where}: not valid JSON ({exc})") from None


def iter_batches(events: Iterator[Any]) -> Iterator[tuple[int, bytes]]:
    lines: list[bytes] = []
    size = 0
    for event in events:
        line = orjson.dumps(event)
        if lines and (len(lines) >= BATCH_EVENTS or size + len(line) > BATCH_BYTES):
            yield len(lines), b"\n".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        yield len(lines), b"\n".join(lines)


def resolve_target(config: Config, url: str | None) -> str:
    if url:
        return url
    runtime = read_runtime(config)
    if runtime and isinstance(runtime.get("url"), str):
        return str(runtime["url"])
    return f"http://{config.server.host}:{config.server.port}"


class _Client:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PublishError(f"bad daemon URL {url!r}")
        conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                    else http.client.HTTPConnection)
        self._conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
        self._url = url
        self._headers = {"Content-Type": "application/x-ndjson"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def post(self, body: bytes) -> dict[str, Any]:
        try:
            self._conn.request("POST", "/events", body=body, headers=self._headers)
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise PublishError(f"cannot reach the daemon at {self._url}: {exc}") from None
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = {}
        if response.status != 200:
            message = parsed.get("message") if isinstance(parsed, dict) else None
            raise PublishError(f"HTTP {response.status}: {message or data[:200]!r}")
        return parsed if isinstance(parsed, dict) else {}

    def close(self) -> None:
        self._conn.close()


def publish(
    config: Config,
    stream: IO[bytes],
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    progress: IO[str] = sys.stderr,
) -> int:
    """Send every event; return how many were accepted. Raises PublishError on failure."""
    client = _Client(resolve_target(config, url), token or read_token(config), timeout)
    accepted = 0
    started = last_report = time.monotonic()
    first_seq = last_seq = None
    try:
        for count, body in iter_batches(iter_events(stream)):
            try:
                result = client.post(body)
            except PublishError as exc:
                raise PublishError(
                    f"{exc} ({accepted} events were accepted before this batch of {count})"
                ) from None
            accepted += int(result.get("accepted", count))
            first_seq = first_seq if first_seq is not None else result.get("first_seq")
            last_seq = result.get("last_seq", last_seq)
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                rate = accepted / max(now - started, 1e-9)
                print(f"published {accepted} events ({rate:,.0f}/s)", file=progress, flush=True)
                last_report = now
    finally:
        client.close()
    elapsed = max(time.monotonic() - started, 1e-9)
    seqs = f", seq {first_seq}..{last_seq}" if accepted else ""
    print(f"published {accepted} events in {elapsed:.2f}s{seqs}", file=progress, flush=True)
    return accepted
