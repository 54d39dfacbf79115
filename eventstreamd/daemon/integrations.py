"""The integration service: every rule of the configuration API, for HTTP and the control socket.

Decisions:
- Both front ends (the aiohttp handlers in `api.py`, later the control socket)
  call these methods and nothing else, so a rule cannot hold on one path and
  not the other. That is also why request bodies are validated here (against
  the spec's own schemas, see `eventstreamd.schemas.validation`) rather than
  only in the HTTP handlers. Errors are `ApiError`s (status, error_code,
  message); the socket maps them the same way the HTTP middleware does.
- Check-then-write happens inside one writer job, against the write
  transaction's own view (`txn_get_integration`), so two racing requests
  cannot both pass a check (duplicate id, the integration limit, "stop before
  update"). A failed check is *returned* from the job, not raised: raising
  would abort the whole group commit and make the writer replay its
  neighbours (other requests' events) one by one.
- Records hold secrets in clear (the sinks need them; the store is 0700);
  every view leaving the service masks them, and every secret is registered
  with the log redactor as it enters the process (create, update, and once at
  start-up for stored records).
- Replace semantics for PATCH: a target object in the body replaces the stored
  one (so switching webhook <-> S3 drops the other). A secret sent back
  exactly as we returned it (masked) keeps the stored secret, so "GET, edit
  the URL, PATCH it back" does not overwrite the key with its mask.
- The spec allows extra properties in a new integration (no
  `additionalProperties: false`); they are ignored and never stored.
- `integration_changed` is called after every committed change, and also for
  `_start`/`_stop` that changed nothing: it is idempotent on the supervisor's
  side and lets a user nudge a sink that is not running when it should be.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import lmdb
import yarl

from ..config import Config
from ..logs import MASK, kv, redactor
from ..schemas.validation import RequestInvalid, validate_request
from ..sinks.loop import resume_position
from ..sinks.s3 import s3_params_problem
from ..sinks.ssrf import BlockedTarget, check_host
from ..storage.lmdb_store import LmdbStore, StoreFull
from ..storage.writer import WriterClosed
from ..timeutil import format_utc, now_iso, now_utc, parse_rfc3339, to_ms
from .contracts import DeliveryFailed, SinkControl
from .errors import ApiError

log = logging.getLogger("eventstreamd.integrations")

# What the spec allows an id to be; anything else cannot name a stored integration
# (and must not reach LMDB, whose keys are limited to 511 bytes).
ID_PATTERN = re.compile(r"[a-z0-9-]{1,50}")
WEBHOOK = "callback_parameters"
S3 = "s3_parameters"
TARGETS = (WEBHOOK, S3)
_WEBHOOK_FIELDS = ("callback_url", "api_key")
_S3_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_region", "bucket", "key_prefix")
_FILTER_FIELDS = ("event_filter", "entity_filter")
_SECRETS = {WEBHOOK: "api_key", S3: "aws_secret_access_key"}
# Fields a PATCH may not carry, with the reason the client gets.
_IMMUTABLE = {
    "id": "the id of an integration cannot be changed",
    "integration_type": "the integration type cannot be changed after creation",
    "starts_at": "the start date cannot be changed after creation",
    "ends_at": "the end date cannot be changed after creation",
    "status": "the status is changed with _start and _stop, not by an update",
}
_MASK_KEEP = 2  # leading characters a masked secret keeps, so users can tell keys apart
_MASK_MIN = 12  # shorter secrets are masked entirely

# Log entries this service writes (the delivery layer adds its own).
CREATED = ("integration_created", "Created via API.")
UPDATED = ("integration_updated", "Updated via API.")
STARTED = ("integration_started", "Started via API.")
STOPPED = ("integration_stopped", "Stopped via API.")
RETRIED = "rejected_event_retried"
RETRY_FAILED = "rejected_event_retry_failed"


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


def mask(secret: str) -> str:
    if not secret:
        return secret
    return (secret[:_MASK_KEEP] if len(secret) >= _MASK_MIN else "") + MASK


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the API shows it: the spec's Integration shape, secrets masked."""
    view: dict[str, Any] = {
        "id": record["id"],
        "status": record["status"],
        "integration_type": record["integration_type"],
    }
    for key in ("starts_at", "ends_at", "filter_conditions"):
        if record.get(key) is not None:
            view[key] = record[key]
    for target, secret in _SECRETS.items():
        params = record.get(target)
        if params is not None:
            shown = dict(params)
            if shown.get(secret) is not None:
                shown[secret] = mask(shown[secret])
            view[target] = shown
    return view


