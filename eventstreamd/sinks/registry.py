"""The sink types this daemon delivers to: one registry, one line each.

Supervisor, status, API masking and the dashboard ask this registry; none of
them knows a sink type by name. The codec and the store are handed it
(`SINK_TYPES` is a `codec.TargetTypes`) to read stored and submitted
targets. Adding a sink type is its module (its parameters type,
registration check, pipeline, retry and stop grace, as a `SinkType`) plus
one line in `SINK_TYPES`, plus its target field in the OpenAPI spec's
schemas and, for shortcuts, in `integrations_cli.py` (README "Layout").
Tests register extra ones with `register()`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import TargetParams
from . import s3, webhook
from .base import SinkType


class SinkTypes(dict[str, SinkType]):
    """Sink types by kind."""

    def params_types(self) -> Iterable[type[TargetParams]]:
        return [sink.params for sink in self.values()]


SINK_TYPES = SinkTypes({
    sink.kind: sink for sink in (
        webhook.SINK,
        s3.SINK,
    )
})


def sink_type(kind: str) -> SinkType:
    try:
        return SINK_TYPES[kind]
    except KeyError:
        raise LookupError(f"no sink type '{kind}' is registered") from None


def register(sink: SinkType) -> None:
    """Add a sink type at run time."""
    SINK_TYPES[sink.kind] = sink
