"""The daemon's HTTP app in-process: `build_app` over a real LMDB store and the real
integration service, served on 127.0.0.1 by aiohttp's TestServer, without a supervisor
(the change feed records what it would have been told)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp.test_utils import TestServer

from eventstreamd.config import Config, StorageConfig
from eventstreamd.daemon.app import build_app
from eventstreamd.daemon.contracts import ChangeFeed
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.lifecycle import http_session
from eventstreamd.sinks.base import SinkEnv
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.storage.lmdb_store import LmdbStore
from tests.helpers.api import ApiClient

TOKEN = "in-process-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class RecordingFeed(ChangeFeed):
    """The change feed, remembering every id it was told (the supervisor is absent)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: list[str] = []

    def notify(self, integration_id: str) -> None:
        self.changed.append(integration_id)
        super().notify(integration_id)


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[ApiClient, LmdbStore, RecordingFeed]]:
    config = Config(storage=StorageConfig(data_dir=str(tmp_path / "data")))
    feed = RecordingFeed()
    async with LmdbStore(config.data_dir, map_size=config.storage.map_size,
                         targets=SINK_TYPES) as store, \
            http_session(config) as session:
        env = SinkEnv(config=config, session=session, spool_root=tmp_path / "spool")
        app = build_app(config, store, (TOKEN,), IntegrationService(store, config, feed, env))
        async with TestServer(app, host="127.0.0.1") as server, \
                ApiClient(url=str(server.make_url("")).rstrip("/"), headers=HEADERS) as api:
            yield api, store, feed
