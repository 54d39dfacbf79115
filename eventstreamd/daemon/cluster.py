"""The cluster view: what each daemon on a shared JetStream announces, and what status shows.

Decisions:
- Each daemon announces its own part once a second (with the ownership
  balancer's announcement, `ownership.py`): its pid and version and, per
  integration it delivers, the live figures only it has (delivered count and
  rate, its saved cursor and live position, requests in flight). Rates are taken here from
  successive announcements, so they exist whether or not a client watches.
- The status snapshot of *any* daemon (control socket, TUI) then shows the
  whole cluster: a `cluster` section (every daemon seen, whether it is live,
  what it owns) and, per integration, its `owner`; for integrations another
  daemon delivers, the live figures come from that daemon's announcement
  instead of the (absent) local sink. The HTTP API's answers are untouched:
  the spec's integration schema has no place for an owner.
- With LMDB there is no cluster: the snapshot carries `cluster: null` and
  no `owner`.
- An announcement is an `Announced` struct, JSON on the store. It is read
  with validation, and leniently: another version's (or a half-built)
  announcement must not break this daemon's status, so one whose `owns` has
  another shape is read as owning nothing known, a figure that does not fit
  as no figures, and one that cannot be read at all as empty.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from .. import __version__
from ..storage.leases import Snapshot
from .contracts import SinkStatusSource


class OwnedFigures(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a daemon announces of one integration it delivers."""

    delivered: int | None = None
    delivered_rate: float = 0.0
    cursor: int | None = None
    # Where its sink stands now (everything before is delivered or filtered out).
    position: int | None = None
    in_flight: int | None = None


class Announced(msgspec.Struct, frozen=True, kw_only=True):
    """A daemon's announcement: the balancer's part (ownership.py) and its figures."""

    instance: str = ""
    token: str = ""  # its data dir's token (see storage/jetstream/lease.py)
    at: float = 0.0  # wall clock when it was made
    share: int = 0
    live: int = 0
    pid: int | None = None
    version: str | None = None
    uptime: float | None = None
    owns: dict[str, OwnedFigures] = {}


_ANNOUNCED = msgspec.json.Decoder(Announced)


def encode_announcement(status: Announced) -> bytes:
    return msgspec.json.encode(status)


def read_announcement(data: bytes) -> Announced:
    """An announcement as stored; see the module docstring for what is forgiven."""
    try:
        return _ANNOUNCED.decode(data)
    except msgspec.DecodeError:
        pass
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return Announced()
    if not isinstance(raw, dict):
        return Announced()
    owns = raw.pop("owns", None)
    try:
        status = msgspec.convert(raw, Announced)
    except msgspec.ValidationError:
        return Announced()
    return msgspec.structs.replace(status, owns=_owned(owns))


def _owned(raw: object) -> dict[str, OwnedFigures]:
    if not isinstance(raw, dict):
        return {}
    found: dict[str, OwnedFigures] = {}
    for integration_id, figures in raw.items():
        try:
            found[str(integration_id)] = msgspec.convert(figures, OwnedFigures)
        except msgspec.ValidationError:
            found[str(integration_id)] = OwnedFigures()
    return found


class ClusterState(Protocol):
    """What the cluster view reads of the ownership balancer (ownership.py)."""

    @property
    def snapshot(self) -> Snapshot | None: ...

    @property
    def instance(self) -> str: ...

    @property
    def live(self) -> set[str]: ...

    @property
    def held(self) -> Mapping[str, object]: ...

    @property
    def ttl(self) -> float: ...

    @property
    def share(self) -> int: ...


class LocalReport:
    """Adds this daemon's figures to its announcement (the balancer calls it once per
    period with what it announces: its `owns` names the integrations it holds)."""

    def __init__(self, sinks: SinkStatusSource,
                 clock: Callable[[], float] = time.time) -> None:
        self.sinks = sinks
        self.clock = clock
        self._last: tuple[float, dict[str, int]] | None = None
        self._started = clock()

    def __call__(self, status: Announced) -> Announced:
        now = self.clock()
        delivered: dict[str, int] = {}
        owns: dict[str, OwnedFigures] = {}
        before_at, before = self._last if self._last is not None else (now, {})
        elapsed = now - before_at
        for integration_id in sorted(status.owns):
            sink = self.sinks.sink_status(integration_id)
            count = sink.stats.delivered if sink else 0
            delivered[integration_id] = count
            delta = counter_delta(count, before.get(integration_id, count))
            owns[integration_id] = OwnedFigures(
                delivered=count if sink else None,
                delivered_rate=per_second(delta, elapsed),
                cursor=sink.cursor if sink else None,
                position=sink.position if sink else None,
                in_flight=sink.pipeline.in_flight if sink else None,
            )
        self._last = (now, delivered)
        return msgspec.structs.replace(status, pid=os.getpid(), version=__version__,
                                       uptime=round(now - self._started, 1), owns=owns)


def per_second(delta: float, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


def counter_delta(count: int, before: int) -> int:
    """What a counter grew by; one that went down belongs to a restarted sink, so all
    of it is new."""
    return count - before if count >= before else count


def cluster_section(ownership: ClusterState, now: float) -> dict[str, Any]:
    """The snapshot's `cluster`: this daemon's name and every daemon seen."""
    snapshot = ownership.snapshot
    instances = []
    if snapshot is not None:
        for name, entry in sorted(snapshot.instances.items()):
            if entry.deleted:
                continue
            status = read_announcement(entry.status)
            instances.append({
                "instance": name,
                "this": name == ownership.instance,
                "live": name in ownership.live,
                "pid": status.pid,
                "version": status.version,
                "announced_age": round(max(0.0, now - (status.at or now)), 1),
                # Our own part is known now; the others' as they last announced it.
                "owns": sorted(ownership.held if name == ownership.instance else status.owns),
                "delivered_rate": round(sum(o.delivered_rate for o in status.owns.values()), 2),
            })
    return {"instance": ownership.instance, "lease_ttl": ownership.ttl,
            "share": ownership.share, "instances": instances}


def remote_figures(ownership: ClusterState) -> dict[str, OwnedFigures]:
    """Integration id -> its figures, from the live daemons' announcements."""
    found: dict[str, OwnedFigures] = {}
    snapshot = ownership.snapshot
    if snapshot is None:
        return found
    for name, entry in snapshot.instances.items():
        if entry.deleted or name not in ownership.live:
            continue
        found.update(read_announcement(entry.status).owns)
    return found
