"""A small async client for the daemon's HTTP API, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import orjson

from .daemon import DaemonProcess

BASE = "/api/v1/org/integrations/eventstream"


class ApiClient:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self._session = aiohttp.ClientSession(headers=daemon.headers)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, body: Any = None,
                      expect: int | None = 200) -> Any:
        data = orjson.dumps(body) if body is not None else None
        async with self._session.request(
            method, f"{self.daemon.url}{path}", data=data,
            headers={"Content-Type": "application/json"} if data is not None else None,
        ) as response:
            payload = await response.read()
            if expect is not None:
                assert response.status == expect, (response.status, payload)
            return orjson.loads(payload) if payload else None

    async def publish(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("POST", "/events", events)

    async def create(self, **integration: Any) -> dict[str, Any]:
        integration.setdefault("integration_type", "permanent")
        return await self.request("POST", BASE, integration)

    async def webhook(self, integration_id: str, url: str, api_key: str | None = None,
                      controls: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """A webhook integration; `controls` are more `callback_parameters` (max_rate, ...),
        `extra` more top-level fields."""
        params = {"callback_url": url, **({"api_key": api_key} if api_key else {}),
                  **(controls or {})}
        return await self.create(id=integration_id, callback_parameters=params, **extra)

    async def get(self, integration_id: str, expect: int = 200) -> Any:
        return await self.request("GET", f"{BASE}/{integration_id}", expect=expect)

    async def start(self, integration_id: str) -> dict[str, Any]:
        return await self.request("POST", f"{BASE}/{integration_id}/_start")

    async def stop(self, integration_id: str) -> dict[str, Any]:
        return await self.request("POST", f"{BASE}/{integration_id}/_stop")

    async def patch(self, integration_id: str, body: dict[str, Any],
                    expect: int = 200) -> Any:
        return await self.request("PATCH", f"{BASE}/{integration_id}", body, expect=expect)

    async def rotate_secret(self, integration_id: str, body: dict[str, Any] | None = None,
                            expect: int = 200) -> Any:
        return await self.request("POST", f"{BASE}/{integration_id}/_rotate_secret", body,
                                  expect=expect)

    async def logs(self, integration_id: str) -> list[dict[str, Any]]:
        return (await self.request("GET", f"{BASE}/{integration_id}/logs"))["entries"]

    async def rejected(self, integration_id: str) -> list[dict[str, Any]]:
        result = await self.request("GET", f"{BASE}/{integration_id}/rejected_events")
        return result["rejected_events"]

    async def retry(self, integration_id: str, event_id: str, expect: int = 200) -> Any:
        return await self.request(
            "POST", f"{BASE}/{integration_id}/rejected_events/{event_id}/_retry", expect=expect)

    async def wait_logs(self, integration_id: str, action: str, count: int = 1,
                        timeout: float = 20.0) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while True:
                entries = [e for e in await self.logs(integration_id) if e["action"] == action]
                if len(entries) >= count:
                    return entries
                await anyio.sleep(0.1)


def events(n: int, name: str = "order.created", start: int = 0) -> list[dict[str, Any]]:
    return [{"name": name, "payload": {"i": i}} for i in range(start, start + n)]
