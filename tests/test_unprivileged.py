"""The daemon as a service runs it: an unprivileged user, another working directory.

CI runs as root, and root ignores file modes: a data dir its own daemon cannot
enter went unnoticed until someone started it as `nobody`. When the suite runs
as root, the daemon here is started through `setpriv` as nobody/nogroup on a
data dir that user owns; as any other user it already is unprivileged. The
dashboard attaches as that same user (the control socket is 0600).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.helpers.api import ApiClient, events
from tests.helpers.daemon import DaemonProcess
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually

AS_ROOT = os.geteuid() == 0
WAIT = 20.0


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _as_service_user() -> list[str]:
    if not AS_ROOT:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    uid, gid = _nobody()
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


INSTALL = (Path(__file__).resolve().parent.parent, Path(sys.prefix))  # checkout, venv


@pytest.fixture
def traversable_install() -> Iterator[None]:
    """A service's install is readable by its user; this checkout may sit in a
    directory only root may enter (`git clone` into `mktemp -d`, mode 0700). As root,
    let others traverse (x, not list) the checkout's and the venv's ancestors for the
    test, and put each mode back after."""
    changed: list[tuple[Path, int]] = []
    if AS_ROOT:
        for top in INSTALL:
            for directory in (top, *top.parents):
                mode = stat.S_IMODE(directory.stat().st_mode)
                if not mode & stat.S_IXOTH and all(d != directory for d, _ in changed):
                    os.chmod(directory, mode | stat.S_IXOTH)
                    changed.append((directory, mode))
    try:
        yield
    finally:
        for directory, mode in reversed(changed):
            os.chmod(directory, mode)


@pytest.fixture
def service_dirs(traversable_install: None) -> Iterator[tuple[Path, Path]]:
    """(config dir, data dir) under a directory every user may traverse; the data
    dir belongs to the service user and does not exist yet (the daemon creates it)."""
    base = Path(tempfile.mkdtemp(prefix="esd-service-", dir="/tmp"))
    os.chmod(base, 0o755)
    owned = base / "srv"
    owned.mkdir(mode=0o755)
    if AS_ROOT:
        uid, gid = _nobody()
        os.chown(owned, uid, gid)
    try:
        yield base, owned / "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


TUI_SCRIPT = """
import sys, anyio
from eventstreamd.tui.app import DashboardApp
from textual.widgets import DataTable

async def main() -> None:
    app = DashboardApp(sys.argv[1], reconnect_delay=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        with anyio.fail_after(15):
            while True:
                grid = app.screen.query_one("#integrations", DataTable)
                if "w1" in {key.value for key in grid.rows}:
                    print("attached: w1")
                    return
                await pilot.pause(0.1)

anyio.run(main)
"""


async def test_publish_deliver_and_attach_as_an_unprivileged_user(
        service_dirs: tuple[Path, Path]) -> None:
    base, data_dir = service_dirs
    wrapper = _as_service_user()
    workdir = base / "cfg"
    workdir.mkdir()
    elsewhere = Path("/")  # not the config's directory, not the data dir's parent
    daemon = DaemonProcess(workdir, {"storage": {"data_dir": str(data_dir)}},
                           wrapper=wrapper, cwd=elsewhere)
    os.chmod(daemon.config_path, 0o644)
    receiver = await Receiver().start()
    try:
        daemon.start()
        owner = os.stat(data_dir).st_uid
        assert owner == (_nobody()[0] if AS_ROOT else os.geteuid())
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(data_dir / "lmdb").st_mode) == 0o700
        async with ApiClient(daemon) as api:
            await api.webhook("w1", receiver.url)
            await api.publish(events(20))
            await eventually(lambda: len(receiver.delivered) >= 20, within=WAIT)
        # The dashboard attaches over the control socket as the same user.
        with anyio.fail_after(60):
            tui = await anyio.run_process(
                [*wrapper, sys.executable, "-c", TUI_SCRIPT,
                 str(daemon.data_dir / "control.sock")], cwd=elsewhere, check=False)
        assert tui.returncode == 0, tui.stderr.decode(errors="replace")[-2000:]
        assert b"attached: w1" in tui.stdout
        assert daemon.stop() == 0
        # ... and it starts again on the data dir it made.
        daemon.start()
        async with ApiClient(daemon) as api:
            await api.publish(events(1, start=20))
            await eventually(lambda: len(receiver.delivered) >= 21, within=WAIT)
    finally:
        daemon.kill()
        await receiver.close()
    assert "Traceback" not in daemon.log()
