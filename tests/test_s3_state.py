"""The S3 sink's saved state across an upgrade, on every backend: the state the previous
version saved (plain data, stored by the store as it is) is read by this one, and this one
saves that same form, so a downgrade reads it too; a state of another shape is refused
with a message instead of failing later on a missing key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from eventstreamd.config import Config
from eventstreamd.model import Integration, LogEntry
from eventstreamd.sinks.registry import SINK_TYPES
from eventstreamd.sinks.s3 import (
    Manifest,
    S3State,
    S3Target,
    StateUnreadable,
    read_state,
    state_form,
)
from eventstreamd.storage.base import Store
from eventstreamd.storage.factory import open_store
from tests.helpers.store import held

BACKENDS = ("lmdb", "jetstream")

# What the version before typed states saved (S3Pipeline._save_state): the watermarks and
# the recorded files, each without its spool path.
PREVIOUS: dict[str, Any] = {
    "watermarks": {"acme": 7, "globex": 3},
    "pending": [
        {"key": "exports/acme/1714521600000-data-5f0c.export", "tenant": "acme",
         "first_seq": 5, "last_seq": 7, "lines": 3, "size": 312,
         "opened_at": 1714521600.25, "filter": {"event_filter": ["order.created"]}},
        {"key": "exports/globex/1714521600100-data-77aa.export", "tenant": "globex",
         "first_seq": 2, "last_seq": 3, "lines": 2, "size": 200,
         "opened_at": 1714521600.1, "filter": None},
    ],
}
# Older still: no `opened_at`.
OLDEST: dict[str, Any] = {
    "watermarks": {"acme": 4},
    "pending": [{"key": "acme/1-data-a.export", "tenant": "acme", "first_seq": 1,
                 "last_seq": 4, "lines": 4, "size": 100, "filter": None}],
}


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    async with held(open_store(store_config, SINK_TYPES)) as s:
        yield s


async def saved_and_read(store: Store, form: dict[str, Any]) -> dict[str, object] | None:
    integration = Integration(
        id="s3-a", type="permanent", status="running",
        target=S3Target(aws_region="us-east-1", bucket="exports"), incarnation="inc-1",
        created_at="2024-05-01T00:00:00.000Z")
    await store.create_integration(integration, cursor=1, limit=10,
                                   log=LogEntry("2024-05-01T00:00:00.000Z", "created", "t"))
    assert await store.put_sink_state(integration.fence(), form)
    return await store.get_sink_state("s3-a")


async def test_the_previous_versions_state_is_read_and_written_back_alike(
        store: Store) -> None:
    stored = await saved_and_read(store, PREVIOUS)
    state = read_state(stored)
    assert state == S3State(
        watermarks={"acme": 7, "globex": 3},
        pending=[Manifest(key="exports/acme/1714521600000-data-5f0c.export", tenant="acme",
                          first_seq=5, last_seq=7, lines=3, size=312,
                          filter={"event_filter": ["order.created"]},
                          opened_at=1714521600.25),
                 Manifest(key="exports/globex/1714521600100-data-77aa.export",
                          tenant="globex", first_seq=2, last_seq=3, lines=2, size=200,
                          opened_at=1714521600.1)])
    assert state_form(state) == PREVIOUS


async def test_a_state_without_opened_at_is_read(store: Store) -> None:
    state = read_state(await saved_and_read(store, OLDEST))
    assert state.watermarks == {"acme": 4}
    assert [(m.key, m.opened_at) for m in state.pending] == [("acme/1-data-a.export", None)]


def test_a_compressed_files_encoding_is_kept() -> None:
    manifest = Manifest(key="acme/1-4.parquet", tenant="acme", first_seq=1, last_seq=4,
                        lines=4, size=100, format="parquet", compression="zstd")
    form = state_form(S3State({"acme": 4}, [manifest]))
    assert form["pending"] == [{**msgspec.to_builtins(manifest)}]
    assert read_state(form).pending == [manifest]


def test_no_state_is_an_empty_one() -> None:
    assert read_state(None) == S3State()


@pytest.mark.parametrize("form", [
    {"watermarks": {"acme": "seven"}, "pending": []},
    {"watermarks": {}, "pending": [{"key": "k", "tenant": "acme"}]},
    {"watermarks": {}, "pending": {"key": "k"}},
], ids=["bad-watermark", "manifest-missing-fields", "pending-not-a-list"])
def test_a_state_of_another_shape_is_refused_naming_it(form: dict[str, Any]) -> None:
    with pytest.raises(StateUnreadable, match="saved state cannot be read"):
        read_state(form)
