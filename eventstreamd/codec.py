"""The one codec for integrations, log entries and rejected events: store form and API form.

Decisions:
- Outside this module no code reads an integration record by string key.
- The store form is a plain dict (msgpack in LMDB, JSON in JetStream) with the
  API's own field names plus lifecycle fields: `id`, `integration_type`,
  `status`, `starts_at`, `ends_at`, `filter_conditions`, the target under its
  API field (`callback_parameters`, `s3_parameters`; secrets in clear: the
  store is private to the daemon's user; with the target's private fields,
  such as a signing secret's rotation state), `created_at`, `stopped_at_ms`,
  `done`, `incarnation`, `started_at_ms`, `auto_stop`. It is the form format
  1 already had plus optional keys, so integration records need no
  migration (a missing key reads as its default).
- The API form is the spec's Integration shape, secrets masked: a secret of
  at least `MASK_MIN` characters keeps its first `MASK_KEEP` (so users can tell
  keys apart), shorter ones are masked entirely. Which fields are secret and
  how a target shows is the target's (`TargetParams.shown`: a webhook's
  header values are masked one by one); private fields never show.
- An integration's replays are kept in its record (`replays`, a list of
  their store form, absent while there are none) and never shown in the
  integration's API form; `replay_to_api` is their own shape, with the
  progress read beside the record (kept as long as the replay is: a
  cancelled replay's last count is written when its sink has stopped) and
  the status "paused" while the integration is stopped.
- Rejected events are stored with their delivery body as bytes (format 2);
  format 1 entries (the body as a decoded object under `event`) are read too.
- Every target that enters the process passes through here (from a request
  body or from the store), so this is the one place its secrets are
  registered with the log redactor: no later log line can print them.
- The codec knows no sink type: whoever reads targets passes the sink
  registry (`TargetTypes`: `sinks/registry.py`'s `SINK_TYPES`, handed to
  the store when it is opened), so the dependency is an argument the import
  contracts and the type checker see, not a side effect of an import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from .logs import MASK, redactor, shorten
from .model import (
    EventFilterSpec,
    Integration,
    LogEntry,
    RejectedEvent,
    Replay,
    ReplayProgress,
    RetryClaim,
    TargetParams,
    UnknownTargetKind,
)

MASK_KEEP = 2
MASK_MIN = 12
# Shown as the payload of a rejected event that could not be encoded at all.
UNENCODABLE = "the payload cannot be encoded as JSON; see the rejected event's reason"


def mask(secret: str) -> str:
    if not secret:
        return secret
    return (secret[:MASK_KEEP] if len(secret) >= MASK_MIN else "") + MASK


# ------------------------------------------------------------------ targets


class TargetTypes(Protocol):
    """The parameters type of every registered sink kind (`sinks/registry.py`)."""

    def params_types(self) -> Iterable[type[TargetParams]]: ...


def target_type(targets: TargetTypes, kind: str) -> type[TargetParams]:
    for params_type in targets.params_types():
        if params_type.kind == kind:
            return params_type
    raise UnknownTargetKind(f"no sink type '{kind}' is registered")


def target_field_names(targets: TargetTypes) -> tuple[str, ...]:
    """Every API field that holds a target (`callback_parameters`, `s3_parameters`, ...)."""
    return tuple(kind.api_field for kind in targets.params_types())


def target_for_field(targets: TargetTypes, api_field: str) -> type[TargetParams]:
    return next(kind for kind in targets.params_types() if kind.api_field == api_field)


def target_from_api(targets: TargetTypes, body: dict[str, Any]) -> TargetParams | None:
    """The target a request body gives (the first registered field present), or None.
    Private fields (stored state such as a rotation's) never come from a request."""
    for kind in targets.params_types():
        params = body.get(kind.api_field)
        if params is not None:
            given = {k: v for k, v in params.items() if k not in kind.private_fields}
            return registered(kind.from_dict(given))
    return None


def registered(target: TargetParams) -> TargetParams:
    """`target`, its secrets registered with the log redactor."""
    for secret in target.secrets():
        redactor.add(secret)
    return target


def target_to_api(target: TargetParams) -> dict[str, Any]:
    return target.shown(mask)


def keep_masked_secrets(current: TargetParams, new: TargetParams) -> TargetParams:
    """A secret sent back exactly as we showed it (masked) keeps the stored one, so
    "GET, edit the URL, PATCH it back" does not overwrite a key with its mask."""
    return new.keeping_secrets(current, mask)


# ------------------------------------------------------------------ filters


def filter_from_api(raw: dict[str, Any] | None) -> EventFilterSpec | None:
    if raw is None:
        return None
    names, entities = raw.get("event_filter"), raw.get("entity_filter")
    return EventFilterSpec(tuple(names) if names is not None else None,
                           tuple(entities) if entities is not None else None)


def filter_to_api(spec: EventFilterSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    out: dict[str, Any] = {}
    if spec.event_filter is not None:
        out["event_filter"] = list(spec.event_filter)
    if spec.entity_filter is not None:
        out["entity_filter"] = list(spec.entity_filter)
    return out


# ------------------------------------------------------------- integrations


def to_store(integration: Integration) -> dict[str, Any]:
    return {
        "id": integration.id,
        "integration_type": integration.type,
        "status": integration.status,
        "starts_at": integration.starts_at,
        "ends_at": integration.ends_at,
        "filter_conditions": filter_to_api(integration.filter),
        integration.target.api_field: integration.target.to_dict(),
        "kind": integration.kind,
        "created_at": integration.created_at,
        "stopped_at_ms": integration.stopped_at_ms,
        "done": integration.done,
        "incarnation": integration.incarnation,
        "started_at_ms": integration.started_at_ms,
        "auto_stop": integration.auto_stop,
        **({"replays": [replay_to_store(r) for r in integration.replays]}
           if integration.replays else {}),
    }


def from_store(targets: TargetTypes, record: dict[str, Any]) -> Integration:
    kind = record.get("kind")
    if kind is not None:
        params_type = target_type(targets, kind)
    else:  # format 1 records name no kind: the target's field tells
        params_type = next(t for t in targets.params_types() if record.get(t.api_field))
    return Integration(
        id=record["id"],
        type=record["integration_type"],
        status=record["status"],
        target=registered(params_type.from_dict(record[params_type.api_field])),
        incarnation=record.get("incarnation") or "",
        created_at=record.get("created_at") or "",
        starts_at=record.get("starts_at"),
        ends_at=record.get("ends_at"),
        filter=filter_from_api(record.get("filter_conditions")),
        stopped_at_ms=record.get("stopped_at_ms"),
        done=bool(record.get("done")),
        started_at_ms=record.get("started_at_ms"),
        auto_stop=record.get("auto_stop"),
        replays=tuple(replay_from_store(r) for r in record.get("replays") or ()),
    )


def to_api(integration: Integration) -> dict[str, Any]:
    """The spec's Integration shape, secrets masked."""
    view: dict[str, Any] = {
        "id": integration.id,
        "status": integration.status,
        "integration_type": integration.type,
    }
    if integration.starts_at is not None:
        view["starts_at"] = integration.starts_at
    if integration.ends_at is not None:
        view["ends_at"] = integration.ends_at
    if integration.filter is not None:
        view["filter_conditions"] = filter_to_api(integration.filter)
    view[integration.target.api_field] = target_to_api(integration.target)
    return view


# ------------------------------------------------------------------ replays


def replay_to_store(replay: Replay) -> dict[str, Any]:
    out = {"id": replay.id, "starts_at": replay.starts_at, "ends_at": replay.ends_at,
           "start_seq": replay.start_seq, "end_seq": replay.end_seq, "events": replay.events,
           "created_at": replay.created_at, "status": replay.status,
           "filter_conditions": filter_to_api(replay.filter), "max_rate": replay.max_rate,
           "finished_at": replay.finished_at}
    return {k: v for k, v in out.items() if v is not None}


def replay_from_store(raw: dict[str, Any]) -> Replay:
    rate = raw.get("max_rate")
    return Replay(
        id=raw["id"], starts_at=raw["starts_at"], ends_at=raw["ends_at"],
        start_seq=int(raw["start_seq"]), end_seq=int(raw["end_seq"]),
        events=int(raw["events"]), created_at=raw["created_at"],
        filter=filter_from_api(raw.get("filter_conditions")),
        max_rate=float(rate) if rate is not None else None,
        status=raw.get("status", "running"), finished_at=raw.get("finished_at"))


def replay_status(replay: Replay, integration: Integration) -> str:
    """As shown: a running replay waits ("paused") while its integration does not run."""
    return "paused" if replay.active and not integration.running else replay.status


def replay_to_api(replay: Replay, integration: Integration,
                  progress: ReplayProgress | None) -> dict[str, Any]:
    """The contract's replay shape (plus its rate and filter when it has them)."""
    delivered = progress.delivered if progress is not None else 0
    view: dict[str, Any] = {
        "replay_id": replay.id, "status": replay_status(replay, integration),
        "starts_at": replay.starts_at, "ends_at": replay.ends_at, "events": replay.events,
        "delivered": delivered, "created_at": replay.created_at,
        "finished_at": replay.finished_at}
    if replay.max_rate is not None:
        view["max_rate"] = replay.max_rate
    if replay.filter is not None:
        view["filter_conditions"] = filter_to_api(replay.filter)
    return view


# ------------------------------------------------------------- log entries


def log_to_store(entry: LogEntry) -> dict[str, Any]:
    return {"created_at": entry.created_at, "action": entry.action, "reason": entry.reason}


def log_from_store(raw: dict[str, Any]) -> LogEntry:
    return LogEntry(raw["created_at"], raw["action"], raw["reason"])


# --------------------------------------------------------- rejected events


def rejected_to_store(entry: RejectedEvent) -> dict[str, Any]:
    return {"id": entry.id, "created_at": entry.created_at, "seq": entry.seq,
            "event_id": entry.event_id, "reason": entry.reason, "status": entry.status,
            "body": entry.body, "deliverable": entry.deliverable, "attempts": entry.attempts,
            **({"trace": entry.trace} if entry.trace is not None else {}),
            **entry.extra,
            **({"retry_claim": dataclasses.asdict(entry.retry_claim)}
               if entry.retry_claim is not None else {})}


_REJECTED_KEYS = frozenset({"id", "created_at", "seq", "event_id", "reason", "status", "body",
                            "event", "deliverable", "attempts", "retry_claim", "trace"})


def placeholder_body(tenant: str, name: str, published_at: str) -> bytes:
    """The body shown for an event whose own body cannot be encoded."""
    return orjson.dumps({"tenant": tenant, "name": name, "published_at": published_at,
                         "payload": {"error": UNENCODABLE}})


def rejected_from_store(raw: dict[str, Any]) -> RejectedEvent:
    body = raw.get("body")
    deliverable = bool(raw.get("deliverable", True))
    if body is None:  # format 1: the delivery body as an object
        event = raw.get("event") or {}
        try:
            body = orjson.dumps(event)
        except (TypeError, ValueError):
            body = placeholder_body(str(event.get("tenant", "")), str(event.get("name", "")),
                                    str(event.get("published_at", "")))
            deliverable = False
    return RejectedEvent(
        id=raw["id"], created_at=raw["created_at"], seq=raw.get("seq", 0),
        event_id=raw.get("event_id", raw["id"]), reason=raw.get("reason") or "",
        body=body, status=raw.get("status"), deliverable=deliverable,
        attempts=raw.get("attempts"), trace=_trace(raw.get("trace")),
        extra={k: v for k, v in raw.items() if k not in _REJECTED_KEYS},
        retry_claim=_retry_claim(raw.get("retry_claim")))


def _trace(raw: Any) -> bytes | None:
    return raw if isinstance(raw, bytes) and raw else None


def _retry_claim(raw: Any) -> RetryClaim | None:
    if not isinstance(raw, dict):
        return None
    return RetryClaim(str(raw.get("token", "")), int(raw.get("at_ms", 0)),
                      int(raw.get("until_ms", 0)))


REASON_EXCERPT = 200  # characters of the reason in a list entry


def rejection_context(entry: RejectedEvent, reason_limit: int | None = None) -> dict[str, Any]:
    """What ties a rejected event to what was published, and why it was set aside:
    the event's own id and sequence number, the receiver's HTTP status and answer
    (the reason), and the delivery attempts it took."""
    reason = entry.reason if reason_limit is None else shorten(entry.reason, reason_limit)
    return {"event_id": entry.event_id, "seq": entry.seq, "status": entry.status,
            "reason": reason, "attempts": entry.attempts, "deliverable": entry.deliverable}


def rejected_list_entry(entry: RejectedEvent) -> dict[str, Any]:
    """An entry of the spec's Rejected Event List (`id`, `created_at`) with the context
    beside them (the spec's entries allow further properties)."""
    return {"id": entry.id, "created_at": entry.created_at,
            **rejection_context(entry, REASON_EXCERPT)}


def rejected_event_view(entry: RejectedEvent) -> orjson.Fragment:
    """The spec's Rejected Event: the delivery body, embedded as is (never re-encoded),
    with the context under one more key, `rejection` (the spec's schema allows further
    properties; the event's own four stay exactly as they were sent)."""
    context = orjson.dumps({"rejection": {"id": entry.id, "created_at": entry.created_at,
                                          **rejection_context(entry)}})
    body = entry.body.rstrip()
    if not body.endswith(b"}"):
        return orjson.Fragment(entry.body)
    # `{...}` + `{"rejection":...}` -> `{..., "rejection":...}`; `{}` has no comma to add.
    separator = b"," if body[:-1].strip() != b"{" else b""
    return orjson.Fragment(body[:-1] + separator + context[1:])
