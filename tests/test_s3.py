"""S3 delivery against a real S3 endpoint (moto_server subprocess), crashes included."""

from __future__ import annotations

import collections
import re
import signal
import uuid
from typing import Any

import orjson
import pytest

from tests.helpers.api import ApiClient, events
from tests.helpers.backends import EVERY_BACKEND
from tests.helpers.control import Line, wait_settled
from tests.helpers.daemon import Factory
from tests.helpers.s3 import MotoServer, s3_params, settings
from tests.helpers.wait import eventually

BACKENDS = EVERY_BACKEND

KEY = re.compile(r"^(?:(?P<prefix>.+)/)?(?P<tenant>[^/]+)/(?P<ms>\d{13})-data-(?P<rand>[0-9a-f]+)"
                 r"\.export$")


def lines_of(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for body in objects.values() for line in body.splitlines()]


def count_lines(objects: dict[str, bytes]) -> int:
    return sum(body.count(b"\n") for body in objects.values())


def payload_counts(objects: dict[str, bytes]) -> collections.Counter[Any]:
    return collections.Counter((e["tenant"], e["payload"]["i"]) for e in lines_of(objects))


async def test_key_format_and_content_for_two_tenants(
        daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    d = daemon_factory(settings(moto, rotate_interval="1s"))
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(bucket, "team/exports"),
                         filter_conditions={"entity_filter": ["order"]})
        batch = [{"name": "order.created", "payload": {"i": i}, "tenant": f"t{i % 2}",
                  "published_at": "2024-05-01T12:00:00Z"} for i in range(10)]
        batch.append({"name": "return.created", "payload": {"i": 99}, "tenant": "t0"})
        await api.publish(batch)
        objects = await moto.wait_objects(bucket, lambda o: count_lines(o) >= 10)
    assert len(objects) == 2
    for key, body in objects.items():
        match = KEY.match(key)
        assert match, key
        assert match["prefix"] == "team/exports"
        tenant = match["tenant"]
        for line in body.decode().splitlines():
            event = orjson.loads(line)
            assert set(event) == {"tenant", "name", "published_at", "payload"}
            assert event["tenant"] == tenant and event["name"] == "order.created"
            assert event["published_at"] == "2024-05-01T12:00:00.000Z"
    assert payload_counts(objects) == {(f"t{i % 2}", i): 1 for i in range(10)}


async def test_rotation_by_time_without_new_events(
        daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    d = daemon_factory(settings(moto, rotate_interval="1s", rotate_size="50MiB"))
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(bucket))
        await api.publish(events(3))
        # No further event is published: the file must still go up on time.
        objects = await moto.wait_objects(bucket, lambda o: count_lines(o) == 3, timeout=20)
    [key] = objects
    assert KEY.match(key) and key.startswith("default/")


async def test_rotation_by_size(daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    d = daemon_factory(settings(moto, rotate_interval="1h", rotate_size="4KiB"))
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(bucket))
        await api.publish([{"name": "order.created", "payload": {"i": i, "pad": "x" * 200}}
                           for i in range(100)])
        # ~25 KiB of lines: several files of about 4 KiB; the last stays open (1h).
        objects = await moto.wait_objects(bucket, lambda o: len(o) >= 5)
        d.stop()  # graceful stop uploads the open file
    objects = await moto.objects(bucket)
    assert payload_counts(objects) == {("default", i): 1 for i in range(100)}
    sizes = sorted(len(body) for body in objects.values())
    assert all(size < 4096 + 400 for size in sizes)  # rotation happens at the line that crosses
    assert sum(1 for size in sizes if size >= 4096) >= 5


async def test_multipart_upload(daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    # Above the multipart threshold: parts of 8 MiB (a file up to it goes up in one PUT).
    d = daemon_factory(settings(moto, rotate_interval="1h", rotate_size="9MiB",
                                multipart_threshold="5MiB"))
    pad = "y" * 4000
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(bucket))
        for chunk in range(5):  # ~10 MiB in 2,500 events
            await api.publish([{"name": "order.created", "payload": {"i": chunk * 500 + i,
                                                                      "pad": pad}}
                               for i in range(500)])
        objects = await moto.wait_objects(bucket, lambda o: len(o) >= 1, timeout=60)
    [(key, body)] = list(objects.items())
    assert len(body) >= 9 * 1024 * 1024
    async with moto.client() as s3:
        head = await s3.head_object(Bucket=bucket, Key=key)
    assert "-" in head["ETag"]  # a multipart upload's ETag ends in -<parts>
    d.stop()
    objects = await moto.objects(bucket)
    assert payload_counts(objects) == {("default", i): 1 for i in range(2500)}


