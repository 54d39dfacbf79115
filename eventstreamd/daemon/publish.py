"""`POST /events`: parse, validate, append durably, answer.

Decisions:
- Bodies are `application/json` (one event or an array) or
  `application/x-ndjson` (one event per line); orjson parses both. Any other
  content type is read as JSON, so `curl -d @event.json` just works.
- Validation is hand-written rather than jsonschema: it runs for every event on
  the ingest hot path, and its messages name the event's index and field
  (`event 3: 'name' ...`). Unknown fields are refused, so a typo such as
  `playload` is caught instead of silently publishing an empty event.
- All or nothing: every event is validated and packed before any is handed to
  the writer, and the writer appends a request's events in one job.
- 200 only after the group commit that holds the events is fsync'd.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ..storage.lmdb_store import LmdbStore, StoreFull
from ..storage.records import PackedEvent, pack_event
from ..storage.writer import WriterClosed
from ..timeutil import format_utc, now_iso, parse_rfc3339
from .errors import ApiError

STORE = web.AppKey("store", LmdbStore)
DEFAULT_TENANT = web.AppKey("default_tenant", str)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_NAME = 256
MAX_TENANT = 128
MAX_ID = 128
ALLOWED_FIELDS = frozenset({"name", "payload", "published_at", "tenant", "id"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines"})


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_event", message)


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """The list of raw event objects in a request body."""
    if content_type in NDJSON_TYPES:
        events = []
        for line_no, line in enumerate(body.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400, "invalid_json", f"line {line_no}: not valid JSON ({exc})"
                ) from None
        return events
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({exc})") from None
    if isinstance(parsed, list):
        return parsed
    return [parsed]


# Fast paths (the ingest hot path runs this per event; see bench/README.md):
# a published_at already in our canonical form is kept after a cheap check
# instead of parsed and re-formatted; names and tenants seen before skip their
# regex; missing ids come from one urandom call per request.
_CANONICAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_SEEN_CACHE_MAX = 4096
_seen_names: set[str] = set()
_seen_tenants: set[str] = set()


def _remember(cache: set[str], value: str) -> None:
    if len(cache) >= _SEEN_CACHE_MAX:
        cache.clear()  # bounded: an attacker inventing names only costs regex checks
    cache.add(value)


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


def validate_event(index: int, raw: Any, default_tenant: str, now: str,
                   new_id: Callable[[], str] | None = None) -> PackedEvent:
    """Check one event and pack it; raise a 400 naming the index and the field."""
    if not isinstance(raw, dict):
        raise _bad(f"event {index}: must be a JSON object")
    unknown = raw.keys() - ALLOWED_FIELDS
    if unknown:
        raise _bad(f"event {index}: unknown field '{sorted(unknown)[0]}'")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"event {index}: 'name' is required and must be a string")
    if name not in _seen_names:
        if len(name) > MAX_NAME or not NAME_PATTERN.match(name):
            raise _bad(f"event {index}: 'name' must look like entity.action "
                       "(e.g. order.created)")
        _remember(_seen_names, name)
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
    if not isinstance(tenant, str) or tenant not in _seen_tenants:
        if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT \
                or not TENANT_PATTERN.match(tenant):
            raise _bad(f"event {index}: 'tenant' must be 1-{MAX_TENANT} letters, digits, '.', "
                       "'_' or '-'")
        _remember(_seen_tenants, tenant)
    event_id = raw.get("id")
    if event_id is None:
        event_id = new_id() if new_id is not None else new_event_ids(1)[0]
    elif not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID:
        raise _bad(f"event {index}: 'id' must be a non-empty string of at most {MAX_ID} "
                   "characters")
    try:
        return pack_event(event_id, tenant, name, published_at, payload)
    except (ValueError, OverflowError, TypeError) as exc:
        # msgpack refuses integers beyond 64 bits and over-deep nesting.
        raise _bad(f"event {index}: 'payload' cannot be stored ({exc})") from None


def validate_events(raw_events: list[Any], default_tenant: str) -> list[PackedEvent]:
    if not raw_events:
        raise ApiError(400, "invalid_event", "the request holds no events")
    now = now_iso()
    new_id = iter(new_event_ids(len(raw_events))).__next__
    return [validate_event(i, raw, default_tenant, now, new_id)
            for i, raw in enumerate(raw_events)]


async def publish_events(request: web.Request) -> web.Response:
    body = await request.read()
    raw_events = parse_body(body, request.content_type)
    events = validate_events(raw_events, request.app[DEFAULT_TENANT])
    try:
        first, last = await request.app[STORE].append(events)
    except StoreFull as exc:
        raise ApiError(507, "insufficient_storage", str(exc)) from None
    except WriterClosed:
        raise ApiError(503, "unavailable", "the daemon is shutting down") from None
    return web.json_response({"accepted": len(events), "first_seq": first, "last_seq": last})
