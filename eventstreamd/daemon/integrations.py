"""The integration service: every rule of integrations, and their only writer.

Decisions:
- Both front ends (the aiohttp handlers in `routes.py`, the control socket) call
  these methods and nothing else, so a rule cannot hold on one path and not
  the other. Request bodies are validated here against the spec's own schemas
  (`eventstreamd.schemas.validation`), then by the target's sink type
  (`SinkType.check`: what no delivery could ever succeed with). Errors are
  `ApiError`s (status, error_code, message).
- The service is the one writer of integration records: register, patch,
  start, stop, complete (the supervisor asks when a temporary integration has
  delivered its range), auto-stop (the supervisor asks when a sink gave up),
  rotate a signing secret, expire and settle rotations (the janitor) and
  delete. The janitor reads every record (once per round) only when a
  deletion or the end of a rotation's overlap is due (it knows when the next
  one is), when a completion or a rotation here wakes it, or every
  `JANITOR_EVERY`: never once a second whatever the number of integrations.
  Each is one
  `Store.change_integration` transition — a pure function of the current
  record — so two racing requests cannot both pass a check (duplicate id, the
  integration limit, "stop before update"), whatever the backend.
- After every committed change the `ChangeFeed` is told the id, and the
  supervisor re-reads the record; also after `_start`/`_stop` that changed
  nothing, which lets a user nudge a sink that is not running when it should.
- Replace semantics for PATCH: a target object in the body replaces the stored
  one (switching webhook <-> S3 drops the other). A secret sent back exactly
  as we returned it (masked) keeps the stored secret.
- The seed's spec allows extra properties in a new integration (no
  `additionalProperties: false`); they are ignored and never stored. Inside a
  target object (`callback_parameters`, `s3_parameters`) the served spec
  lists every field, extensions included, and refuses any other: a typo
  there would otherwise silently lose a setting (`schemas/spec.py`).
- Rejected events are shown with what ties them to what was published, within
  the spec's schemas (whose entries allow further properties): a list entry
  is `id`, `created_at` plus `event_id`, `seq`, `status`, `reason` (an
  excerpt), `attempts`, `deliverable`; the detail is the event as sent plus
  that context under `rejection` (`codec.rejected_list_entry`,
  `codec.rejected_event_view`).
- A target nested inside another (`s3_parameters` inside
  `callback_parameters`) is refused saying where it belongs, not with the
  schema's complaint about the outer one's missing field.
- `_rotate_secret` (a webhook's signing secret) works while the integration
  runs: one transition writes the new secret with its rotation state (the
  previous secret, until when: `webhook.rotation_overlap`), and before the
  answer the sink type's `refresh` updates what the running sink signs with,
  so every attempt this daemon starts after the answer carries the new
  signature. With several daemons, the one delivering the integration learns
  of it through the record, within the change-propagation delay (about a
  second); until then its deliveries carry the previous secret's signature
  (which still verifies during the overlap). The janitor drops a previous
  secret from the record once its overlap has ended.
- Auto-stop: when a sink gives up (every delivery attempt failed for the
  integration's `stop_after_failing`), the supervisor asks `auto_stop`:
  status `stopped`, a log entry `auto_stopped` with the last error, and the
  reason kept in the record (`auto_stop`) for the status and the metrics.
  Its cursor stays; `_start` resumes there with nothing skipped (the
  restart-window rule is for stops a user made) and clears the reason.
- A rejected event's `_retry` is one attempt through the sink type
  (`SinkType.retry_rejected`). It first claims the entry in the store
  (`claim_rejected`), so one retry of an event runs at a time, whatever the
  number of concurrent requests or daemons: the others get 409
  `retry_in_progress`, and none can send it a second time (a delete meanwhile
  makes later ones 404). Its outcome is written fenced by the incarnation the
  retry started with, so a retry that finishes after the integration was
  deleted and re-created leaves the new one alone. A retry that reached the
  receiver and failed updates the entry in place (the store adds the attempt
  to `attempts` in the step that releases the claim, and keeps the latest
  `reason` and `status`), so the list shows what the last try got; one that
  could not be sent only releases the claim and logs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import orjson

from .. import codec
from ..config import SIGNING_PREFIX, Config, valid_signing_secret
from ..logs import kv
from ..model import (
    Change,
    ChangeView,
    EventFilterSpec,
    Integration,
    IntegrationType,
    LogEntry,
    RejectedEvent,
    RetryClaim,
    RetryOutcome,
    TargetParams,
)
from ..naming import valid_integration_id
from ..schemas.validation import RequestInvalid, validate_request
from ..sinks.base import DeliveryFailed, SinkEnv, TargetRefused
from ..sinks.loop import resume_position
from ..sinks.registry import SINK_TYPES, sink_type
from ..storage.base import (
    IntegrationExists,
    IntegrationLimitReached,
    IntegrationMissing,
    RetryInProgress,
    Store,
    StoreFull,
    StoreUnavailable,
)
from ..timeouts import move_on_after
from ..timeutil import format_utc, ms_to_iso, now_iso, now_utc, parse_rfc3339, to_ms
from .contracts import ChangeFeed
from .errors import ApiError

log = logging.getLogger("eventstreamd.integrations")
T = TypeVar("T")

# Fields a PATCH may not carry, with the reason the client gets.
_IMMUTABLE = {
    "id": "the id of an integration cannot be changed",
    "integration_type": "the integration type cannot be changed after creation",
    "starts_at": "the start date cannot be changed after creation",
    "ends_at": "the end date cannot be changed after creation",
    "status": "the status is changed with _start and _stop, not by an update",
}
# Seconds between the janitor's rounds when nothing is due sooner (a completion or rotation
# here wakes it; one on another daemon is found within this).
JANITOR_EVERY = 30.0

# Log entries this service writes (the delivery layer adds its own).
CREATED = ("integration_created", "Created via API.")
UPDATED = ("integration_updated", "Updated via API.")
STARTED = ("integration_started", "Started via API.")
STOPPED = ("integration_stopped", "Stopped via API.")
ROTATED = "signing_secret_rotated"
ROTATION_ENDED = "previous_signing_secret_dropped"
AUTO_STOPPED = "auto_stopped"
SECRET_BYTES = 32  # a generated signing secret's key
RETRIED = "rejected_event_retried"
RETRY_FAILED = "rejected_event_retry_failed"


def _entry(action_reason: tuple[str, str]) -> LogEntry:
    return LogEntry(now_iso(), *action_reason)


def _shown(value: str, limit: int = 64) -> str:
    """An id from the URL, shortened for an error message (paths can be long)."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def not_found(integration_id: str) -> ApiError:
    return ApiError(404, "integration_not_found",
                    f"no integration with id '{_shown(integration_id)}'")