async def test_server_down_then_back(daemon_factory: Factory) -> None:
    moto = MotoServer().start()
    port = moto.port
    try:
        await moto.create_bucket("bucket-down")
        d = daemon_factory(settings(moto, rotate_interval="1s"))
        async with ApiClient(d) as api:
            await api.create(id="s1", s3_parameters=s3_params("bucket-down"))
            await api.publish(events(5))
            await moto.wait_objects("bucket-down", lambda o: count_lines(o) == 5)
            moto.stop()
            await api.publish(events(5, start=5))
            entries = await api.wait_logs("s1", "retry_triggered", 2)
            assert "s3://bucket-down/" in entries[0]["reason"]
            moto = MotoServer(port).start()  # moto keeps state in memory: a new, empty server
            await moto.create_bucket("bucket-down")
            await moto.wait_objects("bucket-down", lambda o: count_lines(o) >= 5)
            await wait_settled(d, ["s1"])
            objects = await moto.objects("bucket-down")
        assert payload_counts(objects) == {("default", i): 1 for i in range(5, 10)}
    finally:
        moto.stop()


async def test_missing_bucket_is_retried_and_named(
        daemon_factory: Factory, moto: MotoServer) -> None:
    d = daemon_factory(settings(moto, rotate_interval="500ms"))
    missing = f"bucket-not-yet-{uuid.uuid4().hex[:12]}"  # moto outlives the test
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(missing))
        await api.publish(events(3))
        entries = await api.wait_logs("s1", "retry_triggered", 1)
        assert "NoSuchBucket" in entries[0]["reason"]
        assert "testing-secret-1" not in str(entries)
        await moto.create_bucket(missing)
        objects = await moto.wait_objects(missing, lambda o: count_lines(o) == 3)
    assert len(objects) == 1
    assert "testing-secret-1" not in d.log()


@pytest.mark.parametrize("moment", ["spooling", "s3_after_upload", "s3_multipart_part"])
async def test_sigkill_leaves_every_event_in_exactly_one_object(
        daemon_factory: Factory, moto: MotoServer, bucket: str, moment: str) -> None:
    multipart = moment == "s3_multipart_part"

    def tenant_of(i: int) -> str:
        return "t0" if multipart else f"t{i % 3}"

    pad = "z" * (4000 if multipart else 20)
    n = 2500 if multipart else 300
    crash_env = {} if moment == "spooling" else {"EVENTSTREAMD_CRASH_AT": moment}
    rotate = {"rotate_interval": "1h", "rotate_size": "9MiB",
              "multipart_threshold": "5MiB"} if multipart else \
        {"rotate_interval": "1h" if moment == "spooling" else "1s"}
    d = daemon_factory(settings(moto, **rotate), env=crash_env)
    published = 0
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters=s3_params(bucket))
        for start in range(0, n, 500):
            # One tenant for the multipart case, so one file grows past the part size.
            batch = [{"name": "order.created", "payload": {"i": start + i, "pad": pad},
                      "tenant": tenant_of(start + i)} for i in range(min(500, n - start))]
            await api.publish(batch)
            published += len(batch)
        if moment == "spooling":
            # Spool files are written through a buffer: ask the daemon how much it holds.
            client = await Line.connect(d.data_dir / "control.sock")
            await eventually(lambda: client.call("status"),
                             lambda answer: (answer["result"]["integrations"][0]
                                             ["buffered_bytes"] or 0) >= 1000,
                             within=20, what="1000 bytes buffered")
            d.send_signal(signal.SIGKILL)
            await client.close()
    assert d.proc is not None
    # The crash point must really be reached: the daemon dies by itself (or by our kill).
    assert d.proc.wait(60) == -signal.SIGKILL, f"daemon did not die at {moment}"
    d.wait(1)
    before = await moto.objects(bucket)
    # Restart without the crash point and with quick rotation, then let everything go up.
    d.env = {}
    d.reconfigure({"s3": {"rotate_interval": "1s"}})
    d.start()
    await moto.wait_objects(bucket, lambda o: count_lines(o) >= published, timeout=90)
    await wait_settled(d, ["s1"], timeout=90)  # no upload left that could duplicate
    objects = await moto.objects(bucket)
    counts = payload_counts(objects)
    assert set(counts) == {(tenant_of(i), i) for i in range(n)}
    assert max(counts.values()) == 1, "an event is in more than one object line"
    if moment != "spooling":
        # The object uploaded before the crash was re-uploaded under the same key.
        assert set(before) <= set(objects)
