"""The daemon in-process. `served`: the HTTP app (`build_app`) over a real LMDB store and
the real integration service, served on 127.0.0.1 by aiohttp's TestServer, without a
supervisor (the change feed records what it would have been told). `wired`: store,
service, supervisor (its sinks running), status sampler and metrics as the lifecycle
wires them, for tests that look inside while the daemon works."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from aiohttp.test_utils import TestServer

from eventstreamd.config import Config, StorageConfig, WebhookConfig
from eventstreamd.daemon.app import build_app
from eventstreamd.daemon.contracts import ChangeFeed
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.lifecycle import http_session
from eventstreamd.daemon.metrics import DaemonMetrics, IngestStats, Readiness
from eventstreamd.daemon.status import StatusSampler
from eventstreamd.daemon.supervisor import Supervisor
from eventstreamd.sinks.base import SinkEnv
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.storage.factory import open_store
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


@dataclasses.dataclass
class Wired:
    store: Any  # the store the config names (LMDB here)
    config: Config
    service: IntegrationService
    supervisor: Supervisor
    sampler: StatusSampler
    metrics: DaemonMetrics


@asynccontextmanager
async def wired(tmp_path: Path, max_integrations: int = 100) -> AsyncIterator[Wired]:
    """Store, service, supervisor (running its sinks), sampler and metrics as the lifecycle
    wires them; a test may wrap the store's methods before it creates anything."""
    config = Config(storage=StorageConfig(data_dir=str(tmp_path / "data")),
                    webhook=WebhookConfig(timeout=2.0, retry_initial=0.05, retry_max=0.2),
                    limits=dataclasses.replace(Config().limits,
                                               max_integrations=max_integrations))
    async with open_store(config, SINK_TYPES) as store, http_session(config) as session, \
            anyio.create_task_group() as tg:
        changes = ChangeFeed()
        env = SinkEnv(config=config, session=session, spool_root=tmp_path / "spool")
        service = IntegrationService(store, config, changes, env)
        supervisor = Supervisor(env, store, changes, service.complete)
        await tg.start(supervisor.run)
        sampler = StatusSampler(store, supervisor, config)
        readiness = Readiness(started=True)
        metrics = DaemonMetrics(store, supervisor, sampler, IngestStats(), readiness)
        yield Wired(store, config, service, supervisor, sampler, metrics)
        await supervisor.shutdown()
        tg.cancel_scope.cancel()


@asynccontextmanager
async def serving(daemon: Wired) -> AsyncIterator[ApiClient]:
    """The HTTP app of a `wired` daemon on 127.0.0.1, and a client of it."""
    app = build_app(daemon.config, daemon.store, (TOKEN,), daemon.service, daemon.metrics)
    async with TestServer(app, host="127.0.0.1") as server, \
            ApiClient(url=str(server.make_url("")).rstrip("/"), headers=HEADERS) as api:
        yield api
