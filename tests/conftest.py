from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import DaemonProcess


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start real daemons (subprocess, port 0, temp data dir); all are stopped afterwards."""
    started: list[DaemonProcess] = []

    def factory(settings: dict[str, Any] | None = None, name: str = "d",
                env: dict[str, str] | None = None, **options: Any) -> DaemonProcess:
        workdir = tmp_path / f"{name}{len(started)}"
        workdir.mkdir()
        proc = DaemonProcess(workdir, settings, env, **options).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    return daemon_factory()
