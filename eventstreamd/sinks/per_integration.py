"""State that belongs to an integration rather than to one run of its sink.

An integration's rate limiter and its signing secrets must be shared by every
pipeline that delivers for it at once (the live one, and a replay beside it)
and outlive a sink restart; they must not carry over to a new integration
that reuses a deleted one's id. `PerIntegration` keeps one value per
integration id, made anew when the incarnation changes; the supervisor drops
an id's values when the integration is gone (`SinkEnv.forget`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerIntegration(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._values: dict[str, tuple[str, T]] = {}

    def get(self, integration_id: str, incarnation: str) -> T:
        """The value for this incarnation of the integration, made on first use."""
        held = self._values.get(integration_id)
        if held is None or held[0] != incarnation:
            held = self._values[integration_id] = (incarnation, self._factory())
        return held[1]

    def peek(self, integration_id: str, incarnation: str) -> T | None:
        """The value, when one was made for this incarnation."""
        held = self._values.get(integration_id)
        return held[1] if held is not None and held[0] == incarnation else None

    def forget(self, integration_id: str) -> None:
        self._values.pop(integration_id, None)

    def __len__(self) -> int:
        return len(self._values)
