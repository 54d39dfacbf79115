"""The cluster view read from other daemons' announcements: whatever another daemon
(another version, a half-built announcement) wrote must not break this one's status.

The announcements are plain data as they come off the state stream, so the
view is fed them directly; the ownership state around them is a plain
namespace with the attributes the view reads.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from eventstreamd.daemon.cluster import OwnedFigures, cluster_section, remote_figures
from eventstreamd.storage.leases import Announcement, Snapshot


def ownership_seeing(**statuses: dict[str, Any]) -> Any:
    instances = {name: Announcement(name, n + 1, False, 0.0, orjson.dumps(status))
                 for n, (name, status) in enumerate(statuses.items())}
    return SimpleNamespace(snapshot=Snapshot({}, instances), instance="d0",
                           live=set(statuses), held={"mine": object()}, ttl=10.0, share=1)


@pytest.mark.parametrize("owns", [["a", "b"], "a", 3, None, {"a": "not figures"}],
                         ids=["list", "text", "number", "null", "bad-figures"])
def test_an_announcement_in_another_shape_is_read_as_owning_nothing_known(owns: Any) -> None:
    ownership = ownership_seeing(d0={"at": 0}, d1={"at": 0, "pid": 7, "owns": owns})
    section = cluster_section(ownership, now=1.0)
    other = next(i for i in section["instances"] if i["instance"] == "d1")
    assert other["pid"] == 7 and other["delivered_rate"] == 0.0
    assert all(isinstance(v, OwnedFigures) for v in remote_figures(ownership).values())
    this = next(i for i in section["instances"] if i["instance"] == "d0")
    assert this["owns"] == ["mine"]


def test_figures_of_live_daemons_are_read() -> None:
    ownership = ownership_seeing(d0={"at": 0}, d1={"at": 0, "owns": {
        "a": {"delivered_rate": 2.5, "cursor": 9}, "b": {"delivered_rate": 1.0}}})
    section = cluster_section(ownership, now=1.0)
    other = next(i for i in section["instances"] if i["instance"] == "d1")
    assert other["owns"] == ["a", "b"] and other["delivered_rate"] == 3.5
    assert remote_figures(ownership)["a"].cursor == 9
