"""`_retry` and the SinkControl contract, in-process: the app from `build_app` with a test double.

The double stands in for the supervisor (the delivery layer): it records every
`integration_changed` call and answers `retry_rejected` as the test tells it.
Everything else is real: the LMDB store, the group-commit writer, the aiohttp
app served on 127.0.0.1 by aiohttp's TestServer. With no sink moving them,
the cursors set at creation can be checked exactly here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from aiohttp.test_utils import TestClient, TestServer
from test_api import API_KEY, BASE, PAST, S3, rejected_entry, webhook

from eventstreamd.config import Config, StorageConfig
from eventstreamd.daemon.contracts import DeliveryFailed
from eventstreamd.daemon.http import build_app
from eventstreamd.schemas.validation import response_errors
from eventstreamd.storage.lmdb_store import LmdbStore, now_ms
from eventstreamd.storage.records import pack_event
from eventstreamd.timeutil import ms_to_iso

TOKEN = "in-process-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class SinksDouble:
    """A SinkControl that records what it is told and fails retries on request."""

    fail_with: str | None = None
    changed: list[str] = field(default_factory=list)
    retried: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def integration_changed(self, integration_id: str) -> None:
        self.changed.append(integration_id)

    async def retry_rejected(self, record: dict[str, Any], entry: dict[str, Any]) -> None:
        self.retried.append((record, entry))
        if self.fail_with is not None:
            raise DeliveryFailed(self.fail_with)


@asynccontextmanager
async def served(tmp_path: Path, sinks: SinksDouble) -> AsyncIterator[tuple[TestClient, LmdbStore]]:
    config = Config(storage=StorageConfig(data_dir=str(tmp_path / "data")))
    store = LmdbStore(config.data_dir, map_size=config.storage.map_size)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.writer.run)
            app = build_app(config, store, (TOKEN,), sinks)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                yield client, store
            await store.writer.close()
    finally:
        store.close()


async def call(client: TestClient, operation_id: str, method: str, path: str,
               expect: int, body: Any = None) -> Any:
    data = orjson.dumps(body) if body is not None else None
    async with client.request(method, path, data=data, headers=HEADERS) as response:
        payload = await response.read()
        assert response.status == expect, payload
    parsed = orjson.loads(payload) if payload else None
    assert response_errors(operation_id, expect, parsed) == []
    return parsed


async def add_rejected(store: LmdbStore, integration_id: str, entry: dict[str, Any]) -> None:
    await store.write(lambda txn: store.txn_add_rejected(txn, integration_id, entry))


def retry_path(integration_id: str, event_id: str) -> str:
    return f"{BASE}/{integration_id}/rejected_events/{event_id}/_retry"


async def test_a_delivered_retry_removes_the_event(tmp_path: Path) -> None:
    sinks = SinksDouble()
    async with served(tmp_path, sinks) as (client, store):
        await call(client, "registerIntegration", "POST", BASE, 200, webhook("erp-1"))
        entry, other = rejected_entry(1), rejected_entry(2)
        await add_rejected(store, "erp-1", entry)
        await add_rejected(store, "erp-1", other)

        assert await call(client, "retryRejectedEvent", "POST",
                          retry_path("erp-1", entry["id"]), 200) is None
        # The sink got the stored record, secrets in clear, and the stored entry.
        [(record, sent)] = sinks.retried
        assert record["callback_parameters"]["api_key"] == API_KEY
        assert sent == entry
        listed = await call(client, "listRejectedEvents", "GET",
                            f"{BASE}/erp-1/rejected_events", 200)
        assert [r["id"] for r in listed["rejected_events"]] == [other["id"]]
        await call(client, "getRejectedEvent", "GET",
                   f"{BASE}/erp-1/rejected_events/{entry['id']}", 404)
        logs = await call(client, "listIntegrationLogEntries", "GET", f"{BASE}/erp-1/logs", 200)
        assert logs["entries"][0]["action"] == "rejected_event_retried"
        assert entry["id"] in logs["entries"][0]["reason"]


async def test_a_failed_retry_is_502_and_keeps_the_event(tmp_path: Path) -> None:
    sinks = SinksDouble(fail_with="HTTP status code 400 from https://receiver.example/events")
    async with served(tmp_path, sinks) as (client, store):
        await call(client, "registerIntegration", "POST", BASE, 200, webhook("erp-1"))
        entry = rejected_entry(1)
        await add_rejected(store, "erp-1", entry)

        error = await call(client, "retryRejectedEvent", "POST",
                           retry_path("erp-1", entry["id"]), 502)
        assert error["error_code"] == "delivery_failed"
        assert error["message"] == sinks.fail_with
        assert await call(client, "getRejectedEvent", "GET",
                          f"{BASE}/erp-1/rejected_events/{entry['id']}", 200) == entry["event"]
        logs = await call(client, "listIntegrationLogEntries", "GET", f"{BASE}/erp-1/logs", 200)
        assert logs["entries"][0]["action"] == "rejected_event_retry_failed"
        assert sinks.fail_with in logs["entries"][0]["reason"]

        # Unknown ids never reach the sink.
        await call(client, "retryRejectedEvent", "POST", retry_path("erp-1", "nope"), 404)
        await call(client, "retryRejectedEvent", "POST", retry_path("nope", entry["id"]), 404)
        assert len(sinks.retried) == 1


async def test_every_committed_change_is_announced(tmp_path: Path) -> None:
    sinks = SinksDouble()
    async with served(tmp_path, sinks) as (client, _):
        one = f"{BASE}/erp-1"
        await call(client, "registerIntegration", "POST", BASE, 200, webhook("erp-1"))
        await call(client, "stopIntegration", "POST", f"{one}/_stop", 200)
        await call(client, "updateIntegration", "PATCH", one, 200, {"s3_parameters": S3})
        await call(client, "startIntegration", "POST", f"{one}/_start", 200)
        await call(client, "deleteIntegration", "DELETE", one, 200)
        assert sinks.changed == ["erp-1"] * 5
        # Refused requests change nothing and announce nothing.
        await call(client, "registerIntegration", "POST", BASE, 400, {"id": "x"})
        await call(client, "deleteIntegration", "DELETE", one, 404)
        assert sinks.changed == ["erp-1"] * 5


async def test_a_masked_secret_sent_back_keeps_the_stored_one(tmp_path: Path) -> None:
    sinks = SinksDouble()
    async with served(tmp_path, sinks) as (client, store):
        one = f"{BASE}/erp-1"
        shown = await call(client, "registerIntegration", "POST", BASE, 200, webhook("erp-1"))
        await call(client, "stopIntegration", "POST", f"{one}/_stop", 200)
        # GET, change the URL, PATCH the object back with the masked key in it.
        params = dict(shown["callback_parameters"], callback_url="https://moved.example/e")
        await call(client, "updateIntegration", "PATCH", one, 200,
                   {"callback_parameters": params})
        record = store.get_integration("erp-1")
        assert record is not None
        assert record["callback_parameters"] == {"callback_url": "https://moved.example/e",
                                                 "api_key": API_KEY}
        # A new key replaces it; leaving the key out removes it.
        await call(client, "updateIntegration", "PATCH", one, 200, {"callback_parameters": {
            "callback_url": "https://moved.example/e", "api_key": "new-key-0123456789"}})
        assert store.get_integration("erp-1")["callback_parameters"]["api_key"] == \
            "new-key-0123456789"
        await call(client, "updateIntegration", "PATCH", one, 200, {"callback_parameters": {
            "callback_url": "https://moved.example/e"}})
        assert "api_key" not in store.get_integration("erp-1")["callback_parameters"]


async def test_the_cursor_is_set_at_creation(tmp_path: Path) -> None:
    async with served(tmp_path, SinksDouble()) as (client, store):
        first, last = await store.append(
            [pack_event(f"e{n}", "acme", "order.created", PAST, {"n": n}) for n in range(3)])
        assert (first, last) == (1, 3)
        await call(client, "registerIntegration", "POST", BASE, 200, webhook("from-now"))
        await call(client, "registerIntegration", "POST", BASE, 200,
                   webhook("from-past", starts_at=PAST))
        # Just after the events' ingest time (waiting, bounded, until that is not
        # the future: starts_at may not be).
        after_ms = store.read_events(first, 1)[0].ingested_at + 1
        with anyio.fail_after(5):
            while now_ms() < after_ms:
                await anyio.sleep(0.001)
        await call(client, "registerIntegration", "POST", BASE, 200,
                   webhook("from-later", starts_at=ms_to_iso(after_ms)))
        # No starts_at: the next event to come. A starts_at before every event:
        # the first one. After every event: the next one too.
        assert store.get_cursor("from-now") == last + 1
        assert store.get_cursor("from-past") == first
        assert store.get_cursor("from-later") == last + 1
