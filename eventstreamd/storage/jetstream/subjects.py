"""Every stream and subject name of the JetStream backend, spelled once.

Decisions:
- Two streams per prefix: `{prefix}_events` (the log: continuation messages
  on `{prefix}.ev.m`, each batch's last message on `{prefix}.ev.c`, whose
  headers are RePublished to `{prefix}.wake`) and `{prefix}_state`
  (everything else, under `{prefix}.st.`: events.py and state.py say why).
- In the state stream each piece of an integration is `<base>.<kind>.<id>`,
  a rejected event `<base>.rej.<id>.<rejected id>`, a replay's progress and
  saved state `<base>.rpp.<id>.<replay id>` and `<base>.rps.<id>.<replay id>`,
  the list of integration ids `<base>.index`; a daemon's announcement
  `<base>.inst.<instance>`, its heartbeat `<base>.beat.<instance>` and the
  mark claims of its leases leave `<base>.claims.<instance>`.
- An id names a subject only when it is a subject token
  (`naming.valid_subject_token`, up to `MAX_TOKEN` characters); every
  operation checks `is_token` first and treats any other id as absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...naming import valid_subject_token

MAX_TOKEN = 128

# The kinds of an integration's subjects in the state stream.
RECORD = "int"  # the integration record
MARKER = "inc"  # its incarnation: what fences name
CURSOR = "cur"
SINK_STATE = "sink"
LOG = "log"
REJECTED_INDEX = "rejx"  # the ids of its rejected events, oldest first
LEASE = "lease"  # who holds it (lease.py), changed by claims and releases only
RENEW = "renew"  # renewals of its lease, as versions before the heartbeat wrote them
INTEGRATION_KINDS = (RECORD, MARKER, CURSOR, SINK_STATE, LOG, REJECTED_INDEX, LEASE, RENEW)
# A daemon's subjects, `<base>.<kind>.<instance name>` (lease.py):
ANNOUNCEMENT = "inst"  # its announcement
BEAT = "beat"  # its heartbeat: renews every lease it holds
CLAIMS = "claims"  # the mark claims of its leases leave (its heartbeat checks it)
REJECTED = "rej"
REPLAY_PROGRESS = "rpp"  # `<base>.rpp.<id>.<replay id>`: cursor and count
REPLAY_STATE = "rps"  # `<base>.rps.<id>.<replay id>`: a replay pipeline's own state
REPLAY_KINDS = (REPLAY_PROGRESS, REPLAY_STATE)


def is_token(value: str) -> bool:
    """Whether `value` (an integration, rejected event or instance id) can name a subject."""
    return valid_subject_token(value, MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class EventSubjects:
    """The event log's stream and subjects."""

    stream: str
    every: str
    more: str  # every message of a batch but the last
    commit: str  # each batch's last message, RePublished (headers only) as the wake-up
    wake: str

    @classmethod
    def of(cls, prefix: str) -> EventSubjects:
        return cls(stream=f"{prefix}_events", every=f"{prefix}.ev.*", more=f"{prefix}.ev.m",
                   commit=f"{prefix}.ev.c", wake=f"{prefix}.wake")


@dataclass(frozen=True, slots=True)
class StateSubjects:
    """The state stream and its subjects."""

    stream: str
    base: str

    @classmethod
    def of(cls, prefix: str) -> StateSubjects:
        return cls(stream=f"{prefix}_state", base=f"{prefix}.st")

    @property
    def every(self) -> str:
        return f"{self.base}.>"

    @property
    def index(self) -> str:
        return f"{self.base}.index"

    def kind(self, kind: str, name: str) -> str:
        """`<base>.<kind>.<name>`; `name` "*" for every subject of that kind."""
        return f"{self.base}.{kind}.{name}"

    def rejected(self, integration_id: str, rejected_id: str) -> str:
        return f"{self.base}.{REJECTED}.{integration_id}.{rejected_id}"

    def replay(self, kind: str, integration_id: str, replay_id: str) -> str:
        """A replay's subject of `kind`; `replay_id` "*" for every replay's."""
        return f"{self.base}.{kind}.{integration_id}.{replay_id}"
