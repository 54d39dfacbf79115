"""Signed webhooks, checked with the Standard Webhooks reference library (`standardwebhooks`),
never with our own verifier: real daemon, real receiver, the bytes as received."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from eventstreamd.sinks import signing
from tests.helpers.api import ApiClient
from tests.helpers.daemon import FAST, Factory
from tests.helpers.receiver import Received, Receiver
from tests.helpers.signing import library_verifies, new_secret
from tests.helpers.wait import eventually

NEW, OLD, OTHER = new_secret(), new_secret(), new_secret()


async def test_deliveries_carry_standard_webhooks_signatures(daemon_factory: Factory) -> None:
    def respond(received: Received, attempt: int) -> web.Response:
        return web.Response(status=500 if attempt == 1 else 200)  # one retry each

    receiver = await Receiver(respond).start()
    d = daemon_factory({"webhook": {**FAST["webhook"], "signing_secret": NEW}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("signed", receiver.url, api_key="receiver-key-123456")
            await api.publish([{"id": f"evt-{i}", "name": "order.created",
                                "payload": {"i": i, "text": "ünïcode ✓"}} for i in range(3)])
            await eventually(lambda: len(receiver.delivered) == 3)
        assert len(receiver.requests) == 6
        for body, headers in ((r.raw, r.headers) for r in receiver.requests):
            assert headers["webhook-id"] == headers["Idempotency-Key"]
            assert headers["webhook-signature"].startswith("v1,")
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
            assert library_verifies(NEW, body, headers)
            assert not library_verifies(OTHER, body, headers)
            assert not library_verifies(NEW, body + b" ", headers)  # exactly the bytes sent
        assert {r.headers["webhook-id"] for r in receiver.requests} == {"evt-0", "evt-1", "evt-2"}
        # The signing secret never reaches the log, in whole or its key part.
        log = d.log()
        assert NEW not in log and NEW.removeprefix("whsec_") not in log
    finally:
        await receiver.close()


async def test_rotation_signs_with_both_secrets(daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    d = daemon_factory({"webhook": {"signing_secret": NEW, "previous_signing_secret": OLD}})
    try:
        async with ApiClient(d) as api:
            await api.webhook("rotating", receiver.url)
            await api.publish([{"name": "order.created", "payload": {}}])
            await eventually(lambda: len(receiver.delivered) == 1)
        body, headers = receiver.requests[0].raw, receiver.requests[0].headers
        assert len(headers["webhook-signature"].split(" ")) == 2
        # A receiver still on the old secret and one already on the new both accept it.
        assert library_verifies(NEW, body, headers) and library_verifies(OLD, body, headers)
        assert not library_verifies(OTHER, body, headers)
    finally:
        await receiver.close()


async def test_unsigned_without_a_secret(daemon_factory: Factory) -> None:
    receiver = await Receiver().start()
    d = daemon_factory()
    try:
        async with ApiClient(d) as api:
            await api.webhook("plain", receiver.url)
            await api.publish([{"name": "order.created", "payload": {}}])
            await eventually(lambda: len(receiver.delivered) == 1)
        headers = {k.lower() for k in receiver.requests[0].headers}
        assert not headers & {"webhook-id", "webhook-timestamp", "webhook-signature"}
    finally:
        await receiver.close()


@pytest.mark.parametrize("tamper", ["none", "body", "id", "old_timestamp"])
def test_listen_verifier_agrees_with_the_library(tamper: str) -> None:
    """`eventstreamd listen` shows a verdict with our own `verify`: it must say what the
    reference library says, on signatures the library itself made."""
    body, message_id, now = b'{"a":1}', "evt-1", int(time.time())
    sent_at = now - 3600 if tamper == "old_timestamp" else now
    signature = Webhook(NEW).sign(message_id, _datetime(sent_at), body.decode())
    headers = {"webhook-id": message_id, "webhook-timestamp": str(sent_at),
               "webhook-signature": signature}
    if tamper == "body":
        body = b'{"a":2}'
    if tamper == "id":
        headers["webhook-id"] = "evt-2"
    ours = signing.verify(NEW, headers, body) == ""
    assert ours is library_verifies(NEW, body, headers) is (tamper == "none")


def _datetime(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
