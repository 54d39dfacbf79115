"""`_retry`, the change feed and creation cursors, in-process: the app from `build_app`.

Everything is real: the LMDB store with its group-commit writer, the
integration service, the aiohttp app served on 127.0.0.1 by aiohttp's
TestServer, and a real receiver the retries deliver to. Only the supervisor is
absent — the change feed records what it would have been told — so no sink
moves a cursor and the cursors set at creation can be checked exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aiohttp import web

from eventstreamd.model import LogEntry, RejectedEvent
from eventstreamd.sinks.webhook import WebhookTarget
from eventstreamd.storage.lmdb_store import LmdbStore, now_ms
from eventstreamd.timeutil import ms_to_iso
from tests.helpers.api import API_KEY, PAST, S3, webhook_body
from tests.helpers.inprocess import served
from tests.helpers.receiver import Receiver
from tests.helpers.store import event_of, event_part, new_event, rejected_entry
from tests.helpers.wait import eventually


async def add_rejected(store: LmdbStore, integration_id: str, entry: RejectedEvent) -> None:
    integration = await store.get_integration(integration_id)
    assert integration is not None
    assert await store.add_rejected(integration.fence(), entry,
                                    LogEntry(entry.created_at, "event_rejected", "seeded"))


def hook_to(receiver: Receiver) -> dict[str, Any]:
    return webhook_body("erp-1", callback_parameters={"callback_url": receiver.url,
                                                      "api_key": API_KEY})


async def test_a_delivered_retry_removes_the_event(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    try:
        async with served(tmp_path) as (api, store, _):
            await api.register(hook_to(receiver))
            entry, other = rejected_entry(1), rejected_entry(2)
            await add_rejected(store, "erp-1", entry)
            await add_rejected(store, "erp-1", other)

            assert await api.retry("erp-1", entry.id) is None
            # The receiver got the stored body, the original id and the key in clear.
            [sent] = receiver.delivered
            assert sent.body == event_of(entry)
            assert sent.key == entry.event_id
            assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
            listed = await api.rejected("erp-1")
            assert [r["id"] for r in listed] == [other.id]
            await api.get_rejected("erp-1", entry.id, expect=404)
            logs = await api.logs("erp-1")
            assert logs[0]["action"] == "rejected_event_retried"
            assert entry.id in logs[0]["reason"]
    finally:
        await receiver.close()


async def test_a_failed_retry_is_502_and_keeps_the_event(tmp_path: Path) -> None:
    receiver = await Receiver(lambda r, n: web.Response(status=400, text="still no")
                              if n == 1 else web.Response(status=503)).start()
    try:
        async with served(tmp_path) as (api, store, _):
            await api.register(hook_to(receiver))
            entry = dataclasses.replace(rejected_entry(1), attempts=3)
            await add_rejected(store, "erp-1", entry)
            newer = rejected_entry(2)
            await add_rejected(store, "erp-1", newer)

            error = await api.retry("erp-1", entry.id, expect=502)
            assert error["error_code"] == "delivery_failed"
            assert error["message"] == ("the receiver rejected the event again (HTTP 400): "
                                        "still no")
            assert event_part(await api.get_rejected("erp-1", entry.id)) == \
                event_of(entry)
            logs = await api.logs("erp-1")
            assert logs[0]["action"] == "rejected_event_retry_failed"
            assert "still no" in logs[0]["reason"]

            async def shown() -> list[tuple[str, int | None, int | None, str]]:
                listed = await api.rejected("erp-1")
                return [(r["id"], r["attempts"], r["status"], r["reason"]) for r in listed]

            # The entry shows the latest try (one more attempt, its answer) and keeps its
            # place in the list (newest rejection first).
            assert await shown() == [
                (newer.id, None, 400, "Bad Request"),
                (entry.id, 4, 400, "the receiver rejected the event again (HTTP 400): "
                                   "still no")]
            await api.retry("erp-1", entry.id, expect=502)
            [_, (_, attempts, status, reason)] = await shown()
            assert (attempts, status) == (5, 503) and "503" in reason

            # Unknown ids never reach the receiver.
            await api.retry("erp-1", "nope", expect=404)
            await api.retry("nope", entry.id, expect=404)
            assert len(receiver.requests) == 2
    finally:
        await receiver.close()


async def test_every_committed_change_is_announced(tmp_path: Path) -> None:
    async with served(tmp_path) as (api, _, feed):
        await api.register(webhook_body("erp-1"))
        await api.stop("erp-1")
        await api.update("erp-1", {"s3_parameters": S3})
        await api.start("erp-1")
        await api.delete("erp-1")
        assert feed.changed == ["erp-1"] * 5
        # Refused requests change nothing and announce nothing.
        await api.register({"id": "x"}, expect=400)
        await api.delete("erp-1", expect=404)
        assert feed.changed == ["erp-1"] * 5


async def test_a_masked_secret_sent_back_keeps_the_stored_one(tmp_path: Path) -> None:
    async with served(tmp_path) as (api, store, _):

        async def stored_target() -> WebhookTarget:
            integration = await store.get_integration("erp-1")
            assert integration is not None and isinstance(integration.target, WebhookTarget)
            return integration.target

        shown = await api.register(webhook_body("erp-1"))
        await api.stop("erp-1")
        # GET, change the URL, PATCH the object back with the masked key in it.
        params = dict(shown["callback_parameters"], callback_url="https://moved.example/e")
        await api.update("erp-1", {"callback_parameters": params})
        assert await stored_target() == WebhookTarget("https://moved.example/e", API_KEY)
        # A new key replaces it; leaving the key out removes it.
        await api.update("erp-1", {"callback_parameters": {
            "callback_url": "https://moved.example/e", "api_key": "new-key-0123456789"}})
        assert (await stored_target()).api_key == "new-key-0123456789"
        await api.update("erp-1", {"callback_parameters": {
            "callback_url": "https://moved.example/e"}})
        assert (await stored_target()).api_key is None


async def test_the_cursor_is_set_at_creation(tmp_path: Path) -> None:
    async with served(tmp_path) as (api, store, _):
        first, last = await store.append([new_event(f"e{n}", {"n": n}) for n in range(3)])
        assert (first, last) == (1, 3)
        await api.register(webhook_body("from-now"))
        await api.register(webhook_body("from-past", starts_at=PAST))
        # Just after the events' ingest time (waiting, bounded, until that is not
        # the future: starts_at may not be).
        after_ms = (await store.read_events(first, 1))[0].ingested_at + 1
        await eventually(lambda: now_ms() >= after_ms, within=5, every=0.001)
        await api.register(webhook_body("from-later", starts_at=ms_to_iso(after_ms)))
        # No starts_at: the next event to come. A starts_at before every event:
        # the first one. After every event: the next one too.
        assert await store.get_cursor("from-now") == last + 1
        assert await store.get_cursor("from-past") == first
        assert await store.get_cursor("from-later") == last + 1
