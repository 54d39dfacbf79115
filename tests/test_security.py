"""Nobody without a token gets in; secrets never come back or reach the logs; limits hold."""

from __future__ import annotations

import hmac
import os
import stat
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from eventstreamd.daemon import auth
from eventstreamd.schemas.spec import seed_spec, spec
from tests.helpers.api import ApiClient, events
from tests.helpers.daemon import DaemonProcess, Factory

BASE = "/api/v1/org/integrations"


def spec_operations(document: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Every operation of the served spec (the seed's and the extensions'), or of
    `document`."""
    ops = []
    for path, item in (document or spec())["paths"].items():
        for method in item:
            if method in ("get", "post", "patch", "delete", "put"):
                concrete = path.replace("{integration_id}", "some-id").replace(
                    "{event_id}", "00000000-0000-0000-0000-000000000000")
                ops.append((method.upper(), BASE + concrete))
    return ops


ROUTES = [*spec_operations(), ("POST", "/events"), ("GET", "/openapi.yaml"), ("GET", "/metrics"),
          ("GET", "/status"), ("GET", "/no/such/route"), ("DELETE", "/healthz/x")]


def test_the_seed_spec_has_twelve_operations() -> None:
    assert len(spec_operations(seed_spec())) == 12
    assert len(spec_operations()) > 12  # and the extensions add theirs, each behind the token


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"},
                                     {"Authorization": "test-token-0123456789"},
                                     {"Authorization": "Bearer "}])
async def test_every_route_but_healthz_needs_a_valid_token(daemon: DaemonProcess,
                                                           headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in ROUTES:
            async with session.request(method, daemon.url + path, headers=headers,
                                       json={}) as r:
                body = await r.json()
                assert r.status == 401, (method, path, r.status)
                assert set(body) == {"error_code", "message", "request_id"}
                assert CIMultiDict(r.headers)["X-Request-Id"] == body["request_id"]
        for public in ("/healthz", "/readyz", "/ui/", "/ui/app.js"):
            async with session.get(daemon.url + public, headers=headers) as r:
                assert r.status == 200


def test_token_comparison_touches_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens = ("first-token-1", "second-token", "third-token-3")
    assert auth.token_matches("first-token-1", tokens)
    assert len(calls) == 3  # no early exit on a match: timing does not tell which token
    calls.clear()
    assert not auth.token_matches("nope", tokens)
    assert len(calls) == 3


async def test_secrets_are_masked_and_never_logged(daemon_factory: Factory) -> None:
    api_key, aws_secret = "webhook-api-key-SECRET-1", "aws-secret-SECRET-2"
    signing = "whsec_c2lnbmluZy1zZWNyZXQtU0VDUkVULTMtMzJieXRlcyE="
    d = daemon_factory({"webhook": {"retry_initial": "50ms", "retry_max": "100ms",
                                    "signing_secret": signing},
                        "s3": {"endpoint_url": "http://127.0.0.1:9", "rotate_interval": "200ms"},
                        "log": {"level": "debug"}})
    async with ApiClient(d) as api:
        created = await api.webhook("hook", "http://127.0.0.1:9/refused", api_key=api_key)
        s3 = await api.create(id="bucket", s3_parameters={
            "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": aws_secret,
            "aws_region": "us-east-1", "bucket": "some-bucket"})
        await api.publish(events(3))
        await api.wait_logs("hook", "retry_triggered", 2)
        await api.wait_logs("bucket", "retry_triggered", 1)
        responses: list[Any] = [created, s3, await api.request("GET", BASE + "/eventstream"),
                                await api.get("hook"), await api.get("bucket"),
                                await api.logs("hook"), await api.logs("bucket"),
                                await api.rejected("hook")]
        async with aiohttp.ClientSession(headers=d.headers) as session, \
                session.get(d.url + "/metrics") as r:
            responses.append(await r.text())
    d.stop()
    text = repr(responses) + d.log()
    assert api_key not in text and aws_secret not in text
    assert signing not in text and signing.removeprefix("whsec_") not in text
    assert api_key[:8] not in repr(responses)  # masked, not merely truncated to a prefix


def test_files_are_private(daemon_factory: Factory) -> None:
    d = daemon_factory({"auth": {"tokens": []}})
    assert stat.S_IMODE(os.stat(d.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.data_dir / "api_token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.data_dir / "lmdb" / "data.mdb").st_mode) == 0o600


async def test_oversized_headers_get_the_json_error(daemon: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            daemon.url + "/healthz", headers={"X-Big": "a" * 20_000}) as r:
        body = await r.json()
        assert r.status == 400
        assert body["error_code"] == "bad_request" and body["request_id"]
        assert CIMultiDict(r.headers)["X-Request-Id"] == body["request_id"]
