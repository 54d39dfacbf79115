"""Filling a daemon's store: padded events published until it refuses (507)."""

from __future__ import annotations

from typing import Any

from tests.helpers.api import ApiClient


def padded(n: int, start: int, size: int) -> list[dict[str, object]]:
    return [{"name": "order.created", "payload": {"i": start + i, "pad": "x" * size}}
            for i in range(n)]


async def publish_until_full(api: ApiClient, size: int,
                             limit: int = 2000) -> tuple[int, dict[str, Any]]:
    acknowledged = 0
    for _ in range(limit):  # bounded: the store fills long before
        status, body = await api.answer("POST", "/events", padded(10, acknowledged, size))
        if status != 200:
            return acknowledged, {"status": status, **body}
        acknowledged += 10
    raise AssertionError("the store never filled up")
