"""Which JetStream streams a data dir's daemon has used: `{data_dir}/jetstream_identity.json`.

Decisions:
- A stream is known by its name and its creation time (`created` in
  STREAM.INFO): the server keeps it for the stream's life, on every replica
  and across restarts, and a stream deleted and made again under the same
  name gets another one. So a wiped server, a deleted stream or one replaced
  by another shows as "gone" or "created at another time" — nothing has to be
  written into the streams for it.
- The file maps stream names to creation times (names carry the prefix, so
  a data dir that served several prefixes keeps each). It is written after
  the streams were opened (and when a running daemon adopts replaced ones),
  atomically (a temporary file renamed), mode 0600 like everything in the
  data dir. An unreadable file counts as absent: the check protects against
  losing the streams, not against losing the data dir, and must never keep a
  daemon from starting on its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

FILE_NAME = "jetstream_identity.json"


class StreamIdentity:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME

    def remembered(self) -> dict[str, str]:
        """Stream name -> creation time, of every stream this data dir has used."""
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        streams = data.get("streams") if isinstance(data, dict) else None
        if not isinstance(streams, dict):
            return {}
        return {str(k): str(v) for k, v in streams.items() if isinstance(v, str)}

    def remember(self, streams: dict[str, str]) -> None:
        known = self.remembered()
        if all(known.get(name) == created for name, created in streams.items()):
            return
        known.update(streams)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps({"streams": known}, option=orjson.OPT_INDENT_2))
            os.replace(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def changes(remembered: dict[str, str], found: dict[str, str | None]) -> list[str]:
    """How the streams found differ from those remembered, one phrase each ("esd_events
    is gone", "esd_state was created anew at ..."); empty when none was used before or
    all are the same."""
    out = []
    for name, created in found.items():
        known = remembered.get(name)
        if known is None or known == created:
            continue
        out.append(f"{name} is gone" if created is None
                   else f"{name} was created anew ({created}; the one used was {known})")
    return out
