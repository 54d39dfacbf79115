"""Which store backs the daemon: chosen by `storage.backend` in the config.

The JetStream backend (and with it nats-py) is imported only when it is
chosen, so the embedded LMDB default never loads NATS.
"""

from __future__ import annotations

from ..config import Config
from .base import Store
from .lmdb_store import LmdbStore


def open_store(config: Config, *, accept_new_streams: bool = False) -> Store:
    """The configured store, not yet entered (`async with open_store(config) as store`).
    `accept_new_streams`: JetStream may create empty streams in place of ones this data
    dir's daemon used before (`eventstreamd run --accept-new-streams`)."""
    if config.storage.backend == "jetstream":
        from .jetstream import JetStreamStore

        return JetStreamStore(config, accept_new_streams=accept_new_streams)
    return LmdbStore(
        config.data_dir,
        map_size=config.storage.map_size,
        log_entries=config.limits.log_entries,
        rejected_events=config.limits.rejected_events,
    )
