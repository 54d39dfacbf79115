"""The configuration API against a real daemon: every operation, every documented status.

Every response goes through `ApiClient.call` (tests/helpers/api.py), which asserts
the status is one the spec documents for the operation, that the body conforms to
the spec's response schema for it, and that error bodies carry the `X-Request-Id`.
Rejected events are written by the delivery layer; here they are seeded into
the store in-process while the daemon is stopped (`seed_rejected`).
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from eventstreamd.model import RejectedEvent
from tests.helpers.api import (
    API_KEY,
    AWS_SECRET,
    BASE,
    FUTURE,
    LATER,
    PAST,
    S3,
    WEBHOOK,
    ApiClient,
    local_daemon,
    s3_body,
    webhook_body,
)
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.store import event_of, event_part, rejected_entry
from tests.helpers.store import seed_rejected as store_seed_rejected

BACKENDS = EVERY_BACKEND


async def seed_rejected(daemon: DaemonProcess,
                        entries: dict[str, list[RejectedEvent]]) -> None:
    assert daemon.stop() == 0
    await store_seed_rejected(daemon, entries)
    daemon.start()


# --------------------------------------------------------------- list, create, get


async def test_create_list_get_with_masked_secrets(daemon_factory: Factory) -> None:
    daemon = local_daemon(daemon_factory)
    async with ApiClient(daemon) as api:
        assert await api.list_integrations() == []
        created = await api.register(webhook_body("erp-1"))
        assert created == {
            "id": "erp-1", "status": "running", "integration_type": "permanent",
            "callback_parameters": {"callback_url": WEBHOOK["callback_url"], "api_key": "we***"},
        }
        stored = await api.register(s3_body(
            "s3-1", starts_at="2024-01-01T01:00:00+01:00",
            filter_conditions={"entity_filter": ["order", "return"]}))
        assert stored["s3_parameters"] == {**S3, "aws_secret_access_key": "aw***"}
        assert stored["status"] == "running"
        assert stored["starts_at"] == "2024-01-01T00:00:00.000Z"  # normalised to UTC
        assert stored["filter_conditions"] == {"entity_filter": ["order", "return"]}
        temporary = await api.register({
            "id": "replay-1", "integration_type": "temporary", "starts_at": PAST,
            "ends_at": LATER, "callback_parameters": {"callback_url": "http://127.0.0.1:9/x"},
        })
        assert (temporary["starts_at"], temporary["ends_at"]) == (PAST, LATER)
        assert "api_key" not in temporary["callback_parameters"]

        listed = await api.list_integrations()
        assert sorted(i["id"] for i in listed) == ["erp-1", "replay-1", "s3-1"]
        assert {i["id"]: i for i in listed}["s3-1"] == stored
        assert await api.get("erp-1") == created
        assert await api.get("s3-1") == stored
        responses = repr([listed, created, stored])
        assert API_KEY not in responses and AWS_SECRET not in responses
    daemon.stop()
    text = daemon.log()
    assert API_KEY not in text and AWS_SECRET not in text


async def test_unknown_top_level_fields_are_ignored_unknown_target_fields_refused(
        daemon_factory: Factory) -> None:
    # The seed's schema leaves the body open (no additionalProperties: false); the served
    # spec closes the target objects, whose optional fields a typo would silently lose.
    async with ApiClient(local_daemon(daemon_factory)) as api:
        created = await api.register(webhook_body("erp-1", status="stopped", colour="blue"))
        assert created["status"] == "running"
        assert "colour" not in created
        body = webhook_body("erp-2")
        body["callback_parameters"]["extra"] = 1
        refused = await api.register(body, expect=400)
        assert "'callback_parameters.extra' is not allowed here" in refused["message"]


INVALID_CREATES: list[tuple[str, Any, str, str]] = [
    # (what, body, error_code, text the message must contain)
    ("not an object", [], "invalid_request", "request body"),
    ("s3_parameters nested in callback_parameters",
     {"id": "erp-1", "integration_type": "permanent",
      "callback_parameters": {"s3_parameters": {"bucket": "b"}}},
     "misplaced_target", "'s3_parameters' belongs at the top level"),
    ("missing id", {"integration_type": "permanent", "callback_parameters": WEBHOOK},
     "invalid_request", "'id'"),
    ("id with a capital", webhook_body("Erp-1"), "invalid_request", "'id'"),
    ("id with a trailing newline", webhook_body("erp-1\n"), "invalid_request", "'id'"),
    ("id too long", webhook_body("a" * 51), "invalid_request", "'id'"),
    ("bad type", {**webhook_body("erp-1"), "integration_type": "forever"}, "invalid_request",
     "'integration_type'"),
    ("no target", {"id": "erp-1", "integration_type": "permanent"}, "invalid_request",
     "'callback_parameters' or 's3_parameters'"),
    ("both targets", {**webhook_body("erp-1"), "s3_parameters": S3}, "ambiguous_target",
     "s3_parameters"),
    ("callback_url not a URI", {**webhook_body("erp-1"), "callback_parameters": {
        "callback_url": "not a uri"}}, "invalid_request", "'callback_parameters.callback_url'"),
    ("callback_url not HTTP", {**webhook_body("erp-1"), "callback_parameters": {
        "callback_url": "mailto:ops@example.com"}}, "invalid_callback_url", "callback_url"),
    ("api_key not a string", {**webhook_body("erp-1"), "callback_parameters": {
        "callback_url": "https://x.example", "api_key": 7}}, "invalid_request",
     "'callback_parameters.api_key'"),
    ("s3 without bucket", {**s3_body("s3-1"), "s3_parameters": {
        k: v for k, v in S3.items() if k != "bucket"}}, "invalid_request",
     "'s3_parameters.bucket'"),
    ("key_prefix ending in /", {**s3_body("s3-1"), "s3_parameters": {**S3, "key_prefix": "a/"}},
     "invalid_request", "'s3_parameters.key_prefix'"),
    ("empty filter_conditions", webhook_body("erp-1", filter_conditions={}), "invalid_request",
     "filter_conditions"),
    ("starts_at not a date-time", webhook_body("erp-1", starts_at="yesterday"), "invalid_request",
     "'starts_at'"),
    ("starts_at in the future", webhook_body("erp-1", starts_at=FUTURE), "starts_at_in_future",
     "starts_at"),
    ("permanent with ends_at", webhook_body("erp-1", starts_at=PAST, ends_at=LATER),
     "ends_at_not_allowed", "ends_at"),
    ("temporary without starts_at", webhook_body("erp-1", integration_type="temporary",
                                                 ends_at=LATER), "starts_at_required",
     "starts_at"),
    ("temporary without ends_at", webhook_body("erp-1", integration_type="temporary",
                                               starts_at=PAST), "ends_at_required", "ends_at"),
    ("temporary ending before it starts", webhook_body(
        "erp-1", integration_type="temporary", starts_at=LATER, ends_at=PAST),
     "ends_at_before_starts_at", "ends_at"),
    ("temporary of no length", webhook_body(
        "erp-1", integration_type="temporary", starts_at=PAST, ends_at=PAST),
     "ends_at_before_starts_at", "ends_at"),
]


async def test_create_refuses_what_the_spec_forbids(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        for what, body, code, text in INVALID_CREATES:
            error = await api.register(body, expect=400)
            assert error["error_code"] == code, (what, error)
            assert text in error["message"], (what, error)
        for raw in (b"", b"{not json", b'{"id": "erp-1",'):
            error = await api.register(raw=raw, expect=400)
            assert error["error_code"] == "invalid_json", raw
        assert await api.list_integrations() == []


async def test_duplicate_id_is_409(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1"))
        error = await api.register(s3_body("erp-1"), expect=409)
        assert error["error_code"] == "integration_exists"
        assert "erp-1" in error["message"]
        assert "s3_parameters" not in await api.get("erp-1")


async def test_at_most_max_integrations(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory, {"limits": {"max_integrations": 2}})) as api:
        await api.register(webhook_body("one"))
        await api.register(s3_body("two"))
        error = await api.register(webhook_body("three"), expect=400)
        assert error["error_code"] == "max_integrations_reached"
        assert "2" in error["message"]
        # A duplicate is still reported as such at the limit.
        assert (await api.register(webhook_body("one"), expect=409))["error_code"] == \
            "integration_exists"
        await api.delete("one")
        await api.register(webhook_body("three"))
        assert sorted(i["id"] for i in await api.list_integrations()) == ["three", "two"]


# ----------------------------------------------------------------- start / stop / logs


async def test_start_and_stop_are_idempotent_and_logged(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1"))
        assert (await api.start("erp-1"))["status"] == "running"  # already running
        stopped = await api.stop("erp-1")
        assert stopped["status"] == "stopped"
        assert stopped["callback_parameters"]["api_key"] == "we***"
        assert (await api.stop("erp-1"))["status"] == "stopped"
        assert (await api.get("erp-1"))["status"] == "stopped"
        assert (await api.start("erp-1"))["status"] == "running"
        entries = await api.logs("erp-1")
        assert [(e["action"], e["reason"]) for e in entries] == [
            ("integration_started", "Started via API."),
            ("integration_stopped", "Stopped via API."),
            ("integration_created", "Created via API."),
        ]
        stamps = [e["created_at"] for e in entries]
        assert stamps == sorted(stamps, reverse=True)


async def test_logs_keep_the_newest_log_entries(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory, {"limits": {"log_entries": 3}})) as api:
        await api.register(webhook_body("erp-1"))
        for _ in range(3):
            await api.stop("erp-1")
            await api.start("erp-1")
        await api.stop("erp-1")
        await api.update("erp-1", {"filter_conditions": {"event_filter": ["order.created"]}})
        entries = await api.logs("erp-1")
        assert [e["action"] for e in entries] == [
            "integration_updated", "integration_stopped", "integration_started"]
        assert entries[0]["reason"] == "Updated via API."


# ----------------------------------------------------------------------- update


async def test_update_follows_the_stop_update_start_workflow(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1", starts_at=PAST))
        error = await api.update("erp-1", {"filter_conditions": {"event_filter": ["a.b"]}},
                                 expect=400)
        assert error["error_code"] == "integration_running"
        assert "_stop" in error["message"]
        await api.stop("erp-1")
        assert (await api.get("erp-1"))["status"] == "stopped"
        updated = await api.update("erp-1", {
            "callback_parameters": {"callback_url": "https://new.example/hook",
                                    "api_key": "another-key-0123456789"},
            "filter_conditions": {"event_filter": ["order.created"], "entity_filter": ["return"]},
        })
        assert updated == {
            "id": "erp-1", "status": "stopped", "integration_type": "permanent",
            "starts_at": PAST,
            "filter_conditions": {"event_filter": ["order.created"], "entity_filter": ["return"]},
            "callback_parameters": {"callback_url": "https://new.example/hook", "api_key": "an***"},
        }
        assert await api.get("erp-1") == updated
        assert (await api.start("erp-1"))["status"] == "running"
        assert (await api.update("erp-1", {}, expect=400))["error_code"] == "integration_running"


async def test_update_switches_between_webhook_and_s3(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1"))
        await api.stop("erp-1")
        switched = await api.update("erp-1", {"s3_parameters": S3})
        assert "callback_parameters" not in switched
        assert switched["s3_parameters"] == {**S3, "aws_secret_access_key": "aw***"}
        assert await api.get("erp-1") == switched
        back = await api.update("erp-1", {"callback_parameters": {
            "callback_url": "https://back.example/events"}})
        assert "s3_parameters" not in back
        assert back["callback_parameters"] == {"callback_url": "https://back.example/events"}


async def test_update_refuses_what_cannot_change(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1", starts_at=PAST))
        await api.stop("erp-1")
        for key, value in (("starts_at", PAST), ("ends_at", LATER),
                           ("integration_type", "temporary"), ("id", "erp-2"),
                           ("status", "running")):
            error = await api.update("erp-1", {key: value}, expect=400)
            assert error["error_code"] == "immutable_field", key
            assert f"'{key}'" in error["message"]
        cases: list[tuple[Any, str, str]] = [
            ({"colour": "blue"}, "invalid_request", "'colour'"),
            ({"callback_parameters": WEBHOOK, "s3_parameters": S3}, "ambiguous_target", "both"),
            ({"callback_parameters": {"callback_url": "nope"}}, "invalid_request",
             "'callback_parameters.callback_url'"),
            ({"s3_parameters": {"bucket": "b"}}, "invalid_request", "'s3_parameters."),
            (["not", "an", "object"], "invalid_request", "request body"),
        ]
        for body, code, text in cases:
            error = await api.update("erp-1", body, expect=400)
            assert error["error_code"] == code, body
            assert text in error["message"], (body, error)
        assert (await api.update("erp-1", raw=b"{", expect=400))["error_code"] == "invalid_json"
        assert (await api.get("erp-1"))["callback_parameters"]["callback_url"] == \
            WEBHOOK["callback_url"]


async def test_temporary_integrations_cannot_be_updated(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("replay", integration_type="temporary", starts_at=PAST,
                                        ends_at=LATER))
        await api.stop("replay")
        error = await api.update("replay", {"filter_conditions": {"event_filter": ["a.b"]}},
                                 expect=400)
        assert error["error_code"] == "temporary_not_updatable"


# ----------------------------------------------------------------------- delete / 404


async def test_unknown_ids_are_404(daemon_factory: Factory) -> None:
    async with ApiClient(local_daemon(daemon_factory)) as api:
        await api.register(webhook_body("erp-1"))
        for missing in ("nope", "x" * 600, "UPPER", "a%2Fb"):
            for call in (api.get, api.delete, api.start, api.stop, api.logs, api.rejected):
                error = await call(missing, expect=404)
                assert error["error_code"] == "integration_not_found", (call, missing)
            error = await api.update(missing, {"filter_conditions": {"event_filter": ["a.b"]}},
                                     expect=404)
            assert error["error_code"] == "integration_not_found"
            for rejected_call in (api.get_rejected, api.delete_rejected, api.retry):
                error = await rejected_call(missing, str(uuid.uuid4()), expect=404)
                assert error["error_code"] == "integration_not_found"
        assert len((await api.get("x" * 600, expect=404))["message"]) < 200
        unknown_event = str(uuid.uuid4())
        for rejected_call in (api.get_rejected, api.delete_rejected, api.retry):
            error = await rejected_call("erp-1", unknown_event, expect=404)
            assert error["error_code"] == "rejected_event_not_found"
            assert unknown_event in error["message"]


async def test_rejected_events_list_get_delete_retry(daemon_factory: Factory) -> None:
    daemon = local_daemon(daemon_factory)
    async with ApiClient(daemon) as api:
        await api.register(webhook_body("erp-1"))
        await api.register(webhook_body("other"))
        assert await api.rejected("erp-1") == []
    entries = [rejected_entry(n) for n in range(3)]
    await seed_rejected(daemon, {"erp-1": entries, "other": [rejected_entry(9)]})
    async with ApiClient(daemon) as api:
        listed = await api.rejected("erp-1")
        assert [(item["id"], item["created_at"]) for item in listed] == \
            [(e.id, e.created_at) for e in reversed(entries)]  # newest first
        assert all(len(item["id"]) == 36 for item in listed)
        # Beside the spec's two fields: what ties it to the published event, and why.
        assert [(i["event_id"], i["seq"], i["status"], i["reason"]) for i in listed] == \
            [(e.event_id, e.seq, 400, "Bad Request") for e in reversed(entries)]
        first = entries[0]
        detail = await api.get_rejected("erp-1", first.id)
        assert event_part(detail) == event_of(first)
        assert detail["rejection"] == {
            "id": first.id, "created_at": first.created_at, "event_id": first.event_id,
            "seq": first.seq, "status": 400, "reason": "Bad Request", "attempts": None,
            "deliverable": True}
        # Ids are per integration.
        error = await api.get_rejected("other", first.id, expect=404)
        assert error["error_code"] == "rejected_event_not_found"

        # Nothing listens on the callback URL: the retry fails with 502 and the
        # event stays. tests/test_api_retry.py covers success with a test double.
        error = await api.retry("erp-1", first.id, expect=502)
        assert error["error_code"] == "delivery_failed"
        assert error["message"]
        assert len(await api.rejected("erp-1")) == 3
        assert (await api.logs("erp-1"))[0]["action"] == "rejected_event_retry_failed"

        assert await api.delete_rejected("erp-1", first.id) is None
        await api.delete_rejected("erp-1", first.id, expect=404)
        await api.get_rejected("erp-1", first.id, expect=404)
        assert [r["id"] for r in await api.rejected("erp-1")] == \
            [entries[2].id, entries[1].id]
        assert len(await api.rejected("other")) == 1


async def test_delete_removes_the_integration_with_its_logs_and_rejected_events(
    daemon_factory: Factory,
) -> None:
    daemon = local_daemon(daemon_factory)
    async with ApiClient(daemon) as api:
        await api.register(webhook_body("erp-1"))
        await api.stop("erp-1")
        await api.register(webhook_body("keep"))
    doomed = rejected_entry(1)
    await seed_rejected(daemon, {"erp-1": [doomed], "keep": [rejected_entry(2)]})
    async with ApiClient(daemon) as api:
        assert await api.delete("erp-1") is None
        await api.get("erp-1", expect=404)
        await api.logs("erp-1", expect=404)
        await api.rejected("erp-1", expect=404)
        await api.get_rejected("erp-1", doomed.id, expect=404)
        await api.delete("erp-1", expect=404)
        assert [i["id"] for i in await api.list_integrations()] == ["keep"]
        # A new integration under the same id starts with nothing of the old one.
        recreated = await api.register(s3_body("erp-1"))
        assert recreated["status"] == "running"
        assert [e["action"] for e in await api.logs("erp-1")] == ["integration_created"]
        assert await api.rejected("erp-1") == []
        assert len(await api.rejected("keep")) == 1


async def test_unknown_routes_keep_the_error_shape(daemon_factory: Factory) -> None:
    daemon = local_daemon(daemon_factory)
    async with aiohttp.ClientSession(headers=daemon.headers) as session:
        for path, status in ((f"{BASE}/erp-1/_pause", 404), (f"{BASE}/erp-1/logs/x", 404),
                             (f"{BASE}/erp-1/logs", 405)):
            async with session.post(f"{daemon.url}{path}") as response:
                body = await response.json()
            assert response.status == status, path
            assert set(body) == {"error_code", "message", "request_id"}
