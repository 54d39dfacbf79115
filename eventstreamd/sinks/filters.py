"""`filter_conditions`: which events an integration receives.

An event passes when its name is in `event_filter` OR its entity (the part of
the name before the first dot) is in `entity_filter`. No filter, or an empty
`filter_conditions`, passes everything. Lookups are set membership so the
sink loop pays O(1) per event.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import EventFilterSpec, StoredEvent


@dataclass(frozen=True)
class EventFilter:
    names: frozenset[str] | None
    entities: frozenset[str] | None

    @classmethod
    def of(cls, spec: EventFilterSpec | None) -> EventFilter:
        if spec is None:
            return cls(None, None)
        return cls(
            names=frozenset(spec.event_filter) if spec.event_filter is not None else None,
            entities=frozenset(spec.entity_filter) if spec.entity_filter is not None else None,
        )

    @property
    def passes_everything(self) -> bool:
        return self.names is None and self.entities is None

    def matches(self, event: StoredEvent) -> bool:
        if self.passes_everything:
            return True
        if self.names is not None and event.name in self.names:
            return True
        return self.entities is not None and event.entity in self.entities
