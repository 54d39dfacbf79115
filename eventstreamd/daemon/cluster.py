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
  no `owner`, as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:  # ownership loads NATS: only the JetStream backend imports it
    from .ownership import Ownership
    from .status import SinkStatusSource


class LocalReport:
    """Builds this daemon's announcement (called by the balancer once per period)."""

    def __init__(self, sinks: SinkStatusSource, ownership: Ownership,
                 clock: Callable[[], float] = time.time) -> None:
        self.sinks = sinks
        self.ownership = ownership
        self.clock = clock
        self._last: tuple[float, dict[str, int]] | None = None
        self._started = clock()

    def __call__(self) -> dict[str, Any]:
        now = self.clock()
        delivered: dict[str, int] = {}
        owns: dict[str, dict[str, Any]] = {}
        before_at, before = self._last if self._last is not None else (now, {})
        elapsed = now - before_at
        for integration_id in sorted(self.ownership.held):
            sink = self.sinks.sink_status(integration_id)
            count = sink.stats.delivered if sink else 0
            delivered[integration_id] = count
            delta = counter_delta(count, before.get(integration_id, count))
            owns[integration_id] = {
                "delivered": count if sink else None,
                "delivered_rate": per_second(delta, elapsed),
                "cursor": sink.cursor if sink else None,
                "position": sink.position if sink else None,
                "in_flight": sink.pipeline.in_flight if sink else None,
            }
        self._last = (now, delivered)
        return {"pid": os.getpid(), "version": __version__,
                "uptime": round(now - self._started, 1), "owns": owns}


def per_second(delta: float, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


def counter_delta(count: int, before: int) -> int:
    """What a counter grew by; one that went down belongs to a restarted sink, so all
    of it is new."""
    return count - before if count >= before else count


def cluster_section(ownership: Ownership, now: float) -> dict[str, Any]:
    """The snapshot's `cluster`: this daemon's name and every daemon seen."""
    snapshot = ownership.snapshot
    instances = []
    if snapshot is not None:
        for name, entry in sorted(snapshot.instances.items()):
            if entry.deleted:
                continue
            status = entry.status
            owns = announced_owns(status)
            instances.append({
                "instance": name,
                "this": name == ownership.instance,
                "live": name in ownership.live,
                "pid": status.get("pid"),
                "version": status.get("version"),
                "announced_age": round(max(0.0, now - float(status.get("at") or now)), 1),
                # Our own part is known now; the others' as they last announced it.
                "owns": sorted(ownership.held if name == ownership.instance else owns),
                "delivered_rate": round(sum(float(o.get("delivered_rate") or 0)
                                            for o in owns.values()), 2),
            })
    return {"instance": ownership.instance, "lease_ttl": ownership.ttl,
            "share": ownership.share, "instances": instances}


def remote_figures(ownership: Ownership) -> dict[str, dict[str, Any]]:
    """Integration id -> its figures, from the live daemons' announcements."""
    found: dict[str, dict[str, Any]] = {}
    snapshot = ownership.snapshot
    if snapshot is None:
        return found
    for name, entry in snapshot.instances.items():
        if entry.deleted or name not in ownership.live:
            continue
        for integration_id, figures in announced_owns(entry.status).items():
            found[integration_id] = figures
    return found


def announced_owns(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An announcement's `owns` (integration id -> figures); {} when it holds something
    else (another version's announcement must not break this daemon's status)."""
    owns = status.get("owns")
    if not isinstance(owns, dict):
        return {}
    return {str(k): v if isinstance(v, dict) else {} for k, v in owns.items()}
