"""Integration log entries written by the delivery layer (the seed's actions and reasons)."""

from __future__ import annotations

from ..storage.lmdb_store import LmdbStore
from ..timeutil import now_iso


async def add_log(store: LmdbStore, integration_id: str, action: str, reason: str) -> None:
    created_at = now_iso()
    await store.write(
        lambda txn: store.txn_add_log(txn, integration_id, action, reason, created_at)
    )
