"""Property-based conformance: schemathesis drives a real daemon through the spec it serves.

Every operation of the spec is exercised with generated requests,
authenticated, and each response must pass the four checks below with zero
failures.

Decisions:
- The schema is loaded from the *installed package* at import time
  (`from_path`), and a test asserts the daemon serves exactly that file at
  `GET /openapi.yaml`. schemathesis' lazy `from_fixture` loader (which would
  fetch it from the daemon) breaks under pytest 9: it writes
  `request.node._nodeid`, which pytest 9 no longer has.
- Generated ids almost never name an existing integration, which would leave
  the 200 paths of most operations unexercised. The daemon's store is seeded
  before it starts (integrations of each kind, rejected events), and a
  schema-level hook mixes those ids into the generated path parameters.
  DELETE operations get integrations of their own so they cannot empty the
  seed that the other operations rely on (pytest runs the operations one
  after another, in the spec's order).
- Nothing listens behind the seeded callback URL, so `_retry` answers 502
  (documented) for a seeded rejected event; the 200 path of `_retry` is covered
  by tests/test_api_retry.py with a SinkControl test double.
- Bounded: `MAX_EXAMPLES` per operation and phase, no deadline (the host may be
  slow; this test is about conformance, not speed).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from eventstreamd.config import Config
from eventstreamd.daemon.contracts import ChangeFeed
from eventstreamd.daemon.integrations import IntegrationService
from eventstreamd.daemon.replays import ReplayService
from eventstreamd.model import RejectedEvent
from eventstreamd.schemas.spec import SPEC_FILE, spec, spec_text
from tests.helpers.daemon import DaemonProcess
from tests.helpers.store import opened, rejected_entry, seed_rejected

BASE_PATH = Config().server.base_path
MAX_EXAMPLES = int(os.environ.get("EVENTSTREAMD_FUZZ_EXAMPLES", "50"))  # make soak: 2000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Loopback only (port 9 refuses): `_retry` really delivers through the supervisor.
WEBHOOK = {"callback_url": "http://127.0.0.1:9/events", "api_key": "seed-api-key-0123456789"}
S3 = {
    "aws_access_key_id": "AKIDSEED",
    "aws_secret_access_key": "seed-aws-secret-0123456789",
    "aws_region": "us-east-1",
    "bucket": "seed-bucket",
    "key_prefix": "seed/prefix",
}
SEEDS: list[dict[str, Any]] = [
    {"id": "seed-webhook", "integration_type": "permanent", "callback_parameters": WEBHOOK},
    {"id": "seed-s3", "integration_type": "permanent", "s3_parameters": S3,
     "starts_at": "2024-01-01T00:00:00Z",
     "filter_conditions": {"event_filter": ["order.created"], "entity_filter": ["return"]}},
    {"id": "seed-temporary", "integration_type": "temporary", "callback_parameters": WEBHOOK,
     "starts_at": "2024-01-01T00:00:00Z", "ends_at": "2024-02-01T00:00:00Z"},
    {"id": "seed-doomed-1", "integration_type": "permanent", "callback_parameters": WEBHOOK},
    {"id": "seed-doomed-2", "integration_type": "permanent", "s3_parameters": S3},
    {"id": "seed-rejects", "integration_type": "permanent", "callback_parameters": WEBHOOK},
    {"id": "seed-retry", "integration_type": "permanent", "callback_parameters": WEBHOOK},
]
STOPPED = ("seed-s3",)  # so PATCH can succeed on it
KEPT_IDS = ["seed-webhook", "seed-s3", "seed-temporary"]
# Each DELETE operation gets integrations of its own, so it cannot empty what
# the other operations (run before or after it) rely on; `_retry` gets one that
# nothing else touches, so no generated PATCH can point the delivery it makes
# at a URL outside this host.
OWNERS_BY_OPERATION = {
    "deleteIntegration": ["seed-doomed-1", "seed-doomed-2"],
    "deleteRejectedEvent": ["seed-rejects"],
    "retryRejectedEvent": ["seed-retry"],
}
REJECTED_PER_INTEGRATION = 3
ERROR_DETAILS = Draft4Validator(spec()["components"]["schemas"]["error_details"])


def _rejected_entry(n: int) -> RejectedEvent:
    return dataclasses.replace(rejected_entry(n), id=str(uuid.UUID(int=n + 1)))


def _rejected_plan() -> dict[str, list[RejectedEvent]]:
    plan: dict[str, list[RejectedEvent]] = {}
    for k, integration_id in enumerate([s["id"] for s in SEEDS]):
        first = k * REJECTED_PER_INTEGRATION
        plan[integration_id] = [_rejected_entry(first + i) for i in range(REJECTED_PER_INTEGRATION)]
    return plan


REJECTED = _rejected_plan()
SEEDED_REPLAYS: list[str] = []  # a replay of seed-webhook (no events: it completes at once)


async def _seed(data_dir: Path) -> None:
    """Integrations and rejected events, written through the service and the store."""
    async with opened(data_dir) as store:
        service = IntegrationService(store, Config(), ChangeFeed(), None)
        for body in SEEDS:
            await service.create(body)
        for integration_id in STOPPED:
            await service.stop(integration_id)
        _, started = await ReplayService(service).replay(
            "seed-webhook", {"starts_at": _an_hour_ago()})
        SEEDED_REPLAYS.append(started["replay_id"])
    await seed_rejected(data_dir, REJECTED)


def _an_hour_ago() -> str:
    return (datetime.now(UTC) - timedelta(hours=1)).isoformat()


@pytest.fixture(scope="module")
def seeded_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    # Generated integrations get no events (none are published here), so their
    # sinks never connect anywhere; S3 would only ever reach loopback.
    proc = DaemonProcess(workdir, {"limits": {"max_integrations": 20},
                                   "s3": {"endpoint_url": "http://127.0.0.1:9"}})
    anyio.run(_seed, proc.data_dir)
    proc.start()
    yield proc
    proc.stop()


def _ids(integration_ids: list[str]) -> list[str]:
    return [e.id for i in integration_ids for e in REJECTED[i]]


# The served document (the seed's plus the marked extensions), and the seed's own as shipped.
schema = schemathesis.openapi.from_dict(spec())
seed_schema = schemathesis.openapi.from_path(
    str(resources.files("eventstreamd.schemas").joinpath(SPEC_FILE))
)


def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
    """Mix seeded ids into the generated ones (DELETE gets its own, see OWNERS_BY_OPERATION)."""
    operation = context.operation
    names = {p.name for p in operation.path_parameters}
    owners = OWNERS_BY_OPERATION.get(operation.definition.raw.get("operationId"), KEPT_IDS)
    # A seeded rejected event of any of those integrations: sometimes it belongs
    # to the chosen one (200), sometimes not (404).
    choices = {"integration_id": st.sampled_from(owners),
               "event_id": st.sampled_from(_ids(owners)),
               "replay_id": st.sampled_from([*SEEDED_REPLAYS, "0123456789abcdef"])}
    seeded = st.fixed_dictionaries({k: v for k, v in choices.items() if k in names})
    return st.one_of(strategy, seeded)


schema.hook(before_generate_path_parameters)
seed_schema.hook(before_generate_path_parameters)


def test_the_daemon_serves_the_packaged_spec(seeded_daemon: DaemonProcess) -> None:
    request = urllib.request.Request(f"{seeded_daemon.url}/openapi.yaml",
                                     headers=seeded_daemon.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read().decode() == spec_text()


def _drops_authorization(case: Any) -> bool:
    """A coverage-phase case that leaves out (or breaks) the bearer token on purpose."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    return getattr(data, "parameter", None) == "Authorization" and \
        getattr(data, "parameter_location", None) == ParameterLocation.HEADER


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_spec(case: Any, seeded_daemon: DaemonProcess) -> None:
    _conforms(case, seeded_daemon)


