"""What a running daemon leaves for local clients: `runtime.json` and the API token file.

Decisions:
- `{data_dir}/runtime.json` says where the running daemon listens (its port may
  be 0 in the config) and where its control socket is; `eventstreamd publish`,
  the dashboard and the tests read it. It is written atomically (rename) and
  removed on a clean stop. It is a `RuntimeInfo` struct, read with
  validation: a file of another shape reads as no file.
- `{data_dir}/api_token` holds the generated token when `auth.tokens` is empty.
- This module imports nothing of the daemon, so the clients that read these
  files (`publish`, `integrations`) start without loading the daemon, its
  sinks, aiobotocore or jsonschema.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from .config import Config

RUNTIME_FILE = "runtime.json"
TOKEN_FILE = "api_token"


class RuntimeInfo(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    url: str
    port: int
    control_socket: str


def runtime_file(config: Config) -> Path:
    return config.data_dir / RUNTIME_FILE


def token_file(config: Config) -> Path:
    return config.data_dir / TOKEN_FILE


def write_runtime(path: Path, info: RuntimeInfo) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(info))
    os.replace(tmp, path)


def remove_runtime(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_runtime(config: Config) -> RuntimeInfo | None:
    try:
        return msgspec.json.decode(runtime_file(config).read_bytes(), type=RuntimeInfo)
    except (OSError, msgspec.DecodeError):
        return None