def target_of(record: dict[str, Any]) -> str:
    return WEBHOOK if record.get(WEBHOOK) is not None else S3


def register_secrets(record: dict[str, Any]) -> None:
    for target, secret in _SECRETS.items():
        params = record.get(target) or {}
        redactor.add(params.get(secret))


# ------------------------------------------------------------ body checking


def _validated(operation_id: str, body: Any, block_policy: str) -> dict[str, Any]:
    if isinstance(body, dict) and all(body.get(t) is not None for t in TARGETS):
        raise bad_request(
            "ambiguous_target",
            "give either 'callback_parameters' (webhook) or 's3_parameters' (S3), not both",
        )
    try:
        validate_request(operation_id, body)
    except RequestInvalid as exc:
        raise bad_request("invalid_request", str(exc)) from None
    assert isinstance(body, dict)  # the schema says "type: object"
    if body.get(WEBHOOK) is not None:
        _check_callback_url(body[WEBHOOK]["callback_url"], block_policy)
        _check_header_safe(body[WEBHOOK], WEBHOOK, ("api_key",), "invalid_api_key")
    if body.get(S3) is not None:
        # The credentials go into a signed Authorization header, too.
        _check_header_safe(body[S3], S3, ("aws_access_key_id", "aws_secret_access_key"),
                           "invalid_s3_parameters")
        problem = s3_params_problem(body[S3])
        if problem is not None:
            raise bad_request("invalid_s3_parameters", f"'{S3}.{problem[0]}' {problem[1]}")
    return body


def _check_header_safe(params: dict[str, Any], target: str, fields: tuple[str, ...],
                       error_code: str) -> None:
    """Values that end up in HTTP headers: a control character would fail every send."""
    for name in fields:
        value = params.get(name)
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise bad_request(error_code, f"'{target}.{name}' must not contain control characters")


def _check_callback_url(url: str, block_policy: str) -> None:
    # `format: uri` admits any scheme; events can only be POSTed over HTTP(S).
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises for a port outside 0-65535
        yarl.URL(url).raw_host  # noqa: B018 - what aiohttp will parse it with
    except ValueError:
        raise bad_request(
            "invalid_callback_url",
            "'callback_parameters.callback_url' is not a URL that can be requested "
            "(check the host and that the port is 1-65535)") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise bad_request(
            "invalid_callback_url",
            "'callback_parameters.callback_url' must be an http:// or https:// URL with a host",
        )
    if port == 0:
        raise bad_request("invalid_callback_url",
                          "'callback_parameters.callback_url' must have a port of 1-65535")
    if parts.username is not None or parts.password is not None:
        raise bad_request(
            "invalid_callback_url",
            "'callback_parameters.callback_url' must not carry credentials; use 'api_key'",
        )
    # Literal addresses (in every form the resolver accepts) are refused here
    # already; names are checked again at connect time, after resolution (ssrf.py).
    try:
        check_host(host, block_policy)
    except BlockedTarget as exc:
        raise bad_request(
            "callback_url_blocked", f"'callback_parameters.callback_url': {exc}"
        ) from None


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


