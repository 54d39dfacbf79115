"""Integration log entries written by the delivery layer (the seed's actions and reasons).

Decisions:
- A sink writes only while its integration is still the one it was started
  for (`incarnation`): a sink finishing for a deleted integration must not
  leave entries under a new integration that reuses the id.
- An entry that cannot be written because the store is full is dropped with a
  warning: losing one line of an integration's log is better than stalling or
  crashing delivery while the operator frees space.
"""

from __future__ import annotations

import logging

import lmdb

from ..logs import kv
from ..storage.lmdb_store import LmdbStore, StoreFull
from ..timeutil import now_iso

log = logging.getLogger("eventstreamd.journal")


async def add_log(store: LmdbStore, integration_id: str, incarnation: str | None, action: str,
                  reason: str) -> None:
    created_at = now_iso()

    def job(txn: lmdb.Transaction) -> None:
        if store.txn_is_incarnation(txn, integration_id, incarnation):
            store.txn_add_log(txn, integration_id, action, reason, created_at)

    try:
        await store.write(job)
    except StoreFull:
        log.warning("integration log entry dropped: the store is full",
                    extra=kv(integration=integration_id, action=action))
