"""What the API stores survives a restart, in the shape the delivery layer reads.

Between the two runs the test opens the stopped daemon's store in-process to
check the stored integrations (secrets in clear, stopped_at_ms, one target) and
to seed rejected events. Cursors set at creation are checked in-process
(tests/test_api_retry.py), where no sink moves them.
"""

from __future__ import annotations

import uuid
from typing import Any

from eventstreamd.logs import MASK, redactor
from eventstreamd.model import Integration
from eventstreamd.sinks.s3 import S3Target
from eventstreamd.sinks.webhook import WebhookTarget
from tests.helpers.api import (
    API_KEY,
    AWS_SECRET,
    PAST,
    ApiClient,
    local_daemon,
    s3_body,
    webhook_body,
)
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.store import event_of, event_part, opened, rejected_entry, seed_rejected

BACKENDS = EVERY_BACKEND


async def _snapshot(daemon: DaemonProcess) -> dict[str, Any]:
    async with ApiClient(daemon) as api:
        integrations = sorted(await api.list_integrations(), key=lambda i: i["id"])
        return {
            "integrations": integrations,
            "logs": {i["id"]: await api.logs(i["id"]) for i in integrations},
            "rejected": {i["id"]: await api.rejected(i["id"]) for i in integrations},
            "events": {i["id"]: [event_part(await api.get_rejected(i["id"], r["id"]))
                                 for r in await api.rejected(i["id"])] for i in integrations},
        }


async def _stored(daemon: DaemonProcess) -> dict[str, Integration]:
    async with opened(daemon) as store:
        return {i.id: i for i in await store.list_integrations()}


# The daemon runs the real supervisor: filters that match nothing keep the sinks
# quiet, so what this test sees is what the API stored (delivery has its own tests).
QUIET = {"event_filter": ["never.published"]}


async def test_integrations_statuses_logs_and_rejected_events_survive_a_restart(
    daemon_factory: Factory,
) -> None:
    daemon = local_daemon(daemon_factory)
    async with ApiClient(daemon) as api:
        await api.register(webhook_body("hook", filter_conditions=QUIET))
        await api.register(s3_body("bucket", starts_at=PAST, filter_conditions=QUIET))
        await api.stop("bucket")
        await api.register(webhook_body("replay", integration_type="temporary", starts_at=PAST,
                                        ends_at="2999-01-01T00:00:00Z", filter_conditions=QUIET))
    before = await _snapshot(daemon)
    assert daemon.stop() == 0

    records = await _stored(daemon)
    hook, bucket = records["hook"], records["bucket"]
    assert isinstance(hook.target, WebhookTarget) and isinstance(bucket.target, S3Target)
    assert hook.target.api_key == API_KEY  # clear: the sink needs it
    assert bucket.target.aws_secret_access_key == AWS_SECRET
    assert (hook.status, hook.stopped_at_ms, hook.done) == ("running", None, False)
    assert bucket.status == "stopped" and isinstance(bucket.stopped_at_ms, int)
    assert hook.starts_at is None and hook.ends_at is None
    assert all(r.created_at.endswith("Z") for r in records.values())

    entries = {"hook": [rejected_entry(n) for n in range(2)], "bucket": [rejected_entry(5)]}
    await seed_rejected(daemon, entries)
    daemon.start()

    after = await _snapshot(daemon)
    assert after["integrations"] == before["integrations"]  # statuses included
    assert {i["id"]: i["status"] for i in after["integrations"]} == \
        {"hook": "running", "bucket": "stopped", "replay": "running"}
    for integration_id, logs in before["logs"].items():
        # Newest first: whatever came after the restart sits on top of what was there.
        assert after["logs"][integration_id][-len(logs):] == logs
    for integration_id, items in entries.items():
        assert [r["id"] for r in after["rejected"][integration_id]] == \
            [e.id for e in reversed(items)]
        assert after["events"][integration_id] == [event_of(e) for e in reversed(items)]
    assert after["rejected"]["replay"] == []

    # And the API keeps working on what it reloaded.
    async with ApiClient(daemon) as api:
        assert (await api.start("bucket"))["status"] == "running"
        await api.delete("hook")
        assert [i["id"] for i in await api.list_integrations()] == ["bucket", "replay"]


async def test_stored_secrets_are_registered_with_the_redactor_at_startup(
    daemon_factory: Factory,
) -> None:
    # Unique per run: the redactor is process-wide, and this test runs once per backend.
    run = uuid.uuid4().hex[:8]
    secret_key, secret_aws = f"restart-api-key-{run}-0123", f"restart-aws-secret-{run}-0123"
    daemon = local_daemon(daemon_factory)
    async with ApiClient(daemon) as api:
        body = webhook_body("hook")
        body["callback_parameters"]["api_key"] = secret_key
        await api.register(body)
        body = s3_body("bucket")
        body["s3_parameters"]["aws_secret_access_key"] = secret_aws
        await api.register(body)
    assert daemon.stop() == 0
    assert redactor.scrub(secret_key) == secret_key  # this process has not seen them yet

    # Reading the integrations back (as the daemon does at start) registers them.
    await _stored(daemon)
    assert redactor.scrub(f"key={secret_key} aws={secret_aws}") == f"key={MASK} aws={MASK}"
