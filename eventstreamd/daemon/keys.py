"""The aiohttp application's typed state, declared in one place (aiohttp `AppKey`s).

`build_app` (app.py) fills them from the wiring the lifecycle built once;
handlers and middlewares read them. Nothing else is stored on the app.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..storage.base import Store
from .budget import BodyBudget
from .integrations import IntegrationService
from .metrics import IngestStats
from .replays import ReplayService

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
TOKENS = web.AppKey("tokens", tuple)
INTEGRATIONS = web.AppKey("integrations", IntegrationService)
REPLAYS = web.AppKey("replays", ReplayService)
INGEST_BUDGET = web.AppKey("ingest_budget", BodyBudget)
DEFAULT_TENANT = web.AppKey("default_tenant", str)
INGEST_STATS = web.AppKey("ingest_stats", IngestStats)
