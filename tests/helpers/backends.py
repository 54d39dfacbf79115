"""Which storage backends a test module runs on, and a daemon's settings for JetStream.

A module chooses its backends with a module constant `BACKENDS` (read by
`pytest_generate_tests` in tests/conftest.py): `BACKENDS = EVERY_BACKEND` or
`BACKENDS = JETSTREAM_ONLY`; without one its daemon tests run on LMDB only.
"""

from __future__ import annotations

import uuid
from typing import Any

from .nats_server import NatsServer

EVERY_BACKEND = ("lmdb", "jetstream")
JETSTREAM_ONLY = ("jetstream",)


def new_prefix() -> str:
    """A stream prefix of its own: daemons on one nats-server never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


def jetstream_settings(server: NatsServer, prefix: str | None = None) -> dict[str, Any]:
    return {"storage": {"backend": "jetstream"},
            "jetstream": {"servers": [server.url], "prefix": prefix or new_prefix()}}
