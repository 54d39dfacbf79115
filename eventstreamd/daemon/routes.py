"""The configuration API's HTTP face: the spec's operations under `{base_path}`.

Handlers only parse, call `IntegrationService`, and serialize; every rule lives
in the service so the control socket shares it.

Decisions:
- Bodies are read as JSON whatever the Content-Type says (like `POST /events`,
  so `curl -d` works), through the request-bytes budget (budget.py); an empty
  or malformed body is 400 `invalid_json`.
- Operations the spec documents without a response body (DELETE, `_retry`)
  answer 200 with an empty body.
- `_start`, `_stop` and `_retry` take no body; one sent anyway is ignored.
- Beside the seed's 12 operations, the extensions' (`schemas/extensions/`):
  `_rotate_secret`, whose body is optional (empty: a secret is generated),
  and the replays' (`_replay`, `replays`, `replays/{replay_id}`: replays.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError
from .integrations import IntegrationService
from .keys import INGEST_BUDGET, INTEGRATIONS, REPLAYS


def _service(request: web.Request) -> IntegrationService:
    return request.app[INTEGRATIONS]


def _id(request: web.Request) -> str:
    return request.match_info["integration_id"]


def _event_id(request: web.Request) -> str:
    return request.match_info["event_id"]


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda obj: orjson.dumps(obj).decode())


async def _body(request: web.Request, *, optional: bool = False) -> Any:
    """The JSON body; None for an empty one when the operation's body is optional."""
    async with request.app[INGEST_BUDGET].body(request) as raw:
        if not raw.strip():
            if optional:
                return None
            raise ApiError(400, "invalid_json",
                           "the request body is empty; expected a JSON object")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json",
                           f"the request body is not valid JSON ({exc})") from None


async def list_integrations(request: web.Request) -> web.Response:
    return _json({"integrations": await _service(request).list_integrations()})


async def register_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).create(await _body(request)))


async def get_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).get(_id(request)))


async def update_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).update(_id(request), await _body(request)))


async def delete_integration(request: web.Request) -> web.Response:
    await _service(request).delete(_id(request))
    return web.Response(status=200)


async def start_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).start(_id(request)))


async def stop_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).stop(_id(request)))


async def list_log_entries(request: web.Request) -> web.Response:
    return _json({"entries": await _service(request).logs(_id(request))})


async def list_rejected_events(request: web.Request) -> web.Response:
    return _json({"rejected_events": await _service(request).list_rejected(_id(request))})


async def get_rejected_event(request: web.Request) -> web.Response:
    return _json(await _service(request).get_rejected(_id(request), _event_id(request)))


async def delete_rejected_event(request: web.Request) -> web.Response:
    await _service(request).delete_rejected(_id(request), _event_id(request))
    return web.Response(status=200)


async def retry_rejected_event(request: web.Request) -> web.Response:
    await _service(request).retry_rejected(_id(request), _event_id(request))
    return web.Response(status=200)


async def rotate_signing_secret(request: web.Request) -> web.Response:
    return _json(await _service(request).rotate_secret(
        _id(request), await _body(request, optional=True)))


async def replay_integration(request: web.Request) -> web.Response:
    status, answer = await request.app[REPLAYS].replay(_id(request), await _body(request))
    response = _json(answer)
    response.set_status(status)
    return response


async def list_replays(request: web.Request) -> web.Response:
    return _json(await request.app[REPLAYS].list(_id(request)))


async def cancel_replay(request: web.Request) -> web.Response:
    return _json(await request.app[REPLAYS].cancel(_id(request),
                                                   request.match_info["replay_id"]))


def add_routes(app: web.Application, base_path: str) -> None:
    root = f"{base_path}/eventstream"
    one = f"{root}/{{integration_id}}"
    rejected = f"{one}/rejected_events/{{event_id}}"
    app.router.add_routes([
        web.get(root, list_integrations),
        web.post(root, register_integration),
        web.get(one, get_integration),
        web.patch(one, update_integration),
        web.delete(one, delete_integration),
        web.post(f"{one}/_start", start_integration),
        web.post(f"{one}/_stop", stop_integration),
        web.get(f"{one}/logs", list_log_entries),
        web.get(f"{one}/rejected_events", list_rejected_events),
        web.get(rejected, get_rejected_event),
        web.delete(rejected, delete_rejected_event),
        web.post(f"{rejected}/_retry", retry_rejected_event),
        web.post(f"{one}/_rotate_secret", rotate_signing_secret),
        web.post(f"{one}/_replay", replay_integration),
        web.get(f"{one}/replays", list_replays),
        web.delete(f"{one}/replays/{{replay_id}}", cancel_replay),
    ])
