"""`POST /events`: parse, validate, append durably, answer.

Decisions:
- Bodies are `application/json` (one event or an array) or
  `application/x-ndjson` (one event per line); orjson parses both. Any other
  content type is read as JSON, so `curl -d @event.json` just works.
- Validation is hand-written rather than jsonschema: it runs for every event on
  the ingest hot path, and its messages name the event's index and field
  (`event 3: 'name' ...`). Unknown fields are refused, so a typo such as
  `playload` is caught instead of silently publishing an empty event.
- Each event's delivery body (`{"tenant","name","published_at","payload"}`,
  the bytes every sink sends) is encoded once, here, and stored as is.
- All or nothing: every event is validated and encoded before any is handed to
  the store, which appends a request's events in one atomic step.
- 200 only after the events are durably stored (LMDB: the group commit that
  holds them was fsync'd).
- Accepted means deliverable: an event is checked with the same rules the
  sinks apply when they send it. Its delivery body is encoded with the
  delivery encoder (orjson refuses nesting beyond 254 levels, which its own
  parser would accept up to 1,024); its id must be visible ASCII, because it
  becomes the `Idempotency-Key` header; names and tenants are matched in
  full (`fullmatch`: `$` would let a trailing newline through), and a tenant
  may not be `.` or `..`, because it becomes a segment of S3 keys.
- Bounded ingest: a request's bytes count against `server.max_inflight_bytes`
  from the moment they are read until the request is answered; a request
  that would exceed it gets 503 with `Retry-After` before its body is read
  (its declared length) or while it is read (chunked bodies). Large bodies
  are validated in chunks of `CHUNK_EVENTS` events with a yield to the event
  loop in between, so one 10 MiB body never stalls `/healthz` or other
  publishers, and only the encoded events (about the size of the input) stay
  in memory: the parsed objects of one chunk are dropped before the next.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ..model import NewEvent
from ..naming import MAX_ID, MAX_TENANT, valid_event_id, valid_name, valid_tenant
from ..storage.base import EventTooLarge, StoreFull, StoreUnavailable
from ..timeutil import format_utc, now_iso, parse_rfc3339
from .errors import ApiError
from .keys import DEFAULT_TENANT, INGEST_BUDGET, STORE

CHUNK_EVENTS = 2000  # events validated between two yields to the event loop
SMALL_BODY = 64 * 1024  # bodies up to this are validated without yielding
ALLOWED_FIELDS = frozenset({"name", "payload", "published_at", "tenant", "id"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines"})


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_event", message)


def _ndjson_chunks(body: bytes) -> Iterator[list[Any]]:
    """The raw event objects of an NDJSON body, `CHUNK_EVENTS` at a time."""
    chunk: list[Any] = []
    for line_no, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            chunk.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                400, "invalid_json", f"line {line_no}: not valid JSON ({exc})"
            ) from None
        if len(chunk) >= CHUNK_EVENTS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _json_chunks(body: bytes) -> Iterator[list[Any]]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({exc})") from None
    if not isinstance(parsed, list):
        yield [parsed]
        return
    for offset in range(0, len(parsed), CHUNK_EVENTS):
        yield parsed[offset:offset + CHUNK_EVENTS]


def raw_event_chunks(body: bytes, content_type: str) -> Iterator[list[Any]]:
    """The raw event objects in a request body, in chunks of at most `CHUNK_EVENTS`."""
    if content_type in NDJSON_TYPES:
        return _ndjson_chunks(body)
    return _json_chunks(body)


# Fast paths (the ingest hot path runs this per event; see bench/README.md):
# a published_at already in our canonical form is kept after a cheap check
# instead of parsed and re-formatted; names and tenants seen before skip their
# regex; missing ids come from one urandom call per request.
_CANONICAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_SEEN_CACHE_MAX = 4096
# value -> the same value: besides skipping the check, a large publish then holds
# one string per distinct name instead of one per event.
_seen_names: dict[str, str] = {}
_seen_tenants: dict[str, str] = {}


def _remember(cache: dict[str, str], value: str) -> str:
    if len(cache) >= _SEEN_CACHE_MAX:
        cache.clear()  # bounded: an attacker inventing names only costs regex checks
    cache[value] = value
    return value


def _normalized_time(value: Any) -> str:
    if isinstance(value, str) and _CANONICAL_TIME.match(value):
        datetime.fromisoformat(value)  # still a real date (no February 30th)
        return value
    return format_utc(parse_rfc3339(value))


def new_event_ids(count: int) -> list[str]:
    """`count` random (version 4) UUID strings from one urandom call."""
    raw = os.urandom(16 * count)
    ids = []
    for offset in range(0, 16 * count, 16):
        h = raw[offset:offset + 16].hex()
        variant = "89ab"[int(h[16], 16) & 3]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return ids


def _delivery_body(index: int, tenant: str, name: str, published_at: str,
                   payload: Any) -> bytes:
    """The exact bytes every sink will send, encoded once, here; what the encoder refuses
    could never be delivered and is refused now."""
    try:
        encoded = orjson.dumps({"tenant": tenant, "name": name, "published_at": published_at,
                                "payload": payload})
        # orjson's result keeps its whole output buffer (4 KiB at least): held for every
        # event of a large publish that is 4 KiB each, so keep an exact-size copy.
        return memoryview(encoded).tobytes()
    except orjson.JSONEncodeError as exc:
        if "Recursion" in str(exc):
            raise _bad(f"event {index}: 'payload' is nested too deeply to be delivered "
                       "(at most 250 levels)") from None
        raise _bad(f"event {index}: 'payload' cannot be encoded for delivery ({exc})") from None


def validate_event(index: int, raw: Any, default_tenant: str, now: str,
                   new_id: Callable[[], str] | None = None) -> NewEvent:
    """Check one event and pack it; raise a 400 naming the index and the field."""
    if not isinstance(raw, dict):
        raise _bad(f"event {index}: must be a JSON object")
    unknown = raw.keys() - ALLOWED_FIELDS
    if unknown:
        raise _bad(f"event {index}: unknown field '{sorted(unknown)[0]}'")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"event {index}: 'name' is required and must be a string")
    seen_name = _seen_names.get(name)
    if seen_name is None:
        if not valid_name(name):
            raise _bad(f"event {index}: 'name' must look like entity.action "
                       "(e.g. order.created)")
        seen_name = _remember(_seen_names, name)
    name = seen_name
    payload = raw.get("payload")
    if not isinstance(payload, dict):
        raise _bad(f"event {index}: 'payload' is required and must be an object")
    published_at = raw.get("published_at")
    if published_at is None:
        published_at = now
    else:
        try:
            published_at = _normalized_time(published_at)
        except (ValueError, OverflowError) as exc:
            raise _bad(f"event {index}: 'published_at' {exc}") from None
    tenant = raw.get("tenant", default_tenant)
    seen_tenant = _seen_tenants.get(tenant) if isinstance(tenant, str) else None
    if seen_tenant is None:
        if not isinstance(tenant, str) or not valid_tenant(tenant):
            raise _bad(f"event {index}: 'tenant' must be 1-{MAX_TENANT} letters, digits, '.', "
                       "'_' or '-' (and not '.' or '..')")
        seen_tenant = _remember(_seen_tenants, tenant)
    tenant = seen_tenant
    event_id = raw.get("id")
    if event_id is None:
        event_id = new_id() if new_id is not None else new_event_ids(1)[0]
    elif not isinstance(event_id, str) or not valid_event_id(event_id):
        raise _bad(f"event {index}: 'id' must be 1-{MAX_ID} visible ASCII characters "
                   "(it becomes the Idempotency-Key header)")
    return NewEvent(event_id, tenant, name,
                    _delivery_body(index, tenant, name, published_at, payload))


async def validate_body(body: bytes, content_type: str,
                        default_tenant: str) -> list[NewEvent]:
    """Parse and validate a whole body; large ones in chunks, yielding in between."""
    small = len(body) <= SMALL_BODY
    now = now_iso()
    packed: list[NewEvent] = []
    for chunk in raw_event_chunks(body, content_type):
        new_id = iter(new_event_ids(len(chunk))).__next__
        offset = len(packed)
        packed.extend(validate_event(offset + i, raw, default_tenant, now, new_id)
                      for i, raw in enumerate(chunk))
        if not small:
            await asyncio.sleep(0)  # let /healthz and other publishers in
    if not packed:
        raise ApiError(400, "invalid_event", "the request holds no events")
    return packed


async def publish_events(request: web.Request) -> web.Response:
    async with request.app[INGEST_BUDGET].body(request) as body:
        events = await validate_body(body, request.content_type, request.app[DEFAULT_TENANT])
        try:
            first, last = await request.app[STORE].append(events)
        except StoreFull as exc:
            raise ApiError(507, "insufficient_storage", str(exc)) from None
        except EventTooLarge as exc:
            raise ApiError(413, "payload_too_large", str(exc)) from None
        except StoreUnavailable as exc:
            raise ApiError(503, "unavailable", f"the events were not stored: {exc}",
                           headers={"Retry-After": "1"}) from None
    return web.json_response({"accepted": len(events), "first_seq": first, "last_seq": last})
