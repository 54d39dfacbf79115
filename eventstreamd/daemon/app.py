"""The aiohttp application: middlewares, the plain routes, and where the API plugs in.

Decisions:
- Middleware order: errors outermost (so even auth failures and unknown
  routes get the JSON error body and `X-Request-Id`), then auth.
- `client_max_size` is `server.max_body` (bodies are read through the
  request-bytes budget, which applies it to decoded bytes); header limits go
  to the HTTP parser.
- `X-Request-Id` on successful responses too, set by the error middleware.
- The app is built from what the lifecycle built once (store, service,
  tokens, the metrics sources); it creates nothing long-lived of its own.
- `/healthz` and `/readyz` need no token; `/metrics` needs one unless
  `metrics.public` (see metrics.py). The web console (`/ui/`, no token) and
  `/status` (token) come from console.py.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..schemas.spec import spec_text
from ..storage.base import Store
from .auth import auth_middleware
from .budget import BodyBudget
from .console import add_console_routes
from .errors import error_middleware
from .integrations import IntegrationService
from .keys import (
    CONFIG,
    DEFAULT_TENANT,
    INGEST_BUDGET,
    INGEST_STATS,
    INTEGRATIONS,
    REPLAYS,
    STORE,
    TOKENS,
)
from .metrics import DaemonMetrics, IngestStats, metrics_handler, readyz_handler
from .publish import publish_events
from .replays import ReplayService
from .routes import add_routes


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves; `status` is "degraded" (and `store.error` says why)
    when the store cannot be reached or used (JetStream: NATS down, its streams gone), so
    a liveness probe does not restart a daemon that would only fail to start again, and a
    look tells what is wrong.
    Public, so it names no server (the control socket's status does)."""
    store = request.app[STORE]
    health = store.health()
    shown = {"backend": health.backend, "connected": health.connected, "error": health.error}
    healthy = health.connected and health.error is None
    return web.json_response({"status": "ok" if healthy else "degraded",
                              "head": store.head, "store": shown})


async def openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=spec_text(), content_type="application/yaml")


def build_app(config: Config, store: Store, tokens: tuple[str, ...],
              service: IntegrationService,
              metrics: DaemonMetrics | None = None) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=config.server.max_body,
    )
    app[CONFIG] = config
    app[STORE] = store
    app[TOKENS] = tokens
    app[INTEGRATIONS] = service
    app[REPLAYS] = ReplayService(service)
    app[DEFAULT_TENANT] = config.tenant
    app[INGEST_BUDGET] = BodyBudget(config.server.max_inflight_bytes, config.server.max_body)
    app[INGEST_STATS] = metrics.ingest if metrics is not None else IngestStats()
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app.router.add_get("/readyz", readyz_handler(metrics))
        app.router.add_get("/metrics", metrics_handler(metrics))
        add_console_routes(app, metrics.sampler, f"{config.server.base_path}/eventstream")
    app.router.add_get("/openapi.yaml", openapi_yaml)
    app.router.add_post("/events", publish_events)
    add_routes(app, config.server.base_path)
    return app
