"""Which store backs the daemon: chosen here, and only here, by `storage.backend`.

Nothing above `storage/` names a backend: the daemon opens what `open_store`
returns, asks it for its `leases` (several daemons may share it) and
catches the errors `storage/base.py` defines. The JetStream backend (and with
it nats-py) is imported only when it is chosen, so the embedded LMDB default
never loads NATS.
"""

from __future__ import annotations

from ..codec import TargetTypes
from ..config import Config
from .base import Store
from .lmdb_store import LmdbStore


def open_store(config: Config, targets: TargetTypes, *,
               accept_new_streams: bool = False) -> Store:
    """The configured store, not yet entered (`async with open_store(config, SINK_TYPES)
    as store`); `targets` (the sink registry) reads the integrations' targets.
    `accept_new_streams`: JetStream may create empty streams in place of ones this data
    dir's daemon used before (`eventstreamd run --accept-new-streams`)."""
    if config.storage.backend == "jetstream":
        from .jetstream import JetStreamStore

        return JetStreamStore(config, targets, accept_new_streams=accept_new_streams)
    return LmdbStore(
        config.data_dir,
        targets=targets,
        map_size=config.storage.map_size,
        log_entries=config.limits.log_entries,
        rejected_events=config.limits.rejected_events,
    )


def opening(config: Config) -> str:
    """What opening the configured store does, for the start-up error line."""
    if config.storage.backend == "jetstream":
        return "connect to NATS JetStream"
    return f"open the store in {config.data_dir}"
