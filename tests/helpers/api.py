"""The daemon's HTTP API from a test: one async client, and the integration bodies tests
register.

Decisions:
- Every call to a documented operation is checked against the OpenAPI spec: its status
  is one the operation documents, its body conforms to the response schema, and it
  carries an `X-Request-Id`, which an error body repeats. A test that calls the API
  through this client checks the spec as a side effect.
- `answer()` is the unchecked way, for paths outside the spec (`/events`, `/healthz`)
  and for requests whose answer the test itself inspects: it returns the status and
  the parsed body. `request()` is `answer()` with the status asserted.
- The client talks to a `DaemonProcess`, or to any base URL with its own headers (an
  app served in-process).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from eventstreamd.config import Config
from eventstreamd.schemas.validation import documented_statuses, response_errors

from .daemon import DaemonProcess, Factory, merge
from .wait import eventually

BASE = Config().server.base_path + "/eventstream"

API_KEY = "webhook-api-key-0123456789"
AWS_SECRET = "aws-secret-access-key-0123456789"
# Loopback only: a daemon runs the real supervisor, and a retry delivers for real (port
# 9 refuses, so it fails fast). Integrations registered with these bodies are never
# contacted otherwise: no events are published to them.
WEBHOOK = {"callback_url": "http://127.0.0.1:9/events", "api_key": API_KEY}
S3 = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": AWS_SECRET,
    "aws_region": "us-east-1",
    "bucket": "exports",
    "key_prefix": "team/stream",
}
# Where any S3 sink would connect: nowhere but loopback.
LOCAL_ONLY = {"s3": {"endpoint_url": "http://127.0.0.1:9"}}
PAST = "2024-01-01T00:00:00.000Z"
LATER = "2024-02-01T00:00:00.000Z"
FUTURE = "2999-01-01T00:00:00Z"


def webhook_body(integration_id: str, **extra: Any) -> dict[str, Any]:
    """A permanent webhook integration to `WEBHOOK` (loopback port 9)."""
    return {"id": integration_id, "integration_type": "permanent",
            "callback_parameters": dict(WEBHOOK), **extra}


def s3_body(integration_id: str, **extra: Any) -> dict[str, Any]:
    """A permanent S3 integration with the `S3` parameters (see `LOCAL_ONLY`)."""
    return {"id": integration_id, "integration_type": "permanent", "s3_parameters": dict(S3),
            **extra}


def local_daemon(factory: Factory, settings: dict[str, Any] | None = None) -> DaemonProcess:
    """A daemon whose S3 sinks could reach nothing but loopback."""
    return factory(merge(LOCAL_ONLY, settings or {}))


class ApiClient:
    def __init__(self, daemon: DaemonProcess | None = None, *, url: str = "",
                 headers: dict[str, str] | None = None) -> None:
        self.url = daemon.url if daemon is not None else url
        self._session = aiohttp.ClientSession(
            headers=daemon.headers if daemon is not None else headers,
            timeout=aiohttp.ClientTimeout(total=60))

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    # ------------------------------------------------------------ unchecked

    async def answer(self, method: str, path: str, body: Any = None, *,
                     raw: bytes | None = None,
                     headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """The status and parsed body (the text, when it is not JSON); a connection
        failure raises `aiohttp.ClientError`."""
        status, payload, _ = await self._send(method, path, body, raw, headers)
        try:
            return status, orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            return status, payload.decode(errors="replace")

    async def request(self, method: str, path: str, body: Any = None,
                      expect: int | None = 200) -> Any:
        status, parsed = await self.answer(method, path, body)
        if expect is not None:
            assert status == expect, (status, parsed)
        return parsed

    async def publish(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        answer: dict[str, Any] = await self.request("POST", "/events", events)
        return answer

    async def _send(self, method: str, path: str, body: Any, raw: bytes | None,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes, str | None]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        sent = {"Content-Type": "application/json"} if data is not None else {}
        async with self._session.request(
            method, f"{self.url}{path}", data=data, headers={**sent, **(headers or {})},
        ) as response:
            return response.status, await response.read(), response.headers.get("X-Request-Id")

    # ----------------------------------------------- the spec's operations

    async def call(self, operation_id: str, method: str, path: str, *, expect: int,
                   body: Any = None, raw: bytes | None = None) -> Any:
        """One documented operation, its answer checked against the spec."""
        status, payload, request_id = await self._send(method, path, body, raw)
        assert status == expect, (status, payload)
        assert status in documented_statuses(operation_id), (operation_id, status)
        parsed = orjson.loads(payload) if payload else None
        assert response_errors(operation_id, status, parsed) == [], (operation_id, parsed)
        assert request_id
        if status >= 400:
            assert parsed is not None and parsed["request_id"] == request_id
        return parsed

    async def list_integrations(self) -> list[dict[str, Any]]:
        listed = await self.call("listIntegrations", "GET", BASE, expect=200)
        integrations: list[dict[str, Any]] = listed["integrations"]
        return integrations

    async def register(self, body: Any = None, *, expect: int = 200,
                       raw: bytes | None = None) -> Any:
        """Exactly this body (or these bytes)."""
        return await self.call("registerIntegration", "POST", BASE, body=body, raw=raw,
                               expect=expect)

    async def create(self, **integration: Any) -> dict[str, Any]:
        """A permanent integration unless the fields say otherwise."""
        created: dict[str, Any] = await self.register({"integration_type": "permanent",
                                                       **integration})
        return created

    async def webhook(self, integration_id: str, url: str, api_key: str | None = None,
                      controls: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """A webhook integration; `controls` are more `callback_parameters` (max_rate, ...),
        `extra` more top-level fields."""
        params = {"callback_url": url, **({"api_key": api_key} if api_key else {}),
                  **(controls or {})}
        return await self.create(id=integration_id, callback_parameters=params, **extra)

    async def get(self, integration_id: str, *, expect: int = 200) -> Any:
        return await self.call("getIntegration", "GET", f"{BASE}/{integration_id}", expect=expect)

    async def update(self, integration_id: str, body: Any = None, *, expect: int = 200,
                     raw: bytes | None = None) -> Any:
        return await self.call("updateIntegration", "PATCH", f"{BASE}/{integration_id}",
                               body=body, raw=raw, expect=expect)

    async def delete(self, integration_id: str, *, expect: int = 200) -> Any:
        return await self.call("deleteIntegration", "DELETE", f"{BASE}/{integration_id}",
                               expect=expect)

    async def start(self, integration_id: str, *, expect: int = 200) -> Any:
        return await self.call("startIntegration", "POST", f"{BASE}/{integration_id}/_start",
                               expect=expect)

    async def stop(self, integration_id: str, *, expect: int = 200) -> Any:
        return await self.call("stopIntegration", "POST", f"{BASE}/{integration_id}/_stop",
                               expect=expect)

    async def logs(self, integration_id: str, *, expect: int = 200) -> Any:
        """The log entries (the error body, when `expect` is not 200)."""
        result = await self.call("listIntegrationLogEntries", "GET",
                                 f"{BASE}/{integration_id}/logs", expect=expect)
        return result["entries"] if expect == 200 else result

    async def rejected(self, integration_id: str, *, expect: int = 200) -> Any:
        """The rejected events (the error body, when `expect` is not 200)."""
        result = await self.call("listRejectedEvents", "GET",
                                 f"{BASE}/{integration_id}/rejected_events", expect=expect)
        return result["rejected_events"] if expect == 200 else result

    async def get_rejected(self, integration_id: str, event_id: str, *,
                           expect: int = 200) -> Any:
        return await self.call("getRejectedEvent", "GET",
                               f"{BASE}/{integration_id}/rejected_events/{event_id}",
                               expect=expect)

    async def delete_rejected(self, integration_id: str, event_id: str, *,
                              expect: int = 200) -> Any:
        return await self.call("deleteRejectedEvent", "DELETE",
                               f"{BASE}/{integration_id}/rejected_events/{event_id}",
                               expect=expect)

    async def retry(self, integration_id: str, event_id: str, *, expect: int = 200) -> Any:
        return await self.call("retryRejectedEvent", "POST",
                               f"{BASE}/{integration_id}/rejected_events/{event_id}/_retry",
                               expect=expect)

    async def rotate_secret(self, integration_id: str, body: Any = None, *,
                            expect: int = 200) -> Any:
        return await self.call("rotateSigningSecret", "POST",
                               f"{BASE}/{integration_id}/_rotate_secret", body=body,
                               expect=expect)

    async def replay(self, integration_id: str, body: Any, *, expect: int = 202) -> Any:
        """`POST .../_replay` (a dry run answers 200)."""
        return await self.call("replayIntegration", "POST", f"{BASE}/{integration_id}/_replay",
                               body=body, expect=expect)

    async def replays(self, integration_id: str, *, expect: int = 200) -> Any:
        """The replays (the error body, when `expect` is not 200)."""
        result = await self.call("listReplays", "GET", f"{BASE}/{integration_id}/replays",
                                 expect=expect)
        return result["replays"] if expect == 200 else result

    async def cancel_replay(self, integration_id: str, replay_id: str, *,
                            expect: int = 200) -> Any:
        return await self.call("cancelReplay", "DELETE",
                               f"{BASE}/{integration_id}/replays/{replay_id}", expect=expect)

    async def wait_replay(self, integration_id: str, replay_id: str, status: str = "completed",
                          timeout: float = 30.0) -> dict[str, Any]:
        """The replay, once its status is `status`."""
        async def found() -> dict[str, Any]:
            return next((r for r in await self.replays(integration_id)
                         if r["replay_id"] == replay_id), {})

        return await eventually(
            found, lambda r: r.get("status") == status, within=timeout,
            every=0.1, what=f"replay {replay_id} of {integration_id} {status}")

    async def wait_logs(self, integration_id: str, action: str, count: int = 1,
                        timeout: float = 20.0) -> list[dict[str, Any]]:
        """The integration's log entries of `action`, once there are `count` of them."""
        return await eventually(
            lambda: self._entries(integration_id, action), lambda found: len(found) >= count,
            within=timeout, every=0.1, what=f"{count} x {action} in the log of {integration_id}")

    async def _entries(self, integration_id: str, action: str) -> list[dict[str, Any]]:
        return [e for e in await self.logs(integration_id) if e["action"] == action]


def events(n: int, name: str = "order.created", start: int = 0) -> list[dict[str, Any]]:
    return [{"name": name, "payload": {"i": i}} for i in range(start, start + n)]
