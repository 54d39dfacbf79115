"""The sink types this daemon delivers to: one line each.

Supervisor, status, API masking and the dashboard ask this registry; none of
them knows a sink type by name. Adding a sink type is its module (its
parameters type, registration check, pipeline, retry and stop grace, as a
`SinkType`) plus one line in `SINK_TYPES`. Tests register extra ones with
`register()`.
"""

from __future__ import annotations

from . import s3, webhook
from .base import SinkType

SINK_TYPES: dict[str, SinkType] = {
    sink.kind: sink for sink in (
        webhook.SINK,
        s3.SINK,
    )
}


def sink_type(kind: str) -> SinkType:
    try:
        return SINK_TYPES[kind]
    except KeyError:
        raise LookupError(f"no sink type '{kind}' is registered") from None


def register(sink: SinkType) -> None:
    """Add a sink type at run time (its parameters type registers itself on import)."""
    SINK_TYPES[sink.kind] = sink
