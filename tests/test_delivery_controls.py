"""Per-integration delivery controls through the real daemon and a real receiver: own
signing secrets and their rotation, extra headers, max_rate, trace context, and the 400s
for misused fields. Signatures are checked with the `standardwebhooks` library."""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
import pytest
from aiohttp import web

from tests.helpers.api import BASE, ApiClient, events
from tests.helpers.control import status
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.receiver import Received, Receiver, Switch, answer
from tests.helpers.signing import library_verifies, new_secret
from tests.helpers.wait import eventually

BOTH = pytest.mark.parametrize("backend", ["lmdb", "jetstream"])
FAST = {"webhook": {"retry_initial": "50ms", "retry_max": "100ms"}}
GLOBAL, OWN_A, OWN_B = new_secret(), new_secret(), new_secret()


def verified(secret: str, received: Received) -> bool:
    return library_verifies(secret, received.raw, received.headers)


def key_part(secret: str) -> str:
    return secret.removeprefix("whsec_")


# ---------------------------------------------------------------- signing secrets


async def test_each_receiver_verifies_with_its_own_secret_only(
        daemon_factory: Factory) -> None:
    a, b, c = Receiver(), Receiver(), Receiver()
    for receiver in (a, b, c):
        await receiver.start()
    d = daemon_factory({"webhook": {"signing_secret": GLOBAL}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("own-a", a.url, controls={"signing_secret": OWN_A})
            await api.webhook("own-b", b.url, controls={"signing_secret": OWN_B})
            await api.webhook("global", c.url)
            await api.publish(events(3))
            await eventually(lambda: all(len(r.delivered) == 3 for r in (a, b, c)))
            shown = (await api.get("own-a"))["callback_parameters"]
        for received in a.delivered:
            assert verified(OWN_A, received)
            assert not verified(OWN_B, received) and not verified(GLOBAL, received)
        for received in b.delivered:
            assert verified(OWN_B, received)
            assert not verified(OWN_A, received) and not verified(GLOBAL, received)
        for received in c.delivered:  # no secret of its own: the global one signs
            assert verified(GLOBAL, received) and not verified(OWN_A, received)
        assert shown["signing_secret"] != OWN_A and "***" in shown["signing_secret"]
        log = d.log()
        for secret in (GLOBAL, OWN_A, OWN_B):
            assert secret not in log and key_part(secret) not in log
    finally:
        for receiver in (a, b, c):
            await receiver.close()


async def test_rotation_under_load_signs_with_the_new_secret_after_the_answer(
        daemon_factory: Factory) -> None:
    async def slowish(received: Received, attempt: int) -> web.Response:
        await anyio.sleep(0.003)
        return web.Response(status=200)

    receiver = await Receiver(slowish).start()
    d = daemon_factory()
    total = 1500
    try:
        async with ApiClient(d) as api:
            await api.webhook("rotating", receiver.url, controls={"signing_secret": OWN_A})
            answered = 0.0
            new = ""

            async def publish() -> None:
                for start in range(0, total, 50):
                    await api.publish(events(50, start=start))
                    await anyio.sleep(0.01)

            async def rotate() -> None:
                nonlocal answered, new
                await eventually(lambda: len(receiver.delivered) >= 200, within=30)
                new = (await api.rotate_secret("rotating"))["signing_secret"]
                answered = time.time()

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                tg.start_soon(rotate)
            await eventually(lambda: len(receiver.delivered_keys) == total, within=60)
            logs = await api.logs("rotating")
        assert new.startswith("whsec_") and new != OWN_A
        # Requests the daemon started after it answered reach the receiver after the
        # answer did; a small margin covers one already on its way (one event loop turn).
        after = [r for r in receiver.requests if r.at > answered + 0.05]
        before = [r for r in receiver.requests if r.at < answered]
        assert len(after) > 100 and before
        assert all(verified(new, r) for r in after)
        assert all(verified(OWN_A, r) for r in after)  # the overlap: both sign
        assert not any(verified(new, r) for r in before)
        assert any(e["action"] == "signing_secret_rotated" for e in logs)
        assert new not in d.log() and key_part(new) not in d.log()
    finally:
        await receiver.close()


async def test_rotation_overlap_ends_and_survives_a_restart(daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    overlap = 8.0  # longer than a restart takes on a loaded machine
    d = daemon_factory({"webhook": {"rotation_overlap": f"{overlap:g}s"}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("overlap", receiver.url, controls={"signing_secret": OWN_A})
            given = new_secret()
            answer = await api.rotate_secret("overlap", {"signing_secret": given})
            assert answer == {"signing_secret": given}
            rotated = time.time()
        d.restart()  # within the overlap: both secrets still sign
        async with ApiClient(d) as api:
            await api.publish(events(1))
            await eventually(lambda: len(receiver.delivered) == 1)
            first = receiver.delivered[0]
            assert first.at < rotated + overlap, "the restart took longer than the overlap"
            assert verified(given, first) and verified(OWN_A, first)
            await anyio.sleep(max(0.0, rotated + overlap + 0.2 - time.time()))
            await api.publish(events(1, start=1))
            await eventually(lambda: len(receiver.delivered) == 2, within=30)
            second = receiver.delivered[1]
            assert verified(given, second) and not verified(OWN_A, second)
            # The janitor drops the previous secret from the record too.
            await api.wait_logs("overlap", "previous_signing_secret_dropped")
    finally:
        await receiver.close()


async def test_rotation_of_an_integration_on_the_global_secret(
        daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    d = daemon_factory({"webhook": {"signing_secret": GLOBAL}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("was-global", receiver.url)
            new = (await api.rotate_secret("was-global"))["signing_secret"]
            await api.publish(events(1))
            await eventually(lambda: len(receiver.delivered) == 1, within=30)
            # Receivers on the global secret keep verifying during the overlap.
            assert verified(new, receiver.delivered[0]) and verified(GLOBAL,
                                                                   receiver.delivered[0])
            shown = (await api.get("was-global"))["callback_parameters"]
            assert set(shown) == {"callback_url", "signing_secret"}  # no rotation state
    finally:
        await receiver.close()


async def test_rotate_secret_refusals(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        await api.webhook("hook", "http://127.0.0.1:9/x")
        await api.create(id="bucket", s3_parameters={
            "bucket": "a-bucket", "aws_region": "eu-west-1", "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "secret-access-key-0123"})
        for body, code in (({"signing_secret": "not-a-secret"}, "invalid_signing_secret"),
                           ({"signing_secret": "whsec_c2hvcnQ="}, "invalid_signing_secret"),
                           ({"signing_secret": new_secret(), "extra": 1}, "invalid_request"),
                           ([1, 2], "invalid_request")):
            error = await api.request("POST", f"{BASE}/hook/_rotate_secret", body, expect=400)
            assert error["error_code"] == code, error
        error = await api.rotate_secret("bucket", expect=400)
        assert error["error_code"] == "not_signed"
        error = await api.rotate_secret("nobody", expect=404)
        assert error["error_code"] == "integration_not_found"


# ----------------------------------------------------------------------- headers


async def test_headers_arrive_masked_on_read_and_kept_through_a_patch(
        daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    d = daemon_factory()
    headers = {"X-Tenant-Token": "tenant-token-SECRET-0123", "X-Env": "prod eu",
               "x-lower": "v"}
    try:
        async with ApiClient(d) as api:
            await api.webhook("headers", receiver.url, controls={"headers": headers})
            await api.publish(events(1))
            await eventually(lambda: len(receiver.delivered) == 1, within=30)
            shown = (await api.get("headers"))["callback_parameters"]
            assert shown["headers"] == {"X-Tenant-Token": "te***", "X-Env": "***",
                                        "x-lower": "***"}
            await api.stop("headers")
            # A PATCH sending back what GET showed keeps the stored values ...
            params = {**shown, "headers": {**shown["headers"], "X-Env": "staging"}}
            await api.update("headers", {"callback_parameters": params})
            await api.start("headers")
            await api.publish(events(1, start=1))
            await eventually(lambda: len(receiver.delivered) == 2, within=30)
        for received, env in zip(receiver.delivered, ("prod eu", "staging"), strict=True):
            assert received.headers["X-Tenant-Token"] == headers["X-Tenant-Token"]
            assert received.headers["X-Env"] == env
            assert received.headers["x-lower"] == "v"
            assert received.headers["Content-Type"] == "application/json"
        assert "tenant-token-SECRET-0123" not in d.log()
    finally:
        await receiver.close()


BAD_HEADERS: list[tuple[dict[str, Any], str]] = [
    ({"Authorization": "Bearer x"}, "reserved_header"),
    ({"content-type": "text/plain"}, "reserved_header"),
    ({"Content-Length": "5"}, "reserved_header"),
    ({"HOST": "example.com"}, "reserved_header"),
    ({"Idempotency-Key": "k"}, "reserved_header"),
    ({"User-Agent": "me"}, "reserved_header"),
    ({"Webhook-Signature": "v1,x"}, "reserved_header"),
    ({"webhook-anything": "x"}, "reserved_header"),
    ({"Traceparent": "00-x"}, "reserved_header"),
    ({"eventstreamd-replay": "r"}, "reserved_header"),
    ({"Transfer-Encoding": "chunked"}, "reserved_header"),
    ({"Bad Name": "x"}, "invalid_headers"),
    ({"X-Ok": "tab\there"}, "invalid_request"),
    ({"X-Ok": " leading"}, "invalid_request"),
    ({"X-Ok": "é"}, "invalid_request"),
    ({"X-Ok": "x" * 1025}, "invalid_request"),
    ({f"X-{n}": "v" for n in range(21)}, "invalid_request"),
    ({"X-Ok": 5}, "invalid_request"),
]


async def test_bad_and_reserved_headers_are_refused(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        for headers, code in BAD_HEADERS:
            error = await api.request("POST", BASE, {
                "id": "h", "integration_type": "permanent",
                "callback_parameters": {"callback_url": "http://127.0.0.1:9/",
                                        "headers": headers}}, expect=400)
            assert error["error_code"] == code, (headers, error)
            assert "headers" in error["message"], (headers, error)
            for value in headers.values():  # header values are secrets: never echoed
                if isinstance(value, str) and len(value) > 3:
                    assert value not in error["message"], (headers, error)


# -------------------------------------------------------------- misused fields


MISUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"max_rte": 5}, "invalid_request", "callback_parameters.max_rte"),
    ({"max_rate": 0}, "invalid_request", "callback_parameters.max_rate"),
    ({"max_rate": -1}, "invalid_request", "callback_parameters.max_rate"),
    ({"max_rate": "fast"}, "invalid_request", "callback_parameters.max_rate"),
    ({"ordered": "yes"}, "invalid_request", "callback_parameters.ordered"),
    ({"ordering_key": "order_id"}, "ordering_key_without_ordered", "ordering_key"),
    ({"ordered": False, "ordering_key": "order_id"}, "ordering_key_without_ordered",
     "ordering_key"),
    ({"ordered": True, "ordering_key": "a..b"}, "invalid_request",
     "callback_parameters.ordering_key"),
    ({"ordered": True, "ordering_key": ""}, "invalid_request",
     "callback_parameters.ordering_key"),
    ({"stop_after_failing": "5 days"}, "invalid_request",
     "callback_parameters.stop_after_failing"),
    ({"stop_after_failing": 5}, "invalid_request", "callback_parameters.stop_after_failing"),
    ({"signing_secret": "secret"}, "invalid_signing_secret", "signing_secret"),
    ({"headers": ["X-A"]}, "invalid_request", "callback_parameters.headers"),
    ({"previous_signing_secrets": [GLOBAL]}, "invalid_request",
     "callback_parameters.previous_signing_secrets"),
]


async def test_misused_fields_are_400_naming_them(daemon: DaemonProcess) -> None:
    async with ApiClient(daemon) as api:
        await api.webhook("p", "http://127.0.0.1:9/")
        await api.stop("p")
        for params, code, named in MISUSED:
            callback = {"callback_url": "http://127.0.0.1:9/", **params}
            body = {"id": "m", "integration_type": "permanent", "callback_parameters": callback}
            error = await api.request("POST", BASE, body, expect=400)
            assert error["error_code"] == code, (params, error)
            assert named in error["message"], (params, error)
            # The same through PATCH, on a stopped integration.
            error = await api.update("p", {"callback_parameters": callback}, expect=400)
            assert error["error_code"] == code, (params, error)
        assert [i["id"] for i in (await api.request("GET", BASE))["integrations"]] == ["p"]


async def test_controls_round_trip_and_show_in_the_status(daemon: DaemonProcess) -> None:
    params = {"callback_url": "http://127.0.0.1:9/", "max_rate": 2.5, "ordered": True,
              "ordering_key": "customer.id", "stop_after_failing": "12h"}
    async with ApiClient(daemon) as api:
        created = await api.create(id="c", callback_parameters=params)
        assert created["callback_parameters"] == params
        assert (await api.get("c"))["callback_parameters"] == params
    snapshot = await status(daemon)
    [entry] = snapshot["integrations"]
    assert entry["max_rate"] == 2.5 and entry["ordering"] == "key customer.id"
    assert entry["auto_stopped"] is False and entry["stop_reason"] is None


# ---------------------------------------------------------------------- max_rate


async def test_max_rate_paces_deliveries(daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    d = daemon_factory()
    try:
        async with ApiClient(d) as api:
            await api.webhook("paced", receiver.url, controls={"max_rate": 20})
            started = time.time()
            await api.publish(events(60))
            await eventually(lambda: len(receiver.delivered) == 60, within=60)
        # A lower bound only: 60 at 20/s cannot take less than 59 / 20 = 2.95 s.
        assert receiver.delivered[-1].at - started >= 2.5
        assert receiver.delivered[-1].at - receiver.delivered[0].at >= 2.5
    finally:
        await receiver.close()


# ------------------------------------------------------------------ trace context


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@BOTH
async def test_traceparent_is_kept_with_the_events_and_continued(
        daemon_factory: Factory, backend: str) -> None:
    receiver = await Receiver().start()
    d = daemon_factory()
    try:
        async with ApiClient(d) as api:
            await api.webhook("traced", receiver.url)
            for traceparent, name in ((TRACEPARENT, "traced.one"),
                                      ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "bad.one"),
                                      ("not a traceparent", "bad.two"),
                                      (None, "plain.one")):
                code, body = await api.answer(
                    "POST", "/events", [{"name": name, "payload": {"n": n}} for n in range(2)],
                    headers={"traceparent": traceparent} if traceparent else None)
                assert code == 200, body
            await eventually(lambda: len(receiver.delivered) == 8, within=30)
        by_name: dict[str, list[Received]] = {}
        for received in receiver.delivered:
            by_name.setdefault(received.body["name"], []).append(received)
        spans = set()
        for received in by_name["traced.one"]:
            found = _TRACEPARENT.fullmatch(received.headers["traceparent"])
            assert found is not None, received.headers["traceparent"]
            assert found.group(1) == TRACE_ID and found.group(3) == "01"
            assert found.group(2) not in ("00f067aa0ba902b7", "0" * 16)
            spans.add(found.group(2))
            assert set(received.body) == {"tenant", "name", "published_at", "payload"}
        assert len(spans) == 2  # a span of its own per delivery
        for name in ("bad.one", "bad.two", "plain.one"):  # invalid ones are ignored
            assert all("traceparent" not in r.headers for r in by_name[name])
    finally:
        await receiver.close()


async def test_a_retried_rejected_event_carries_its_trace(daemon_factory: Factory) -> None:
    refusing = Switch(answer(400, "bad"))
    receiver = await Receiver(refusing).start()
    d = daemon_factory()
    try:
        async with ApiClient(d) as api:
            await api.webhook("traced", receiver.url)
            code, published = await api.answer(
                "POST", "/events", [{"name": "traced.one", "payload": {}}],
                headers={"traceparent": TRACEPARENT})
            assert code == 200, published
            [entry] = await eventually(lambda: api.rejected("traced"), lambda r: len(r) == 1)
            refusing.flip()
            await api.retry("traced", str(entry["id"]))
        first, retried = receiver.requests
        assert retried in receiver.delivered
        spans = []
        for received in (first, retried):
            found = _TRACEPARENT.fullmatch(received.headers["traceparent"])
            assert found is not None and found.group(1) == TRACE_ID, received.headers
            spans.append(found.group(2))
        assert spans[0] != spans[1]  # the retry is an attempt, with a span of its own
    finally:
        await receiver.close()
