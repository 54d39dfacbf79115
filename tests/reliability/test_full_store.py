"""A full map or a full disk: 507, nothing stored is lost, and recovery without a restart."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.api import ApiClient
from tests.helpers.daemon import Factory
from tests.helpers.fill import padded, publish_until_full
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually

pytestmark = pytest.mark.reliability


@contextlib.contextmanager
def tiny_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


async def test_map_full_recovers_when_retention_frees_space(daemon_factory: Factory) -> None:
    d = daemon_factory({"storage": {"map_size": "1MiB", "retention": "2s",
                                    "retention_check": "250ms"}})
    async with ApiClient(d) as api:
        acknowledged, error = await publish_until_full(api, 2000)
        assert error["status"] == 507 and error["error_code"] == "insufficient_storage"
        assert acknowledged > 0
        # No restart: retention prunes the old events and publishing works again.
        async def publish() -> int:
            status, _ = await api.answer("POST", "/events", padded(10, 0, 2000))
            assert status in (200, 507)
            return status

        await eventually(publish, lambda status: status == 200, within=30, every=0.25,
                         what="a publish accepted again")
        # Logged once the whole prune is done, which may be after the space it freed
        # was already used by that publish.
        await eventually(lambda: "pruned events past retention" in d.log(), within=30,
                         what="the prune logged")


async def test_disk_full_answers_507_keeps_data_and_resumes(daemon_factory: Factory,
                                                            tmp_path: Path) -> None:
    receiver = await Receiver().start()
    with tiny_disk(tmp_path / "disk", "6m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (2 * 1024 * 1024))
        d = daemon_factory({"storage": {"data_dir": str(disk / "data"), "map_size": "256MiB"}})
        try:
            async with ApiClient(d) as api:
                await api.webhook("w1", receiver.url)
                acknowledged, error = await publish_until_full(api, 3000)
                assert error["status"] == 507, error
                assert acknowledged > 0
                # Space returns: no restart needed.
                os.unlink(filler)
                result = await api.publish(padded(10, acknowledged, 10))
                assert result["accepted"] == 10
                total = acknowledged + 10
                await eventually(lambda: len(receiver.delivered_keys) >= total, within=60)
                got = {r.body["payload"]["i"] for r in receiver.delivered}
                assert set(range(total)) <= got
                assert (await api.request("GET", "/healthz"))["head"] >= total
        finally:
            d.stop()
            await receiver.close()
