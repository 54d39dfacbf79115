"""Retention: prune events older than `storage.retention` in bounded chunks.

Each chunk is its own small job in the group commit, with a pause between
chunks, so a large prune never holds the writer for long and publishers keep
their latency while it runs.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel

from ..logs import kv
from ..storage.lmdb_store import LmdbStore, StoreFull, now_ms
from ..storage.writer import WriterClosed

log = logging.getLogger("eventstreamd.retention")

CHUNK = 5_000


async def prune_once(store: LmdbStore, retention_s: float, chunk: int = CHUNK) -> int:
    """Prune everything older than the retention; return how many events went."""
    cutoff = now_ms() - int(retention_s * 1000)
    total = 0
    while True:
        deleted, more = await store.prune_before(cutoff, chunk)
        total += deleted
        if not more:
            break
        await anyio.lowlevel.checkpoint()  # let waiting publishers in between chunks
    if total:
        await store.settle_freed_pages()
        log.info("pruned events past retention", extra=kv(count=total, first_seq=store.first_seq()))
    return total


async def retention_loop(store: LmdbStore, retention_s: float, every_s: float) -> None:
    while True:
        try:
            await prune_once(store, retention_s)
        except WriterClosed:
            return  # shutting down
        except StoreFull:
            # Deleting needs a few free pages too; try again on the next round.
            log.warning("retention could not run: the store is full")
        await anyio.sleep(every_s)
