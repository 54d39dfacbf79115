"""SIGKILL the daemon at random moments while publishers and two integrations run.

Afterwards every acknowledged event reached the webhook receiver (at least
once, at most `delivery.cursor_every` duplicates per crash) and S3 (exactly one
object line, no duplicate objects). `make test` runs the short form (10
crashes); `make soak` the long one; both on LMDB and on JetStream.
"""

from __future__ import annotations

import collections
import random
import signal
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from tests.helpers.api import ApiClient
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.control import wait_settled
from tests.helpers.daemon import DaemonProcess, Factory
from tests.helpers.receiver import Receiver
from tests.helpers.s3 import MotoServer, s3_params
from tests.helpers.wait import eventually

BACKENDS = EVERY_BACKEND

MAX_IN_FLIGHT = 8
CURSOR_EVERY = 50


async def publisher(d: DaemonProcess, rng: random.Random, name: str, acked: set[str],
                    deadline: float) -> None:
    """Publish random batches until the daemon dies (or the deadline); record what was acked."""
    counter = 0
    async with aiohttp.ClientSession(headers=d.headers) as session:
        while anyio.current_time() < deadline and counter < 100_000:
            batch: list[dict[str, Any]] = []
            for _ in range(rng.randint(1, 20)):
                counter += 1
                batch.append({"name": "order.created", "tenant": f"t{counter % 2}",
                              "payload": {"uid": f"{name}-{counter}"}})
            try:
                async with session.post(f"{d.url}/events", data=orjson.dumps(batch)) as r:
                    if r.status != 200:
                        return
                    await r.read()
            except (aiohttp.ClientError, OSError):
                return  # the daemon was killed mid-request: that batch is not acknowledged
            acked.update(e["payload"]["uid"] for e in batch)
            await anyio.sleep(0.05)  # a steady stream, not a flood: the test is about crashes


def s3_uids(objects: dict[str, bytes]) -> collections.Counter[str]:
    return collections.Counter(orjson.loads(line)["payload"]["uid"]
                               for body in objects.values() for line in body.splitlines())


@pytest.mark.parametrize("crashes", [
    pytest.param(10, marks=[pytest.mark.reliability, pytest.mark.timeout(300)]),
    pytest.param(100, marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
])
async def test_crash_loop(daemon_factory: Factory, crashes: int) -> None:
    rng = random.Random(crashes)
    moto = MotoServer().start()
    receiver = await Receiver().start()
    try:
        await moto.create_bucket("crash-loop")
        d = daemon_factory({
            "s3": {"endpoint_url": moto.url, "rotate_interval": "1s", "rotate_size": "64KiB"},
            "webhook": {"max_in_flight": MAX_IN_FLIGHT, "retry_initial": "50ms",
                        "retry_max": "200ms", "timeout": "2s"},
            "delivery": {"cursor_every": CURSOR_EVERY},
        })
        async with ApiClient(d) as api:
            await api.webhook("hook", receiver.url)
            await api.create(id="bucket", s3_parameters=s3_params("crash-loop"))
        acked: set[str] = set()
        for crash in range(crashes):
            run_for = rng.uniform(0.3, 1.5)
            async with anyio.create_task_group() as tg:
                deadline = anyio.current_time() + run_for + 5
                for p in range(2):
                    tg.start_soon(publisher, d, random.Random(rng.random()), f"c{crash}p{p}",
                                  acked, deadline)
                await anyio.sleep(run_for)
                d.send_signal(signal.SIGKILL)
            d.wait(30)
            d.start()
        assert len(acked) > 100, "too few events published for the test to mean anything"

        await eventually(lambda: acked <= {r.body["payload"]["uid"] for r in receiver.delivered},
                         within=120)
        await eventually(lambda: moto.objects("crash-loop"),
                         lambda objects: acked <= set(s3_uids(objects)), within=120, every=0.5,
                         what="every acknowledged event in S3")
        await wait_settled(d, ["hook", "bucket"], timeout=60)  # nothing left that could add one
        uids = s3_uids(await moto.objects("crash-loop"))
        delivered = collections.Counter(r.body["payload"]["uid"] for r in receiver.delivered)
    finally:
        await receiver.close()
        moto.stop()
    duplicates = sum(n - 1 for n in delivered.values())
    assert duplicates <= crashes * CURSOR_EVERY, duplicates
    assert max(uids.values()) == 1, [u for u, n in uids.items() if n > 1][:5]
    assert acked <= set(uids)