@seed_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_seed_spec(case: Any,
                                                   seeded_daemon: DaemonProcess) -> None:
    _conforms(case, seeded_daemon)


def _conforms(case: Any, seeded_daemon: DaemonProcess) -> None:
    if _drops_authorization(case):
        # The spec requires bearer auth globally but documents no 401 for any
        # operation: on this one point it is silent, so the status check is
        # replaced by the exact expectation (401 with the Error Details body).
        # Sent as generated: adding our token would undo the case.
        response = case.call_and_validate(
            base_url=f"{seeded_daemon.url}{BASE_PATH}", checks=[not_a_server_error], timeout=30,
        )
        assert response.status_code == 401, response.text
        assert list(ERROR_DETAILS.iter_errors(response.json())) == [], response.text
        return
    base_url = f"{seeded_daemon.url}{BASE_PATH}"
    response = case.call(base_url=base_url, headers=seeded_daemon.headers, timeout=30)
    checks = CHECKS
    if case.operation.definition.raw.get("operationId") == "retryRejectedEvent" \
            and response.status_code == 502:
        # 502 is the spec's documented answer when the integration's sink fails
        # the retry (here: nothing listens behind the seeded callback URL);
        # `not_a_server_error` flags every 5xx, documented or not. The other
        # three checks still hold it to the documented Error Details body.
        checks = [c for c in CHECKS if c is not not_a_server_error]
    case.validate_response(
        response, checks=checks, headers=seeded_daemon.headers,
        transport_kwargs={"base_url": base_url, "headers": seeded_daemon.headers},
    )
