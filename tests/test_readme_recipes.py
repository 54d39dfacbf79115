"""The README's recipes beyond the quick start run as written: each section's shell blocks,
in order, as one bash script in a directory standing for the clone, with the commands of
the package's venv on PATH. Only the fixed ports are swapped for free ones (tests run in
parallel); what a recipe starts it stops itself, and it leaves nothing in the clone."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from eventstreamd.config import load_config, valid_signing_secret
from tests.helpers.nats_server import free_port
from tests.helpers.readme import blocks, section, shell_env
from tests.helpers.wait import eventually_sync

ACTIVATE = ". .venv/bin/activate"


def recipe(title: str, ports: tuple[str, ...] = ()) -> str:
    """The section's shell blocks as one script, its fixed ports replaced."""
    script = "\n".join(blocks(section(title), "sh"))
    lines = script.splitlines()
    assert lines[0].split("#")[0].strip() == ACTIVATE  # the test's PATH does what it does
    script = "\n".join(line for line in lines if line.split("#")[0].strip() != ACTIVATE)
    swapped = {port: str(free_port()) for port in ports}
    for port, free in swapped.items():
        assert re.search(rf"\b{port}\b", script), port
        script = re.sub(rf"\b{port}\b", free, script)
    return script


def run(script: str, clone: Path, home: Path, timeout: float = 150.0,
        ) -> subprocess.CompletedProcess[str]:
    """bash -eu in its own process group, which is killed afterwards whatever happened."""
    temp = home / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    env = dict(shell_env(), HOME=str(home), TMPDIR=str(temp), AWS_EC2_METADATA_DISABLED="1")
    proc = subprocess.Popen(["bash", "-eu", "-o", "pipefail", "-c", script], cwd=clone,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the recipe did not finish:\n{out[-3000:]}\n{err[-3000:]}"
                             f"\n{logs(temp)}") from None
    finally:
        stopped = _group_ended(proc.pid)
        if not stopped:
            os.killpg(proc.pid, signal.SIGKILL)  # what the recipe failed to stop
    assert stopped or proc.returncode != 0, "the recipe left processes running"
    if proc.returncode != 0:
        err += "\n" + logs(temp)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def logs(where: Path) -> str:
    """The tails of the logs a failed recipe left behind."""
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-1500:]}"
                     for path in sorted(where.rglob("*.log")))


def _group_ended(group: int) -> bool:
    """The recipe's processes are gone (those it stopped get a few seconds to exit)."""
    def ended() -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        eventually_sync(ended, within=10, every=0.1)
    except AssertionError:
        return False
    return True


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    path = tmp_path / "clone"
    path.mkdir()
    return path


def test_try_s3_locally(clone: Path, tmp_path: Path) -> None:
    script = recipe("Try S3 locally", ("5000", "8081"))
    result = run(script, clone, tmp_path)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    key = re.search(r"^(events/default/\d+-data-[0-9a-z]+\.export)$", result.stdout, re.M)
    assert key, result.stdout
    assert '"payload":{"order_id":"A-1"}' in result.stdout.replace(" ", "")
    assert os.listdir(clone) == []  # nothing left in the clone
    assert os.listdir(tmp_path / "tmp") == []  # its temporary directory removed


@pytest.mark.timeout(300)  # three nats-servers electing leaders, two daemons, on 2 cores
def test_scaling_out(clone: Path, tmp_path: Path) -> None:
    ports = ("4222", "4223", "4224", "6222", "6223", "6224", "8091", "8092", "9100")
    script = recipe("Scaling out", ports)
    result = run(script, clone, tmp_path, timeout=240)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "orders" in result.stdout and "running" in result.stdout
    agent = re.search(r"User-Agent: eventstreamd/\S+ \(instance ([ab])\)", result.stdout)
    assert agent, result.stdout
    assert os.listdir(clone) == []
    assert os.listdir(tmp_path / "tmp") == []


def test_signing_secret_lives_outside_the_clone(clone: Path, tmp_path: Path) -> None:
    [block] = blocks(section("Signed webhooks"), "sh")
    result = run(block, clone, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    config_path = tmp_path / ".config" / "eventstreamd" / "eventstreamd.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = load_config(config_path)
    assert valid_signing_secret(config.webhook.signing_secret)
    assert config.data_dir == clone / "data"
    assert os.listdir(clone) == []


def test_replays(clone: Path, tmp_path: Path) -> None:
    script = recipe("Replays", ("8082", "9200"))
    result = run(script, clone, tmp_path)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout
    assert '{"events":3}' in out
    assert re.search(r'"events":4,"status":"running"', out), out
    assert "erp: 3 events would be replayed" in out
    assert re.search(r"replay [0-9a-f]{16} completed: 3 of 3 events delivered", out), out
    assert re.search(r"replay [0-9a-f]{16} cancelled after", out), out
    replayed = int(out.strip().splitlines()[-1])
    assert 3 <= replayed < 3 + 4  # the CLI's three, and what the paced one sent meanwhile
    assert os.listdir(clone) == []
    assert os.listdir(tmp_path / "tmp") == []
