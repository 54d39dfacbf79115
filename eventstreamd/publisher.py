"""`eventstreamd publish`: send events from a file or stdin to a running daemon.

Decisions:
- Input is one JSON object, a JSON array, or NDJSON, told apart by content:
  `[` starts an array; otherwise lines are read one by one as NDJSON, and if
  the first line is not a whole JSON value the input is parsed as one
  (pretty-printed) object. NDJSON and arrays are streamed (an array element
  by element, with the stdlib decoder's `raw_decode`), so an input of any
  size is sent in memory bounded by one event and one batch.
- Nothing is read without limit: one event — an NDJSON line, an array
  element, the single object — may be at most `server.max_body` of the
  config (10 MiB by default; a larger one could not be sent in one request
  anyway). Past that, publish stops with one line and exit 1 without
  reading further, so `/dev/urandom`, a 1 GiB line or a binary file end
  quickly and in bounded memory.
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

import codecs
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import orjson

from .apiclient import ClientError, HttpClient, HttpError, resolve_target, resolve_token
from .config import Config

BATCH_EVENTS = 1000
BATCH_BYTES = 4 * 1024 * 1024
PROGRESS_EVERY = 1.0
DEFAULT_EVENT_LIMIT = 10 * 1024 * 1024  # server.max_body's default
MIN_EVENT_LIMIT = 64 * 1024
ARRAY_CHUNK = 1024 * 1024
HEAD = 64 * 1024  # read to tell an array from NDJSON


class PublishError(ClientError):
    """Publishing stopped part-way (exit code 1); what was accepted before is said."""


def iter_located(stream: IO[bytes],
                 limit: int = DEFAULT_EVENT_LIMIT) -> Iterator[tuple[str, Any]]:
    """Yield (where in the input, raw event) of a JSON object, JSON array or NDJSON stream,
    reading at most about `limit` bytes (one event) ahead: a line, an array element or
    a single document larger than that is refused, and nothing is read past it."""
    # The start in pieces of HEAD bytes: an array may be all on one line, of any length.
    first, line_no = stream.readline(HEAD), 1
    while first and not first.strip():
        line_no += first.endswith(b"\n")
        first = stream.readline(HEAD)
    if not first:
        return
    if first.lstrip().startswith(b"["):
        yield from _array_elements(stream, first, limit)
        return
    if not first.endswith(b"\n"):  # the rest of the first line
        first += stream.readline(limit + 2 - len(first))
        if len(first.rstrip(b"\r\n")) > limit:
            raise _too_long(line_no, limit)
    try:
        yield f"line {line_no:,}", orjson.loads(first)
    except orjson.JSONDecodeError:
        # Not a whole value on its line: one pretty-printed object, read up to the limit.
        document = first + stream.read(limit + 1 - len(first))
        if len(document) > limit:
            raise PublishError(
                f"line {line_no:,} is not a whole JSON value (so not NDJSON), and the input "
                f"is larger than {_size(limit)} (so not one event): is it JSON at all?"
            ) from None
        yield "the input", _loads(document, "input")
        return
    number = line_no
    while line := _readline(stream, limit, number + 1):
        number += 1
        if line.strip():
            yield f"line {number:,}", _loads(line, f"line {number:,}")


def _readline(stream: IO[bytes], limit: int, number: int) -> bytes:
    """One line of at most `limit` bytes (b"" at the end), else PublishError."""
    line = stream.readline(limit + 2)  # the line break may follow
    if len(line.rstrip(b"\r\n")) > limit:
        raise _too_long(number, limit)
    return line


def _too_long(number: int, limit: int) -> PublishError:
    return PublishError(f"line {number:,} is longer than {_size(limit)}: one event may be at "
                        "most server.max_body; nothing more was read")


_BLANK = re.compile(r"[ \t\r\n]*")  # a run of JSON white space (faster than [^...])


def _after_blank(text: str, position: int = 0) -> int:
    """Where the run of JSON white space at `position` ends (`_BLANK` matches everywhere,
    if only the empty run)."""
    found = _BLANK.match(text, position)
    return found.end() if found is not None else position


def _array_elements(stream: IO[bytes], head: bytes,
                    limit: int) -> Iterator[tuple[str, Any]]:
    """The elements of a JSON array, parsed one at a time (the stdlib decoder's
    `raw_decode` from a position), holding at most one element and one chunk."""
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    utf8 = codecs.getincrementaldecoder("utf-8")()

    def more() -> str | None:
        try:
            data = stream.read(ARRAY_CHUNK)
            return utf8.decode(data, final=not data) if data else None
        except UnicodeDecodeError:
            raise PublishError("the JSON array is not valid UTF-8") from None

    buffer, eof = _decoded(utf8, head), False
    position = buffer.index("[") + 1
    index, want_value = 0, True
    while True:
        position = _after_blank(buffer, position)
        if position == len(buffer):  # nothing but white space left in the buffer
            chunk = None if eof else more()
            if chunk is None:
                raise PublishError("the JSON array is not closed: the input ended")
            buffer, position = chunk, 0
            continue
        char = buffer[position]
        where = f"event {index:,} of the array"
        if not want_value or (char == "]" and index == 0):
            if char == "]":
                _only_blank_after(buffer[position + 1:], more)
                return
            if want_value or char != ",":
                raise PublishError(f"{where}: not valid JSON (expected ',' or ']' after "
                                   f"event {index - 1:,})")
            position, want_value = position + 1, True
            continue
        while True:
            failure: json.JSONDecodeError | None = None
            try:
                value, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as exc:
                failure = exc
            # A value that reaches the end of the buffer may go on (a number) or be cut.
            if failure is None and (end < len(buffer) or eof):
                break
            if eof:
                raise PublishError(f"{where}: not valid JSON ({failure})")
            if len(buffer) - position > limit:
                raise PublishError(f"{where} is larger than {_size(limit)} (one event may be "
                                   "at most server.max_body), or not valid JSON; nothing "
                                   "more was read")
            chunk = more()
            if chunk is None:
                eof = True
            else:
                buffer, position = buffer[position:] + chunk, 0
        if end - position > limit:
            raise PublishError(f"{where} is larger than {_size(limit)}: one event may be at "
                               "most server.max_body")
        yield where, value
        position, index, want_value = end, index + 1, False


def _decoded(utf8: codecs.IncrementalDecoder, data: bytes) -> str:
    try:
        return utf8.decode(data)
    except UnicodeDecodeError:
        raise PublishError("the JSON array is not valid UTF-8") from None


def _only_blank_after(rest: str, more: Callable[[], str | None]) -> None:
    """After the array's `]` only white space may follow (read in chunks, not kept)."""
    while True:
        if _after_blank(rest) != len(rest):
            raise PublishError("the input goes on after the JSON array's closing ']'")
        chunk = more()
        if chunk is None:
            return
        rest = chunk


def _no_constant(name: str) -> Any:
    raise PublishError(f"{name} is not a JSON number (the JSON standard has no NaN or "
                       "Infinity)")


def _size(limit: int) -> str:
    return f"{limit / (1 << 20):g} MiB" if limit >= 1 << 20 else f"{limit:,} bytes"


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
        try:
            line = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # an integer past 64 bits, a lone surrogate
            raise PublishError(f"{label}: cannot be sent as JSON ({exc})") from None
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
        located = iter_located(stream, max(config.server.max_body, MIN_EVENT_LIMIT))
        for count, body, where in iter_located_batches(located):
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
