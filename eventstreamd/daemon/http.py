"""The aiohttp application: middlewares, the plain routes, and where the API plugs in.

Decisions:
- Middleware order: errors outermost (so even auth failures and unknown
  routes get the JSON error body and `X-Request-Id`), then auth.
- `client_max_size` is `server.max_body`: aiohttp refuses larger bodies with
  413 before they are read into memory; header limits go to the HTTP parser.
- `X-Request-Id` on successful responses too, set by the error middleware.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..schemas.validation import spec_text
from ..storage.lmdb_store import LmdbStore
from .api import add_routes
from .auth import TOKENS, auth_middleware
from .budget import INGEST_BUDGET, BodyBudget
from .contracts import SinkControl
from .errors import MAX_BODY, error_middleware
from .integrations import IntegrationService
from .publish import DEFAULT_TENANT, STORE, publish_events

CONFIG = web.AppKey("config", Config)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "head": request.app[STORE].head})


async def openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=spec_text(), content_type="application/yaml")


def build_app(
    config: Config, store: LmdbStore, tokens: tuple[str, ...], sinks: SinkControl
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=config.server.max_body,
    )
    app[CONFIG] = config
    app[STORE] = store
    app[TOKENS] = tokens
    app[MAX_BODY] = config.server.max_body
    app[DEFAULT_TENANT] = config.tenant
    app[INGEST_BUDGET] = BodyBudget(config.server.max_inflight_bytes, config.server.max_body)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    app.router.add_post("/events", publish_events)
    service = IntegrationService(store, config, sinks)
    service.register_stored_secrets()  # before any request or log line can show them
    add_routes(app, service, config.server.base_path)
    return app
