"""Retention: prune events older than `storage.retention`, once per `storage.retention_check`.

The store prunes in bounded steps (each its own small commit), so a large
prune never holds the writer for long and publishers keep their latency.
"""

from __future__ import annotations

import logging
import time

import anyio

from ..logs import kv
from ..storage.base import Store, StoreFull, StoreUnavailable

log = logging.getLogger("eventstreamd.retention")


async def prune_once(store: Store, retention_s: float) -> int:
    """Prune everything older than the retention; return how many events went."""
    cutoff = time.time_ns() // 1_000_000 - int(retention_s * 1000)
    total = await store.prune(cutoff)
    if total:
        log.info("pruned events past retention",
                 extra=kv(count=total, first_seq=await store.first_seq()))
    return total


async def retention_loop(store: Store, retention_s: float, every_s: float) -> None:
    while True:
        try:
            await prune_once(store, retention_s)
        except StoreUnavailable:
            log.warning("retention could not run: the store is unavailable")
        except StoreFull:
            # Deleting needs a few free pages too; try again on the next round.
            log.warning("retention could not run: the store is full")
        await anyio.sleep(every_s)
