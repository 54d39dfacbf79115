"""Start-up failures are one clear line and exit code 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.daemon import DaemonProcess, write_config


def run_daemon(config_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstreamd", "run", "--config", config_path],
                          capture_output=True, text=True, timeout=60)


def test_second_daemon_on_the_same_data_dir_is_refused(daemon: DaemonProcess) -> None:
    other = write_config(daemon.workdir / "second.toml", {
        **daemon.settings, "server": {"host": "127.0.0.1", "port": 0},
        "control": {"socket": str(daemon.workdir / "other.sock")}})
    result = run_daemon(str(other))
    assert result.returncode == 1
    assert "another eventstreamd is running with this data_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line(daemon: DaemonProcess) -> None:
    port = int(daemon.url.rsplit(":", 1)[1])
    other = write_config(daemon.workdir / "second.toml", {
        **daemon.settings, "server": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(daemon.workdir / "other-data")}})
    result = run_daemon(str(other))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