def _pick(source: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {key: source[key] for key in fields if key in source}


def _target_params(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if body.get(WEBHOOK) is not None:
        return WEBHOOK, _pick(body[WEBHOOK], _WEBHOOK_FIELDS)
    if body.get(S3) is not None:
        return S3, _pick(body[S3], _S3_FIELDS)
    return None


def _filters(body: dict[str, Any]) -> dict[str, Any] | None:
    raw = body.get("filter_conditions")
    return _pick(raw, _FILTER_FIELDS) if raw is not None else None


# ------------------------------------------------------------------ service


Job = Callable[[lmdb.Transaction], Any]


class IntegrationService:
    def __init__(self, store: LmdbStore, config: Config, sinks: SinkControl,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.sinks = sinks
        self.clock = clock  # injectable, so the restart-window rule is testable without sleeping

    def register_stored_secrets(self) -> None:
        """Register the secrets of every stored integration with the log redactor (start-up)."""
        for record in self.store.list_integrations():
            register_secrets(record)

    # ------------------------------------------------------------- plumbing

    async def _write(self, job: Job) -> Any:
        """Run a job in the group commit; a returned ApiError is raised here, after it."""
        try:
            result = await self.store.write(job)
        except StoreFull as exc:
            raise ApiError(507, "insufficient_storage", str(exc)) from None
        except WriterClosed:
            raise ApiError(503, "unavailable", "the daemon is shutting down") from None
        if isinstance(result, ApiError):
            raise result
        return result

    def _changed(self, integration_id: str) -> None:
        try:
            self.sinks.integration_changed(integration_id)
        except Exception:
            # The change is committed; the supervisor's failure must not turn it into a 500.
            log.exception("the supervisor failed to take an integration change",
                          extra=kv(integration=integration_id))

    def _record(self, integration_id: str) -> dict[str, Any]:
        record = self.store.get_integration(integration_id) \
            if ID_PATTERN.fullmatch(integration_id) else None
        if record is None:
            raise not_found(integration_id)
        return record

    def _log(self, txn: lmdb.Transaction, integration_id: str, entry: tuple[str, str]) -> None:
        self.store.txn_add_log(txn, integration_id, entry[0], entry[1], now_iso())

    # ------------------------------------------------------------------ reads

    async def list_integrations(self) -> list[dict[str, Any]]:
        return [public_view(r) for r in self.store.list_integrations()]

    async def get(self, integration_id: str) -> dict[str, Any]:
        return public_view(self._record(integration_id))

    async def logs(self, integration_id: str) -> list[dict[str, Any]]:
        """The newest `limits.log_entries` entries, newest first."""
        self._record(integration_id)
        entries = self.store.list_logs(integration_id)[: self.config.limits.log_entries]
        return [{k: e[k] for k in ("created_at", "action", "reason")} for e in entries]

    async def list_rejected(self, integration_id: str) -> list[dict[str, Any]]:
        self._record(integration_id)
        return [{"id": e["id"], "created_at": e["created_at"]}
                for e in self.store.list_rejected(integration_id)]

    async def get_rejected(self, integration_id: str, event_id: str) -> dict[str, Any]:
        return dict(self._rejected_entry(integration_id, event_id)[1]["event"])

    def _rejected_entry(
        self, integration_id: str, event_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        record = self._record(integration_id)
        entry = self.store.get_rejected(integration_id, event_id)
        if entry is None:
            raise rejected_not_found(integration_id, event_id)
        return record, entry

    # ----------------------------------------------------------------- writes

    async def create(self, body: Any) -> dict[str, Any]:
        body = _validated("registerIntegration", body, self.config.security.block_targets)
        integration_type = body["integration_type"]
        starts = _timestamp(body, "starts_at")
        ends = _timestamp(body, "ends_at")
        _check_dates(integration_type, starts, ends)
        target = _target_params(body)
        assert target is not None  # the schema's oneOf requires one
        record: dict[str, Any] = {
            "id": body["id"],
            "integration_type": integration_type,
            "status": "running",  # new integrations start automatically
            "starts_at": format_utc(starts) if starts else None,
            "ends_at": format_utc(ends) if ends else None,
            "filter_conditions": _filters(body),
            target[0]: target[1],
            "created_at": now_iso(),
            "stopped_at_ms": None,
            "done": False,
            # Tells this integration apart from an earlier one with the same id, so a
            # sink still finishing for a deleted integration cannot write into it.
            "incarnation": uuid.uuid4().hex,
        }
        register_secrets(record)
        # Computed before the job: the first event to deliver. Events committed
        # between here and the job's commit arrived after the request, so
        # delivering them is right for "from now".
        cursor = self.store.seq_at_or_after(to_ms(starts)) if starts else self.store.head + 1
        limit = self.config.limits.max_integrations

        def job(txn: lmdb.Transaction) -> Any:
            if self.store.txn_get_integration(txn, record["id"]) is not None:
                return ApiError(409, "integration_exists",
                                f"an integration with id '{record['id']}' already exists")
            if self.store.txn_count_integrations(txn) >= limit:
                return bad_request("max_integrations_reached",
                                   f"at most {limit} integrations can be registered; "
                                   "delete one first")
            self.store.txn_put_integration(txn, record)
            self.store.txn_set_cursor(txn, record["id"], cursor)
            self._log(txn, record["id"], CREATED)
            return record

        await self._write(job)
        log.info("integration created", extra=kv(
            integration=record["id"], type=integration_type, target=target[0], cursor=cursor))
        self._changed(record["id"])
        return public_view(record)

    async def update(self, integration_id: str, body: Any) -> dict[str, Any]:
        if isinstance(body, dict):
            for key, reason in _IMMUTABLE.items():
                if key in body:
                    raise bad_request("immutable_field", f"'{key}': {reason}")
        body = _validated("updateIntegration", body, self.config.security.block_targets)
        target = _target_params(body)
        filters = _filters(body)
        if target is not None:
            redactor.add(target[1].get(_SECRETS[target[0]]))
        if not ID_PATTERN.fullmatch(integration_id):
            raise not_found(integration_id)

        def job(txn: lmdb.Transaction) -> Any:
            current = self.store.txn_get_integration(txn, integration_id)
            if current is None:
                return not_found(integration_id)
            if current["integration_type"] == "temporary":
                return bad_request("temporary_not_updatable",
                                   "temporary integrations cannot be updated; delete it and "
                                   "register a new one")
            if current["status"] != "stopped":
                return bad_request("integration_running",
                                   "stop the integration before updating it (_stop, wait until "
                                   "its status is 'stopped', update, then _start)")
            record = dict(current)
            if target is not None:
                record[target[0]] = _keep_masked_secret(current, *target)
                for other in TARGETS:
                    if other != target[0]:
                        record.pop(other, None)
            if filters is not None:
                record["filter_conditions"] = filters
            self.store.txn_put_integration(txn, record)
            self._log(txn, integration_id, UPDATED)
            return record

        record = await self._write(job)
        log.info("integration updated", extra=kv(integration=integration_id,
                                                 target=target_of(record)))
        self._changed(integration_id)
        return public_view(record)

    async def delete(self, integration_id: str) -> None:
        """Remove the integration with its cursor, logs and rejected events."""
        if not ID_PATTERN.fullmatch(integration_id):
            raise not_found(integration_id)

        def job(txn: lmdb.Transaction) -> Any:
            if not self.store.txn_delete_integration(txn, integration_id):
                return not_found(integration_id)
            return None

        await self._write(job)
        log.info("integration deleted", extra=kv(integration=integration_id))
        self._changed(integration_id)

    async def start(self, integration_id: str) -> dict[str, Any]:
        return await self._set_status(integration_id, "running", STARTED)

    async def stop(self, integration_id: str) -> dict[str, Any]:
        return await self._set_status(integration_id, "stopped", STOPPED)

    async def _set_status(
        self, integration_id: str, status: str, entry: tuple[str, str]
    ) -> dict[str, Any]:
        """Idempotent: an integration already in `status` is returned unchanged.

        Starting applies the restart-window rule in the same transaction: after a
        stop longer than `limits.restart_window` the cursor skips to the head and
        the log says how many events were skipped.
        """
        if not ID_PATTERN.fullmatch(integration_id):
            raise not_found(integration_id)
        now = int(self.clock() * 1000)
        window_ms = int(self.config.limits.restart_window * 1000)

        def job(txn: lmdb.Transaction) -> Any:
            current = self.store.txn_get_integration(txn, integration_id)
            if current is None:
                return not_found(integration_id)
            if current["status"] == status:
                return current
            record = dict(current, status=status)
            if status == "stopped":
                record["stopped_at_ms"] = now
            else:
                record["stopped_at_ms"] = None
                cursor = self.store.txn_get_cursor(txn, integration_id)
                head = self.store.txn_head(txn)
                position, skipped = resume_position(
                    cursor if cursor is not None else head + 1, head,
                    current.get("stopped_at_ms"), now, window_ms)
                if skipped:
                    self.store.txn_set_cursor(txn, integration_id, position)
                    self.store.txn_add_log(
                        txn, integration_id, "events_skipped",
                        f"Stopped for longer than the restart window; skipped {skipped} "
                        "events.", now_iso())
            self.store.txn_put_integration(txn, record)
            self._log(txn, integration_id, entry)
            return record

        record = await self._write(job)
        log.info("integration %s", status, extra=kv(integration=integration_id))
        self._changed(integration_id)
        return public_view(record)

    async def delete_rejected(self, integration_id: str, event_id: str) -> None:
        self._record(integration_id)

        def job(txn: lmdb.Transaction) -> Any:
            if not self.store.txn_delete_rejected(txn, integration_id, event_id):
                return rejected_not_found(integration_id, event_id)
            return None

        await self._write(job)

    async def retry_rejected(self, integration_id: str, event_id: str) -> None:
        """One delivery attempt through the integration's sink; removed when delivered.

        A failed attempt keeps the event and raises 502 with the sink's reason.
        """
        record, entry = self._rejected_entry(integration_id, event_id)
        try:
            await self.sinks.retry_rejected(record, entry)
        except DeliveryFailed as exc:
            reason = str(exc) or "the delivery failed"
            await self._write(self._retry_outcome_job(
                record, None, (RETRY_FAILED, f"Retry of rejected event {event_id} "
                                             f"failed: {reason}")))
            raise ApiError(502, "delivery_failed", reason) from None
        await self._write(self._retry_outcome_job(
            record, event_id,
            (RETRIED, f"Rejected event {event_id} delivered on retry via API.")))
        log.info("rejected event delivered on retry",
                 extra=kv(integration=integration_id, rejected_id=event_id))

    def _retry_outcome_job(
        self, record: dict[str, Any], remove_id: str | None, entry: tuple[str, str]
    ) -> Job:
        integration_id, incarnation = record["id"], record.get("incarnation")

        def job(txn: lmdb.Transaction) -> None:
            # The integration may have been deleted (and even re-created with the
            # same id) while the attempt ran: then this outcome is not its business.
            if not self.store.txn_is_incarnation(txn, integration_id, incarnation):
                return
            if remove_id is not None:
                self.store.txn_delete_rejected(txn, integration_id, remove_id)
            self._log(txn, integration_id, entry)

        return job


def _keep_masked_secret(
    current: dict[str, Any], target: str, params: dict[str, Any]
) -> dict[str, Any]:
    """A secret sent back exactly as we showed it (masked) keeps the stored one."""
    secret_key = _SECRETS[target]
    stored = (current.get(target) or {}).get(secret_key)
    sent = params.get(secret_key)
    if stored and sent is not None and sent == mask(stored):
        return dict(params, **{secret_key: stored})
    return params