def rejected_not_found(integration_id: str, event_id: str) -> ApiError:
    return ApiError(404, "rejected_event_not_found",
                    f"integration '{integration_id}' has no rejected event '{_shown(event_id)}'")


def bad_request(error_code: str, message: str) -> ApiError:
    return ApiError(400, error_code, message)


# ------------------------------------------------------------ body checking


def _new_signing_secret() -> str:
    return SIGNING_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()



def _validated(operation_id: str, body: Any, config: Config) -> dict[str, Any]:
    fields = codec.target_field_names(SINK_TYPES)
    if isinstance(body, dict):
        for outer in fields:  # a target nested in another: say where it goes
            inner = next((f for f in fields if isinstance(body.get(outer), dict)
                          and f in body[outer]), None)
            if inner is not None:
                raise bad_request("misplaced_target",
                                  f"'{inner}' belongs at the top level of the body, beside "
                                  f"'id' and instead of '{outer}', not inside '{outer}'")
    if isinstance(body, dict) and sum(body.get(f) is not None for f in fields) > 1:
        raise bad_request("ambiguous_target", "give one target, not both: " + " or ".join(
            f"'{f}' ({codec.target_for_field(SINK_TYPES, f).kind})" for f in sorted(fields)))
    try:
        validate_request(operation_id, body)
    except RequestInvalid as exc:
        raise bad_request("invalid_request", str(exc)) from None
    assert isinstance(body, dict)  # the schema says "type: object"
    return body


