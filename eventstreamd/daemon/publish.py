"""`POST /events`: read within the budget, validate and encode (ingest.py), store, answer.

Decisions:
- Bodies are `application/json` (one event or an array) or
  `application/x-ndjson` (one event per line). Any other content type is read
  as JSON, so `curl -d @event.json` just works.
- All or nothing: every event is validated and encoded before any is handed to
  the store, which appends a request's events in one atomic step.
- 200 only after the events are durably stored (LMDB: the group commit that
  holds them was fsync'd).
- Bounded ingest: a request's bytes count against `server.max_inflight_bytes`
  from the moment they are read until the request is answered (budget.py).
- Counted once per request for /metrics (`IngestStats`: events, bytes, the
  batch size, the answer's status), never per event.
- A valid W3C `traceparent` header is kept with the request's events (in the
  stored event's header, never in the delivery body) and continued by every
  webhook delivery of them; an invalid one is ignored (`trace.py`).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from ..storage.base import EventTooLarge, StoreFull, StoreUnavailable
from ..trace import HEADER as TRACEPARENT
from ..trace import parse_traceparent
from .errors import ApiError
from .ingest import validate_body
from .keys import DEFAULT_TENANT, INGEST_BUDGET, INGEST_STATS, STORE


async def publish_events(request: web.Request) -> web.Response:
    stats = request.app[INGEST_STATS]
    try:
        async with request.app[INGEST_BUDGET].body(request) as body:
            events = await validate_body(body, request.content_type,
                                         request.app[DEFAULT_TENANT],
                                         parse_traceparent(request.headers.get(TRACEPARENT)))
            try:
                first, last = await request.app[STORE].append(events)
            except StoreFull as exc:
                raise ApiError(507, "insufficient_storage", str(exc)) from None
            except EventTooLarge as exc:
                raise ApiError(413, "payload_too_large", str(exc)) from None
            except StoreUnavailable as exc:
                raise ApiError(503, "unavailable", f"the events were not stored: {exc}",
                               headers={"Retry-After": "1"}) from None
            size = len(body)
    except (ApiError, web.HTTPException) as exc:
        stats.refused(exc.status)
        raise
    stats.accepted(len(events), size)
    return web.Response(body=orjson.dumps({"accepted": len(events), "first_seq": first,
                                           "last_seq": last}),
                        content_type="application/json")
