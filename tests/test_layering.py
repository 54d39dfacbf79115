"""What a process loads, checked at run time (the static layering is `lint-imports`, run by
`make test` with the contracts in pyproject.toml): the daemon never loads Textual (nor NATS
until `storage.backend = "jetstream"` asks for it), and the command-line clients start
without the daemon, aiobotocore or jsonschema."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    ("eventstreamd.daemon.lifecycle", ["textual", "nats"]),
    ("eventstreamd.publisher", ["eventstreamd.daemon", "aiobotocore", "jsonschema", "lmdb",
                                "textual"]),
    ("eventstreamd.runtime", ["eventstreamd.daemon", "aiobotocore", "jsonschema", "lmdb"]),
    ("eventstreamd.integrations_cli", ["eventstreamd.daemon", "aiobotocore", "jsonschema",
                                       "lmdb", "textual", "aiohttp"]),
    ("eventstreamd.listen", ["eventstreamd.daemon", "eventstreamd.storage", "aiobotocore",
                             "jsonschema", "lmdb", "textual"]),
    ("eventstreamd.tui.client", ["eventstreamd.daemon", "lmdb", "aiobotocore"]),
]


@pytest.mark.parametrize(("module", "absent"), CASES)
def test_importing_does_not_load(module: str, absent: list[str]) -> None:
    probe = (f"import sys, {module}\n"
             f"loaded = [m for m in {absent!r} if m in sys.modules]\n"
             "print(','.join(loaded))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"