def _check_target(target: TargetParams, config: Config) -> None:
    """The sink type's own check: what no delivery could ever succeed with."""
    try:
        sink_type(target.kind).check(target, config)
    except TargetRefused as exc:
        raise bad_request(exc.error_code, exc.message) from None


def _timestamp(body: dict[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        moment = parse_rfc3339(value)
        format_utc(moment)  # a far-off offset may not fit in UTC's year range
    except (ValueError, OverflowError):
        raise bad_request(
            "invalid_timestamp", f"'{key}' is not a date and time that can be represented"
        ) from None
    return moment


def _check_dates(integration_type: str, starts: datetime | None, ends: datetime | None) -> None:
    if starts is not None and starts > now_utc():
        raise bad_request("starts_at_in_future", "'starts_at' must not be in the future")
    if integration_type == "temporary":
        if starts is None:
            raise bad_request("starts_at_required",
                              "'starts_at' is required for temporary integrations")
        if ends is None:
            raise bad_request("ends_at_required",
                              "'ends_at' is required for temporary integrations")
        if ends <= starts:
            raise bad_request("ends_at_before_starts_at", "'ends_at' must be after 'starts_at'")
    elif ends is not None:
        raise bad_request(
            "ends_at_not_allowed",
            "'ends_at' is only allowed for temporary integrations; permanent ones never end",
        )


# ------------------------------------------------------------------ service


class IntegrationService:
    def __init__(self, store: Store, config: Config, changes: ChangeFeed, env: SinkEnv | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.changes = changes
        self.env = env  # what a rejected event's retry delivers with
        self.clock = clock  # injectable, so the restart-window rule is testable without sleeping
        # When the janitor next has work (a completed temporary to delete, a rotation's
        # overlap to end), wall clock; None: nothing is due.
        self._next_due: float | None = None
        self._wake: anyio.Event | None = None  # wakes the janitor (made by it)

    # ------------------------------------------------------------- plumbing

    async def _do(self, operation: Awaitable[T]) -> T:
        """Await a store operation, mapping the store's failures to API errors."""
        try:
            return await operation
        except StoreFull as exc:
            raise ApiError(507, "insufficient_storage", str(exc)) from None
        except StoreUnavailable as exc:
            raise ApiError(503, "unavailable", f"the store is unavailable: {exc}") from None
        except IntegrationMissing as exc:
            raise not_found(str(exc)) from None

    async def _integration(self, integration_id: str) -> Integration:
        found = await self._do(self.store.get_integration(integration_id)) \
            if valid_integration_id(integration_id) else None
        if found is None:
            raise not_found(integration_id)
        return found

    async def _change(self, integration_id: str,
                      change: Callable[[Integration, ChangeView], Change]) -> Integration:
        if not valid_integration_id(integration_id):
            raise not_found(integration_id)
        changed = await self._do(self.store.change_integration(integration_id, change))
        self.changes.notify(integration_id)
        return changed

    # What the replay service (replays.py) writes and reads through: the same rules for
    # store failures, unknown ids and change notification as every operation here.
    stored = _do
    record = _integration
    transition = _change

    # ------------------------------------------------------------------ reads

    async def list_integrations(self) -> list[dict[str, Any]]:
        return [codec.to_api(i) for i in await self._do(self.store.list_integrations())]

    async def get(self, integration_id: str) -> dict[str, Any]:
        return codec.to_api(await self._integration(integration_id))

    async def logs(self, integration_id: str) -> list[dict[str, Any]]:
        """The newest `limits.log_entries` entries, newest first."""
        await self._integration(integration_id)
        entries = await self._do(self.store.list_logs(integration_id,
                                                      self.config.limits.log_entries))
        return [e.to_api() for e in entries]

    async def list_rejected(self, integration_id: str) -> list[dict[str, Any]]:
        await self._integration(integration_id)
        return [codec.rejected_list_entry(e)
                for e in await self._do(self.store.list_rejected(integration_id))]

    async def get_rejected(self, integration_id: str, event_id: str) -> orjson.Fragment:
        return codec.rejected_event_view((await self._rejected(integration_id, event_id))[1])

    async def _rejected(self, integration_id: str,
                        event_id: str) -> tuple[Integration, RejectedEvent]:
        integration = await self._integration(integration_id)
        entry = await self._do(self.store.get_rejected(integration_id, event_id))
        if entry is None:
            raise rejected_not_found(integration_id, event_id)
        return integration, entry

    # ----------------------------------------------------------------- writes

    async def create(self, body: Any) -> dict[str, Any]:
        body = _validated("registerIntegration", body, self.config)
        integration_type = body["integration_type"]
        starts = _timestamp(body, "starts_at")
        ends = _timestamp(body, "ends_at")
        _check_dates(integration_type, starts, ends)
        target = codec.target_from_api(SINK_TYPES, body)
        assert target is not None  # the schema's oneOf requires one
        integration = await self.register(
            body["id"], integration_type, target, starts=starts, ends=ends,
            filter_spec=codec.filter_from_api(body.get("filter_conditions")))
        return codec.to_api(integration)

    async def register(self, integration_id: str, integration_type: IntegrationType,
                       target: TargetParams, *, starts: datetime | None = None,
                       ends: datetime | None = None,
                       filter_spec: EventFilterSpec | None = None) -> Integration:
        """Register an integration from checked parts (the API's `create`, and tests)."""
        _check_target(target, self.config)
        integration = Integration(
            id=integration_id, type=integration_type,
            status="running",  # new integrations start automatically
            started_at_ms=int(self.clock() * 1000),
            target=target,
            # Tells this integration apart from an earlier one with the same id, so a
            # sink still finishing for a deleted integration cannot write into it.
            incarnation=uuid.uuid4().hex,
            created_at=now_iso(),
            starts_at=format_utc(starts) if starts else None,
            ends_at=format_utc(ends) if ends else None,
            filter=filter_spec,
        )
        # The first event to deliver. Events committed between here and the create
        # arrived after the request, so delivering them is right for "from now".
        cursor = (await self._do(self.store.seq_at_or_after(to_ms(starts))) if starts
                  else self.store.head + 1)
        limit = self.config.limits.max_integrations
        try:
            await self._do(self.store.create_integration(
                integration, cursor=cursor, limit=limit, log=_entry(CREATED)))
        except IntegrationExists:
            raise ApiError(409, "integration_exists",
                           f"an integration with id '{integration_id}' already exists") from None
        except IntegrationLimitReached:
            raise bad_request("max_integrations_reached",
                              f"at most {limit} integrations can be registered; "
                              "delete one first") from None
        log.info("integration created", extra=kv(
            integration=integration_id, type=integration_type, kind=target.kind, cursor=cursor))
        self.changes.notify(integration_id)
        return integration

    async def update(self, integration_id: str, body: Any) -> dict[str, Any]:
        if isinstance(body, dict):
            for key, reason in _IMMUTABLE.items():
                if key in body:
                    raise bad_request("immutable_field", f"'{key}': {reason}")
        body = _validated("updateIntegration", body, self.config)
        target = codec.target_from_api(SINK_TYPES, body)
        filters = body.get("filter_conditions")
        filter_spec = codec.filter_from_api(filters)

        def change(current: Integration, view: ChangeView) -> Change:
            if current.type == "temporary":
                raise bad_request("temporary_not_updatable",
                                  "temporary integrations cannot be updated; delete it and "
                                  "register a new one")
            if current.status != "stopped":
                raise bad_request("integration_running",
                                  "stop the integration before updating it (_stop, wait until "
                                  "its status is 'stopped', update, then _start)")
            updated = current
            if target is not None:
                # Checked once the secrets sent back masked are the stored ones again.
                kept = codec.keep_masked_secrets(current.target, target)
                _check_target(kept, self.config)
                updated = dataclasses.replace(updated, target=kept)
            if filters is not None:
                updated = dataclasses.replace(updated, filter=filter_spec)
            return Change(updated, logs=(_entry(UPDATED),))

        integration = await self._change(integration_id, change)
        log.info("integration updated", extra=kv(integration=integration_id,
                                                 kind=integration.kind))
        return codec.to_api(integration)

    async def delete(self, integration_id: str) -> None:
        """Remove the integration with its cursor, logs and rejected events."""
        if not valid_integration_id(integration_id) or \
                not await self._do(self.store.delete_integration(integration_id)):
            raise not_found(integration_id)
        log.info("integration deleted", extra=kv(integration=integration_id))
        self.changes.notify(integration_id)

    async def start(self, integration_id: str) -> dict[str, Any]:
        """Idempotent. Starting applies the restart-window rule in the same atomic step:
        after a stop longer than `limits.restart_window` the cursor skips to the head
        and the log says how many events were skipped."""
        now = int(self.clock() * 1000)
        window_ms = int(self.config.limits.restart_window * 1000)

        def change(current: Integration, view: ChangeView) -> Change:
            if current.status == "running":
                return Change(current)
            # After an auto-stop nothing is skipped: its events were never given up.
            stopped_at = None if current.auto_stop is not None else current.stopped_at_ms
            position, skipped = resume_position(
                view.cursor if view.cursor is not None else view.head + 1, view.head,
                stopped_at, now, window_ms)
            logs: list[LogEntry] = []
            if skipped:
                logs.append(LogEntry(now_iso(), "events_skipped",
                                     "Stopped for longer than the restart window; skipped "
                                     f"{skipped} events."))
            logs.append(_entry(STARTED))
            return Change(dataclasses.replace(current, status="running", stopped_at_ms=None,
                                              started_at_ms=now, auto_stop=None),
                          cursor=position if skipped else None, logs=tuple(logs))

        integration = await self._change(integration_id, change)
        log.info("integration running", extra=kv(integration=integration_id))
        return codec.to_api(integration)

    async def stop(self, integration_id: str) -> dict[str, Any]:
        now = int(self.clock() * 1000)

        def change(current: Integration, view: ChangeView) -> Change:
            if current.status == "stopped":
                return Change(current)
            return Change(dataclasses.replace(current, status="stopped", stopped_at_ms=now),
                          logs=(_entry(STOPPED),))

        integration = await self._change(integration_id, change)
        log.info("integration stopped", extra=kv(integration=integration_id))
        return codec.to_api(integration)

    async def auto_stop(self, ran: Integration, reason: str) -> bool:
        """Its sink gave up (every delivery attempt failed for `stop_after_failing`): stop
        it, keeping its cursor — only if it is still the one that ran, and running. True
        when it was stopped."""
        now = int(self.clock() * 1000)

        def change(current: Integration, view: ChangeView) -> Change:
            if current.incarnation != ran.incarnation or current.status != "running":
                return Change(current)  # deleted, replaced or stopped meanwhile
            return Change(dataclasses.replace(current, status="stopped", stopped_at_ms=now,
                                              auto_stop=reason),
                          logs=(LogEntry(now_iso(), AUTO_STOPPED, reason),))

        try:
            changed = await self._change(ran.id, change)
        except ApiError:
            return False  # deleted meanwhile
        stopped = changed.incarnation == ran.incarnation and changed.auto_stop is not None
        if stopped:
            log.warning("integration stopped automatically: its deliveries kept failing",
                        extra=kv(integration=ran.id))
        return stopped

    async def rotate_secret(self, integration_id: str, body: Any) -> dict[str, str]:
        """A new signing secret (the one given, or a generated one) for the integration,
        while it runs or not; the answer is the only place it is shown in clear."""
        body = _validated("rotateSigningSecret", {} if body is None else body, self.config)
        secret = body.get("signing_secret") or _new_signing_secret()
        if not valid_signing_secret(secret):
            raise bad_request("invalid_signing_secret",
                              "'signing_secret' must be \"whsec_\" followed by the base64 of "
                              "24 to 64 random bytes")
        now = int(self.clock() * 1000)
        overlap = self.config.webhook.rotation_overlap

        def change(current: Integration, view: ChangeView) -> Change:
            rotate = sink_type(current.kind).rotate_secret
            if rotate is None:
                raise bad_request("not_signed",
                                  f"a {current.kind} integration has no signing secret")
            rotated = rotate(current.target, secret, now, self.config)
            reason = "Signing secret rotated via API"
            reason += (f"; the previous one signs too until {ms_to_iso(now + int(overlap * 1000))}."
                       if overlap > 0 else "; the previous one no longer signs.")
            return Change(dataclasses.replace(current, target=rotated),
                          logs=(LogEntry(now_iso(), ROTATED, reason),))

        integration = await self._change(integration_id, change)
        codec.registered(integration.target)  # before anything could log it
        if self.env is not None:
            sink_type(integration.kind).refresh(self.env, integration)
        log.info("signing secret rotated", extra=kv(integration=integration_id))
        self._wake_janitor()  # the old secret's overlap ends on its schedule
        return {"signing_secret": secret}

    async def settle_rotations(self, records: list[Integration]) -> list[int]:
        """Drop previous signing secrets whose overlap has ended from their records; when
        the overlaps still running end (ms)."""
        now = int(self.clock() * 1000)
        due: list[int] = []
        for integration in records:
            if integration.target.settled(now) is integration.target:
                ends = integration.target.settles_at_ms()
                if ends is not None:
                    due.append(ends)
                continue

            def change(current: Integration, view: ChangeView) -> Change:
                settled = current.target.settled(now)
                if settled is current.target:
                    return Change(current)
                return Change(dataclasses.replace(current, target=settled), logs=(LogEntry(
                    now_iso(), ROTATION_ENDED,
                    "The rotation's overlap ended: only the new signing secret signs."),))

            try:
                await self._change(integration.id, change)
            except ApiError:
                continue  # deleted meanwhile
        return due

    async def complete(self, ran: Integration) -> bool:
        """A temporary integration delivered its whole range: mark it stopped and done —
        only if it is still the one that ran, and running. True when it was marked."""
        now = int(self.clock() * 1000)
        reason = (f"All events up to {ran.ends_at} were sent; stopped automatically. "
                  f"Deleted in {self.config.webhook.temporary_delete_after:g}s.")

        def change(current: Integration, view: ChangeView) -> Change:
            if current.incarnation != ran.incarnation or current.status != "running":
                return Change(current)  # deleted, replaced or stopped meanwhile: leave it be
            return Change(dataclasses.replace(current, status="stopped", done=True,
                                              stopped_at_ms=now),
                          logs=(LogEntry(now_iso(), "integration_completed", reason),))

        try:
            changed = await self._change(ran.id, change)
        except ApiError:
            return False  # deleted meanwhile
        if changed.done and changed.incarnation == ran.incarnation:
            log.info("temporary integration completed", extra=kv(integration=ran.id))
            self._wake_janitor()
            return True
        return False

    async def delete_expired(self, records: list[Integration]) -> list[int]:
        """Delete completed temporary integrations `webhook.temporary_delete_after` after
        they stopped (the stored stop time, so the deletion survives a restart); when the
        others are due (ms)."""
        now_ms = int(self.clock() * 1000)
        after_ms = int(self.config.webhook.temporary_delete_after * 1000)
        due: list[int] = []
        for integration in records:
            stopped = integration.stopped_at_ms
            if not integration.done or stopped is None:
                continue
            if now_ms - stopped < after_ms:
                due.append(stopped + after_ms)
            elif await self._do(self.store.delete_integration(integration.id,
                                                              integration.incarnation)):
                log.info("completed temporary integration deleted",
                         extra=kv(integration=integration.id))
                self.changes.notify(integration.id)
        return due

    def _wake_janitor(self) -> None:
        """Something it looks after changed (a temporary completed, a secret rotated)."""
        if self._wake is not None:
            self._wake.set()

    async def run_janitor(self) -> None:
        """One read of every record per round: rounds run when work is due, when woken,
        or every `JANITOR_EVERY` (for changes made by another daemon)."""
        while True:
            self._wake = wake = anyio.Event()
            wait = JANITOR_EVERY
            try:
                records = await self._do(self.store.list_integrations())
                due = await self.delete_expired(records) + await self.settle_rotations(records)
                self._next_due = min(due) / 1000 if due else None
            except Exception:
                log.exception("janitor round failed; trying again")
                wait = 1.0
            if self._next_due is not None:
                wait = min(wait, max(0.0, self._next_due - self.clock()) + 0.01)
            with move_on_after(wait):
                await wake.wait()

    # -------------------------------------------------------- rejected events

    async def delete_rejected(self, integration_id: str, event_id: str) -> None:
        await self._integration(integration_id)
        if not await self._do(self.store.delete_rejected(integration_id, event_id)):
            raise rejected_not_found(integration_id, event_id)

    def _retry_claim_seconds(self) -> float:
        """How long a retry's claim holds: well past the longest attempt a sink type
        makes (each is bounded by its own timeout), so only a retry whose daemon died
        leaves a claim to lapse."""
        return 2 * max(self.config.webhook.timeout, self.config.s3.timeout) + 60.0

    async def retry_rejected(self, integration_id: str, event_id: str) -> None:
        """One delivery attempt through the integration's sink type; removed when delivered.

        The entry is claimed first, so one retry of it runs at a time (on any daemon
        sharing the store); another answers 409 `retry_in_progress`. A failed attempt
        keeps the event and raises 502 with the sink's reason.
        """
        integration = await self._integration(integration_id)
        now = int(self.clock() * 1000)
        claim = RetryClaim(uuid.uuid4().hex, now,
                           now + int(self._retry_claim_seconds() * 1000))
        try:
            entry = await self._do(self.store.claim_rejected(integration_id, event_id, claim))
        except RetryInProgress as exc:
            raise ApiError(409, "retry_in_progress",
                           f"rejected event '{_shown(event_id)}' is being retried already "
                           f"(since {ms_to_iso(exc.claim.at_ms)}); try again once that "
                           "retry has finished") from None
        if entry is None:
            raise rejected_not_found(integration_id, event_id)
        fence = integration.fence()
        try:
            if not entry.deliverable:
                raise DeliveryFailed(f"this event cannot be delivered: {entry.reason}",
                                     attempted=False)
            if self.env is None:
                raise DeliveryFailed("delivery is not running in this process",
                                     attempted=False)
            await sink_type(integration.kind).retry_rejected(self.env, integration, entry)
        except DeliveryFailed as exc:
            reason = str(exc) or "the delivery failed"
            # The store counts the attempt (and keeps its answer) in the same step that
            # releases the claim: the entry shows the latest attempt.
            await self._do(self.store.update_rejected(
                fence, event_id, RetryOutcome(claim.token, exc.attempted, reason, exc.status),
                LogEntry(now_iso(), RETRY_FAILED,
                         f"Retry of rejected event {event_id} failed: {reason}")))
            raise ApiError(502, "delivery_failed", reason) from None
        except BaseException:
            # Cancelled (the client went away, the daemon stops) or crashed: the claim
            # goes now rather than when it lapses; nothing is known to have been sent.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.store.update_rejected(
                    fence, event_id, RetryOutcome(claim.token, attempted=False),
                    LogEntry(now_iso(), RETRY_FAILED,
                             f"Retry of rejected event {event_id} was interrupted."))
            raise
        await self._do(self.store.resolve_rejected(fence, event_id, LogEntry(
            now_iso(), RETRIED, f"Rejected event {event_id} delivered on retry via API.")))
        log.info("rejected event delivered on retry",
                 extra=kv(integration=integration_id, rejected_id=event_id))
