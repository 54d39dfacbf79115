"""The replay service: every rule of replays (`POST .../_replay`, `GET .../replays`,
`DELETE .../replays/{replay_id}`), for the HTTP API and the control socket.

Decisions:
- A replay is part of its integration's record (`model.Replay`), so creating,
  cancelling and completing one are transitions of the record through the
  integration service (the one writer of records): the limit of
  `delivery.max_replays` replays running or paused at once is checked in the
  same atomic step that adds one (409 `too_many_replays` beyond), every
  daemon learns of a change where it learns of record changes, and deleting
  the integration deletes its replays. The supervisor runs the active ones
  while it delivers the integration (sinks/replay.py).
- The range is fixed when the replay is created: from the first event
  ingested at or after `starts_at` to the last ingested at or before
  `ends_at` (default now), as sequence numbers from the time index, so the
  count a dry run answers is what the replay then delivers (unless retention
  removes part of it first). Counting never reads the range: without a
  filter it is the range's length, with one the store's per-bucket name
  counts (`Store.count_events`).
- Rules (400 with the error shape): `starts_at` before `ends_at`; neither in
  the future; `starts_at` not older than `storage.retention` (those events
  are gone: "a range within the log"); the integration's sink type must be
  able to replay. The replay's filter is its own `filter_conditions`, else
  the integration's at the time it is created.
- Status: stored "running" until it completes or is cancelled; shown
  "paused" while the integration is stopped (it resumes on `_start`).
  Finished replays stay listed, the newest `KEPT_FINISHED` per integration:
  an older one is dropped (with its progress) when a new replay is created.
- Cancelling answers once the record says so; the supervisor stops the
  replay's sink at once (on another daemon: when it sees the record, within
  about a second), and nothing new is sent after that. Its count is its
  progress, which the stopping sink saves last (the answer's may be a
  moment behind it).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import timedelta
from typing import Any

from .. import codec
from ..logs import kv
from ..model import Change, ChangeView, EventFilterSpec, Integration, LogEntry, Replay
from ..schemas.validation import RequestInvalid, validate_request
from ..sinks.filters import EventFilter
from ..sinks.registry import sink_type
from ..timeutil import format_utc, now_iso, now_utc, to_ms
from .errors import ApiError
from .integrations import IntegrationService, _timestamp, bad_request

log = logging.getLogger("eventstreamd.replays")

KEPT_FINISHED = 10  # completed or cancelled replays kept per integration
STARTED = "replay_started"
CANCELLED = "replay_cancelled"
COMPLETED = "replay_completed"


def replay_not_found(integration_id: str, replay_id: str) -> ApiError:
    shown = replay_id if len(replay_id) <= 64 else replay_id[:61] + "..."
    return ApiError(404, "replay_not_found",
                    f"integration '{integration_id}' has no replay '{shown}'")


def _matches(spec: EventFilterSpec | None) -> Any:
    """The name predicate `Store.count_events` counts with; None counts every event."""
    event_filter = EventFilter.of(spec)
    if event_filter.passes_everything:
        return None
    names = event_filter.names or frozenset()
    entities = event_filter.entities or frozenset()
    return lambda name: name in names or name.split(".", 1)[0] in entities


def _described(replay: Replay) -> str:
    spec = replay.filter
    parts = []
    if spec is not None and spec.event_filter is not None:
        parts.append("named " + (", ".join(spec.event_filter) or "nothing"))
    if spec is not None and spec.entity_filter is not None:
        parts.append("of entities " + (", ".join(spec.entity_filter) or "none"))
    what = "events" + (" " + " or ".join(parts) if parts else "")
    rate = f", at most {replay.max_rate:g}/s" if replay.max_rate else ""
    return f"{replay.events} {what} ingested {replay.starts_at} .. {replay.ends_at}{rate}"


class ReplayService:
    def __init__(self, integrations: IntegrationService) -> None:
        self.integrations = integrations
        self.store = integrations.store
        self.config = integrations.config

    # ------------------------------------------------------------------ create

    async def replay(self, integration_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        """A dry run's count (200), or the replay started (202)."""
        try:
            validate_request("replayIntegration", body)
        except RequestInvalid as exc:
            raise bad_request("invalid_request", str(exc)) from None
        assert isinstance(body, dict)  # the schema says "type: object"
        integration = await self.integrations.record(integration_id)
        if sink_type(integration.kind).build_replay is None:
            raise bad_request("replay_not_supported",
                              f"a {integration.kind} integration cannot replay")
        now = now_utc()
        starts = _timestamp(body, "starts_at")
        ends = _timestamp(body, "ends_at") or now
        assert starts is not None  # required by the schema
        if starts > now:
            raise bad_request("starts_at_in_future", "'starts_at' must not be in the future")
        if ends > now:
            raise bad_request("ends_at_in_future", "'ends_at' must not be in the future")
        if ends <= starts:
            raise bad_request("ends_at_before_starts_at", "'ends_at' must be after 'starts_at'")
        retention = self.config.storage.retention
        if starts < now - timedelta(seconds=retention):
            raise bad_request("starts_at_before_retention", (
                f"'starts_at' is older than the log keeps events (storage.retention, "
                f"{retention:g}s): replay from {format_utc(now - timedelta(seconds=retention))} "
                "or later"))
        raw_filter = body.get("filter_conditions")
        spec = codec.filter_from_api(raw_filter) if raw_filter is not None \
            else integration.filter
        store = self.store
        start_seq = await self.integrations.stored(store.seq_at_or_after(to_ms(starts)))
        end_seq = await self.integrations.stored(store.seq_at_or_after(to_ms(ends) + 1))
        events = await self.integrations.stored(
            store.count_events(start_seq, end_seq, _matches(spec)))
        if body.get("dry_run"):
            return 200, {"events": events}
        rate = body.get("max_rate")
        replay = Replay(
            id=uuid.uuid4().hex[:16], starts_at=format_utc(starts), ends_at=format_utc(ends),
            start_seq=start_seq, end_seq=max(start_seq, end_seq), events=events,
            created_at=now_iso(), filter=spec, max_rate=float(rate) if rate else None)
        limit = self.config.delivery.max_replays

        def change(current: Integration, view: ChangeView) -> Change:
            if current.incarnation != integration.incarnation:
                raise ApiError(409, "integration_replaced",
                               f"integration '{integration_id}' was replaced meanwhile; "
                               "try again")
            active = [r for r in current.replays if r.active]
            if len(active) >= limit:
                raise ApiError(409, "too_many_replays", (
                    f"integration '{integration_id}' runs {len(active)} replays already, the "
                    f"most it may (delivery.max_replays = {limit}); wait for one to finish "
                    "or cancel one"))
            finished = [r for r in current.replays if not r.active]
            dropped = finished[:max(0, len(finished) - KEPT_FINISHED)]
            kept = tuple(r for r in current.replays if r not in dropped)
            return Change(dataclasses.replace(current, replays=(*kept, replay)),
                          logs=(LogEntry(now_iso(), STARTED,
                                         f"Replay {replay.id} started via API: "
                                         f"{_described(replay)}."),),
                          dropped_replays=tuple(r.id for r in dropped))

        changed = await self.integrations.transition(integration_id, change)
        log.info("replay started", extra=kv(integration=integration_id, replay=replay.id,
                                            events=events, start_seq=start_seq,
                                            end_seq=replay.end_seq))
        return 202, {"replay_id": replay.id, "events": events,
                     "status": codec.replay_status(replay, changed)}

    # ------------------------------------------------------------------- reads

    async def list(self, integration_id: str) -> dict[str, Any]:
        integration = await self.integrations.record(integration_id)
        progress = await self.integrations.stored(
            self.store.list_replay_progress(integration_id)) if integration.replays else {}
        return {"replays": [codec.replay_to_api(r, integration, progress.get(r.id))
                            for r in reversed(integration.replays)]}

    # ------------------------------------------------------------------ cancel

    async def cancel(self, integration_id: str, replay_id: str) -> dict[str, Any]:
        integration = await self.integrations.record(integration_id)
        if integration.replay(replay_id) is None:
            raise replay_not_found(integration_id, replay_id)
        progress = await self.integrations.stored(
            self.store.get_replay_progress(integration_id, replay_id))
        delivered = progress.delivered if progress is not None else 0

        def change(current: Integration, view: ChangeView) -> Change:
            replay = current.replay(replay_id)
            if replay is None:
                raise replay_not_found(integration_id, replay_id)
            if not replay.active:
                return Change(current)
            ended = dataclasses.replace(replay, status="cancelled", finished_at=now_iso())
            return Change(_with(current, ended), logs=(LogEntry(
                now_iso(), CANCELLED, f"Replay {replay_id} cancelled via API after about "
                                      f"{delivered} of {replay.events} events."),))

        changed = await self.integrations.transition(integration_id, change)
        replay = changed.replay(replay_id)
        assert replay is not None
        log.info("replay cancelled", extra=kv(integration=integration_id, replay=replay_id))
        return codec.replay_to_api(replay, changed, progress)

    # ---------------------------------------------------------------- complete

    async def complete(self, ran: Integration, replay_id: str) -> bool:
        """The supervisor's: the replay delivered its whole range. Marked completed, with
        its final count, only if it is still this incarnation's and running."""
        progress = await self.integrations.stored(
            self.store.get_replay_progress(ran.id, replay_id))
        delivered = progress.delivered if progress is not None else 0

        def change(current: Integration, view: ChangeView) -> Change:
            replay = current.replay(replay_id)
            if current.incarnation != ran.incarnation or replay is None or not replay.active:
                return Change(current)
            ended = dataclasses.replace(replay, status="completed", finished_at=now_iso())
            return Change(_with(current, ended), logs=(LogEntry(
                now_iso(), COMPLETED, f"Replay {replay_id} completed: {delivered} of "
                                      f"{replay.events} events delivered or, refused by the "
                                      "receiver, kept as rejected events."),))

        try:
            changed = await self.integrations.transition(ran.id, change)
        except ApiError:
            return False  # deleted meanwhile
        done = changed.replay(replay_id)
        completed = done is not None and done.status == "completed"
        if completed:
            log.info("replay completed", extra=kv(integration=ran.id, replay=replay_id))
        return completed


def _with(integration: Integration, replay: Replay) -> Integration:
    return dataclasses.replace(integration, replays=tuple(
        replay if r.id == replay.id else r for r in integration.replays))
