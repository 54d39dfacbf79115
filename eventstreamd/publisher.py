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
- The daemon and the token are found as every client finds them
  (`apiclient.py`); a 401 says where the token came from.
- Progress goes to stderr once a second for large inputs; any failure prints
  the server's message, how many events were already accepted, and exits 1.
  The server names a bad event by its index in the batch; the message is
  rewritten to name it in the input (`line 1,502`, or `event 1,500` of an
  array), which is where the user has to look.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

from .apiclient import ClientError, HttpClient, HttpError, resolve_target, resolve_token
from .config import Config

BATCH_EVENTS = 1000
BATCH_BYTES = 4 * 1024 * 1024
PROGRESS_EVERY = 1.0


class PublishError(ClientError):
    """Publishing stopped part-way (exit code 1); what was accepted before is said."""


def iter_located(stream: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """Yield (where in the input, raw event) of a JSON object, JSON array or NDJSON stream."""
    first = stream.readline()
    line_no = 1
    while first and not first.strip():
        first = stream.readline()
        line_no += 1
    if not first:
        return
    if first.lstrip().startswith(b"["):
        document = _loads(first + stream.read(), "input")
        if not isinstance(document, list):
            raise PublishError("input starts with '[' but is not a JSON array")
        for index, event in enumerate(document):
            yield f"event {index:,} of the array", event
        return
    try:
        yield f"line {line_no:,}", orjson.loads(first)
    except orjson.JSONDecodeError:
        yield "the input", _loads(first + stream.read(), "input")  # one pretty-printed object
        return
    for number, line in enumerate(stream, start=line_no + 1):
        if line.strip():
            yield f"line {number:,}", _loads(line, f"line {number:,}")


def iter_events(stream: IO[bytes]) -> Iterator[Any]:
    """Yield the raw event objects of a JSON object, JSON array or NDJSON stream."""
    for _, event in iter_located(stream):
        yield event


def _loads(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PublishError(f"{where}: not valid JSON ({exc})") from None


def iter_batches(events: Iterator[Any]) -> Iterator[tuple[int, bytes]]:
    for count, body, _ in iter_located_batches(("", event) for event in events):
        yield count, body


def iter_located_batches(
        located: Iterator[tuple[str, Any]]) -> Iterator[tuple[int, bytes, list[str]]]:
    """NDJSON batches of at most BATCH_EVENTS events / BATCH_BYTES bytes, with where each
    event is in the input."""
    lines: list[bytes] = []
    where: list[str] = []
    size = 0
    for label, event in located:
        line = orjson.dumps(event)
        if lines and (len(lines) >= BATCH_EVENTS or size + len(line) > BATCH_BYTES):
            yield len(lines), b"\n".join(lines), where
            lines, where, size = [], [], 0
        lines.append(line)
        where.append(label)
        size += len(line) + 1
    if lines:
        yield len(lines), b"\n".join(lines), where


_EVENT_INDEX = re.compile(r"^event (\d+): ")


def _in_input(message: str, where: list[str]) -> str:
    """The server's `event N: ...` (N within the batch) as where the event is in the input."""
    match = _EVENT_INDEX.match(message)
    if match is None or int(match.group(1)) >= len(where) or not where[int(match.group(1))]:
        return message
    return f"{where[int(match.group(1))]}: {message[match.end():]}"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def publish(
    config: Config,
    stream: IO[bytes],
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    progress: IO[str] = sys.stderr,
) -> int:
    """Send every event; return how many were accepted. Raises ClientError when the
    daemon cannot be addressed (a bad --url: exit code 2), PublishError on failure."""
    client = HttpClient(resolve_target(config, url), resolve_token(config, token), timeout)
    accepted = 0
    started = last_report = time.monotonic()
    first_seq = last_seq = None
    try:
        for count, body, where in iter_located_batches(iter_located(stream)):
            try:
                result = client.call_ndjson(body)
            except HttpError as exc:
                raise PublishError(
                    f"HTTP {exc.status}: {_in_input(exc.message, where)} "
                    f"({plural(accepted, 'event')} accepted before this batch of {count:,})"
                ) from None
            except ClientError as exc:
                raise PublishError(
                    f"{exc} ({plural(accepted, 'event')} accepted before this batch of "
                    f"{count:,})") from None
            accepted += int(result.get("accepted", count))
            first_seq = first_seq if first_seq is not None else result.get("first_seq")
            last_seq = result.get("last_seq", last_seq)
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                rate = accepted / max(now - started, 1e-9)
                print(f"published {plural(accepted, 'event')} ({rate:,.0f}/s)", file=progress,
                      flush=True)
                last_report = now
    finally:
        client.close()
    elapsed = max(time.monotonic() - started, 1e-9)
    seqs = f", seq {first_seq}..{last_seq}" if accepted else ""
    print(f"published {plural(accepted, 'event')} in {elapsed:.2f}s{seqs}", file=progress,
          flush=True)
    return accepted
