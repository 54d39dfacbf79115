"""The store opened in-process (the daemon stopped), to seed data and check what was stored.

`opened(where)` and the helpers built on it take a data dir (the LMDB store there) or a
`DaemonProcess` (whatever store its config names: LMDB or JetStream), so a test reads
and seeds the same way on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import lmdb
import msgpack
import orjson

from eventstreamd.config import Config, LimitsConfig, load_config
from eventstreamd.model import Integration, LogEntry, NewEvent, RejectedEvent, StoredEvent
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.sinks.webhook import WebhookTarget
from eventstreamd.storage.base import Store
from eventstreamd.storage.factory import open_store
from eventstreamd.storage.lmdb_store import LmdbStore
from tests.helpers.daemon import DaemonProcess

MAP_SIZE = 64 * 1024 * 1024
T = TypeVar("T")


@asynccontextmanager
async def opened(where: Path | DaemonProcess, **options: Any) -> AsyncIterator[Any]:
    """The LMDB store in a data dir, or the store a daemon's config names."""
    if isinstance(where, DaemonProcess):
        store: Store
        async with open_store(load_config(where.config_path), SINK_TYPES) as store:
            yield store
        return
    async with LmdbStore(where, targets=SINK_TYPES, map_size=options.pop("map_size", MAP_SIZE),
                         **options) as lmdb_store:
        yield lmdb_store


async def read_all(where: Path | DaemonProcess) -> list[StoredEvent]:
    async with opened(where) as store:
        return await store.read_events(1, 1_000_000, 1 << 40)


def decoded(event: StoredEvent) -> dict[str, Any]:
    """The delivery body an event carries, decoded."""
    return orjson.loads(event.body)


def new_event(event_id: str, payload: Any, *, tenant: str = "acme",
              name: str = "order.created",
              published_at: str = "2024-05-01T00:00:00.000Z") -> NewEvent:
    return NewEvent(event_id, tenant, name, orjson.dumps(
        {"tenant": tenant, "name": name, "published_at": published_at, "payload": payload}))


async def seed_rejected(where: Path | DaemonProcess,
                        entries: Mapping[str, Sequence[RejectedEvent]]) -> None:
    """Store rejected events for existing integrations, as their sinks would."""
    async with opened(where) as store:
        for integration_id, items in entries.items():
            integration = await store.get_integration(integration_id)
            assert integration is not None, integration_id
            for entry in items:
                assert await store.add_rejected(integration.fence(), entry, LogEntry(
                    entry.created_at, "event_rejected", f"seeded {entry.id}"))


def rejected_entry(n: int, tenant: str = "acme") -> RejectedEvent:
    """A rejected event as a sink stores it (a receiver's 400)."""
    return RejectedEvent(
        id=str(uuid.uuid4()), created_at=f"2024-03-01T00:00:{n:02d}.000Z", seq=n + 1,
        event_id=f"event-{n}", reason="Bad Request", status=400,
        body=orjson.dumps({"tenant": tenant, "name": "order.created",
                           "published_at": f"2024-02-29T23:59:{n:02d}.000Z",
                           "payload": {"n": n}}))


def event_of(entry: RejectedEvent) -> dict[str, Any]:
    """What the API shows of a rejected event: its delivery body."""
    return orjson.loads(entry.body)


def event_part(detail: Any) -> Any:
    """A rejected event's API detail without its `rejection` context: the event as sent."""
    if isinstance(detail, dict):
        return {k: v for k, v in detail.items() if k != "rejection"}
    return detail


@asynccontextmanager
async def held(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter `context` in a task of its own and leave it there: for pytest fixtures, whose
    setup and teardown run in different tasks (a task group must be left by the task
    that entered it)."""
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def keep() -> None:
        try:
            async with context as value:
                entered.set_result(value)
                await release.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    task = asyncio.create_task(keep())
    try:
        yield await entered
    finally:
        release.set()
        with anyio.fail_after(30):
            await task


def limited(config: Config, *, log_entries: int,
            rejected_events: int) -> AbstractAsyncContextManager[Store]:
    """The store a test's config names, keeping only this many log entries and rejected
    events per integration (so a test reaches the limits), held for a fixture."""
    return held(open_store(dataclasses.replace(config, limits=LimitsConfig(
        log_entries=log_entries, rejected_events=rejected_events)), SINK_TYPES))


def seed_format1(data_dir: Path, events: Sequence[tuple[str, str, str, Any]],
                 ingested_at: int | None = None) -> None:
    """A data dir as a format-1 daemon (before stored delivery bodies) left it: one msgpack
    map per event, written with raw LMDB; (id, tenant, name, payload) each, ingested now
    unless `ingested_at` (ms) says otherwise."""
    ingested_at = ingested_at if ingested_at is not None else time.time_ns() // 1_000_000
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / "lmdb").mkdir(mode=0o700, exist_ok=True)
    env = lmdb.open(str(data_dir / "lmdb"), map_size=MAP_SIZE, max_dbs=8, subdir=True)
    try:
        events_db, meta = env.open_db(b"events"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            for seq, (event_id, tenant, name, payload) in enumerate(events, start=1):
                txn.put(struct.pack(">Q", seq), msgpack.packb({
                    "ingested_at": ingested_at, "id": event_id, "tenant": tenant, "name": name,
                    "published_at": "2024-05-01T00:00:00.000Z", "payload": payload}),
                    db=events_db)
            txn.put(b"last_seq", struct.pack(">Q", len(events)), db=meta)
            txn.put(b"last_ingested_at", struct.pack(">Q", ingested_at), db=meta)
    finally:
        env.close()


# ------------------------------------------------- records for the store contract

CREATED = LogEntry("2024-01-01T00:00:00.000Z", "integration_created", "test")


def stored_hook(integration_id: str = "a", incarnation: str = "inc-1") -> Integration:
    """A running webhook integration as the store keeps it (its target never contacted)."""
    return Integration(id=integration_id, type="permanent", status="running",
                       target=WebhookTarget("http://127.0.0.1:9/x"), incarnation=incarnation,
                       created_at="2024-01-01T00:00:00.000Z")


def rejected_n(n: int) -> RejectedEvent:
    """Rejected event number `n`: id r-{n}, seq n, a body that says n."""
    return RejectedEvent(id=f"r-{n}", created_at=f"2024-03-01T00:00:{n:02d}.000Z", seq=n,
                         event_id=f"e-{n}", reason="Bad Request", status=400,
                         body=b'{"n":%d}' % n)
