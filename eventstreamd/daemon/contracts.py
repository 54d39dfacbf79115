"""What the configuration layer and the delivery layer promise each other.

The API (HTTP and control socket) changes integration records in the store;
the supervisor runs sinks from them. The only coupling is this small protocol:
- `integration_changed(id)` after every committed change (create, update,
  start, stop, delete): the supervisor re-reads the record and starts, stops
  or restarts that integration's sink so the change takes effect at once.
- `retry_rejected(record, entry)`: one synchronous delivery attempt of a
  rejected event through the integration's sink; returns on success, raises
  `DeliveryFailed` with a reason otherwise.

The stored integration record (msgpack in the `integrations` database) has:
`id`, `integration_type` ("permanent" | "temporary"), `status` ("running" |
"stopped"), `starts_at` / `ends_at` (RFC 3339 or None), `filter_conditions`
(dict or None), exactly one of `callback_parameters` / `s3_parameters` (dict,
secrets in clear: the store is 0700), `created_at` (RFC 3339), `stopped_at_ms`
(int ms of the last stop, or None; `_start` applies the restart-window rule
with it and clears it, in one transaction), `done` (bool: a temporary
integration that delivered its whole range), `incarnation` (random, new for
every registration: a sink writes only while the record still carries the
incarnation it started with, so nothing of a deleted integration leaks into a
new one with the same id). Each integration's cursor (`cursors` database) is
the next sequence number to deliver; it is set when the integration is
created (head + 1, or the first event at/after `starts_at`).
"""

from __future__ import annotations

from typing import Any, Protocol


class DeliveryFailed(Exception):
    """A delivery attempt did not succeed; `str(exc)` says why (no secrets)."""


class SinkControl(Protocol):
    def integration_changed(self, integration_id: str) -> None: ...

    async def retry_rejected(self, record: dict[str, Any], entry: dict[str, Any]) -> None: ...
