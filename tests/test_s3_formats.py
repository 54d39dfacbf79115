"""S3 files for analytics: gzip / zstd NDJSON, Parquet and key templates.

Unit tests of the encoders and templates, API tests in-process, and real daemons against
moto_server: objects decode to exactly the published events, keys follow the template,
a SIGKILL during an upload leaves every event in exactly one line or row, and a
200 MiB Parquet catch-up stays within bounded memory.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from eventstreamd import integrations_cli
from eventstreamd.model import StoredEvent
from eventstreamd.sinks import s3_encoders
from eventstreamd.sinks.s3 import S3Target
from eventstreamd.sinks.s3_encoders import Encoding, split_body
from eventstreamd.sinks.s3_keys import DEFAULT, FileNaming, KeyTemplate, TemplateRefused
from tests.helpers.api import BASE, ApiClient
from tests.helpers.control import wait_settled
from tests.helpers.daemon import Factory
from tests.helpers.inprocess import served
from tests.helpers.s3 import MotoServer, s3_params, settings

ENCODINGS = [Encoding("ndjson", "gzip"), Encoding("ndjson", "zstd"),
             Encoding("parquet", "none"), Encoding("parquet", "zstd")]


def params_of(encoding: Encoding) -> dict[str, str]:
    return {"format": encoding.format, "compression": encoding.compression}


def stored(seq: int, tenant: str = "t0", payload: bytes = b'{"i":1}',
           published_at: str = "2024-05-01T12:00:00.000Z") -> StoredEvent:
    body = (b'{"tenant":"%s","name":"order.created","published_at":"%s","payload":%s}'
            % (tenant.encode(), published_at.encode(), payload))
    return StoredEvent(seq, f"id-{seq}", tenant, "order.created", 0, body)


def rows_of(key: str, body: bytes) -> list[dict[str, Any]]:
    """An object's events as delivery objects (plus `id`/`seq` for Parquet rows)."""
    if key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(body))
        out = []
        for row in table.to_pylist():
            moment = row["published_at"].astimezone(UTC)
            out.append({"id": row["id"], "seq": row["seq"], "tenant": row["tenant"],
                        "name": row["name"],
                        "published_at": moment.strftime("%Y-%m-%dT%H:%M:%S.")
                        + f"{moment.microsecond // 1000:03d}Z",
                        "payload": orjson.loads(row["payload"])})
        return out
    if key.endswith(".gz"):
        body = gzip.decompress(body)
    elif key.endswith(".zst"):
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
    return [orjson.loads(line) for line in body.splitlines()]


def all_rows(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    return [row for key, body in objects.items() for row in rows_of(key, body)]


def counts(objects: dict[str, bytes]) -> collections.Counter[Any]:
    return collections.Counter((r["tenant"], r["payload"]["i"]) for r in all_rows(objects))


# ------------------------------------------------------------------ key templates


def test_the_default_key_is_the_one_written_before() -> None:
    # What the daemon wrote before templates existed, spelled as it was then.
    def before(prefix: str | None, tenant: str, epoch_ms: int, random: str) -> str:
        name = f"{epoch_ms}-data-{random}.export"
        return f"{prefix}/{tenant}/{name}" if prefix else f"{tenant}/{name}"

    for prefix in ("team/exports", None):
        opened_at = time.time()
        key = DEFAULT.render(FileNaming(prefix, "t-1", opened_at, 5, 9))
        random = re.fullmatch(r".*-data-([0-9a-f]{32})\.export", key)
        assert random is not None, key
        assert key == before(prefix, "t-1", int(opened_at * 1000), random[1])
    assert S3Target("us-east-1", "b").template is DEFAULT


def test_templates_render_times_in_utc_and_sequence_ranges() -> None:
    template = KeyTemplate.parse("{key_prefix}/date={date}/hour={hour}/{tenant}/"
                                 "{first_seq}-{last_seq}")
    opened_at = datetime(2024, 5, 1, 23, 59, 58, tzinfo=UTC).timestamp()
    naming = FileNaming("lake", "t0", opened_at, 17, 42)
    assert template.render(naming, ".gz") == "lake/date=2024-05-01/hour=23/t0/17-42.gz"
    assert template.render(FileNaming(None, "t0", opened_at, 1, 2), ".parquet") == \
        "date=2024-05-01/hour=23/t0/1-2.parquet"
    # A template that already ends with the suffix does not get it twice.
    assert KeyTemplate.parse("{tenant}/{first_seq}.ndjson.gz").render(naming, ".gz") == \
        "t0/17.ndjson.gz"


@pytest.mark.parametrize(("template", "says"), [
    ("{tenant}/{nope}", "'{nope}'"),
    ("{tenant}/{timestamp}.json", "{random} or {first_seq}"),
    ("{tenant} {random}", "' '"),
    ("{tenant}/{random}/", "empty segment"),
    ("/{random}", "empty segment"),
    ("{tenant}//{random}", "empty segment"),
    ("{tenant}/../{random}", "'..'"),
    ("{tenant}/{random", "'{' or '}'"),
    ("x" * 300 + "{random}", "longer than"),
])
def test_bad_templates_are_refused_naming_the_problem(template: str, says: str) -> None:
    with pytest.raises(TemplateRefused, match=re.escape(says)):
        KeyTemplate.parse(template)


# ----------------------------------------------------------------------- encoders


@pytest.mark.parametrize("encoding", ENCODINGS, ids=Encoding.describe)
def test_encoders_write_what_they_took_and_count_raw_bytes(
        tmp_path: Path, encoding: Encoding, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_encoders, "ROW_GROUP_BYTES", 256 * 1024)  # several row groups
    events = [stored(seq, f"t{seq % 2}", b'{"i":%d,"s":"\\u00e9\\n"}' % seq,
                     f"2024-05-01T12:00:{seq % 60:02d}.{seq % 1000:03d}Z")
              for seq in range(1, 3001)]
    paths = []
    for attempt in range(2):  # twice, as a crash's rebuild writes it again
        path = tmp_path / f"{attempt}.spool"
        encoder = encoding.open(path)
        for event in events:
            encoder.add(event)
            if encoder.pending >= 64 * 1024:
                encoder.flush()  # several chunks / row groups
        encoder.finish()
        assert encoder.rows == len(events)
        assert encoder.raw_bytes == sum(len(e.body) + 1 for e in events)
        paths.append(path)
    first, again = (rows_of("x" + encoding.suffix, p.read_bytes()) for p in paths)
    assert first == again
    expected = [orjson.loads(e.body) for e in events]
    if encoding.format == "parquet":
        assert [(r["id"], r["seq"]) for r in first] == [(e.id, e.seq) for e in events]
        first = [{k: r[k] for k in ("tenant", "name", "published_at", "payload")}
                 for r in first]
        metadata = pq.ParquetFile(paths[0]).metadata
        assert metadata.num_row_groups > 1
        assert metadata.schema.to_arrow_schema().field("published_at").type == \
            pa.timestamp("us", tz="UTC")
    assert first == expected


def test_parquet_payload_is_the_stored_json_and_duckdb_reads_it(tmp_path: Path) -> None:
    payload = b'{"b": [1, 2.50], "a": {"x": null}}'  # kept as sent: not re-encoded
    path = tmp_path / "f.parquet"
    encoder = Encoding("parquet", "zstd").open(path)
    encoder.add(stored(7, "acme", payload, "2024-05-01T12:00:00.123456Z"))
    encoder.finish()
    assert pq.read_table(path).column("payload").to_pylist() == [payload.decode()]
    relation = duckdb.sql(
        f"select seq, tenant, epoch_us(published_at), payload->>'$.b[1]' "
        f"from read_parquet('{path}')")
    assert relation is not None
    found = relation.fetchall()
    assert found == [(7, "acme", 1714564800123456, "2.5")]


def test_a_body_in_another_spelling_is_parsed() -> None:
    body = b'{"payload": {"i": 1}, "published_at": "2024-05-01T12:00:00Z", "tenant": "t"}'
    assert split_body(body) == ("2024-05-01T12:00:00Z", b'{"i":1}')
    assert split_body(stored(1).body) == ("2024-05-01T12:00:00.000Z", b'{"i":1}')


def test_target_shows_and_stores_only_what_was_set() -> None:
    plain = S3Target("us-east-1", "b", key_prefix="p")
    assert plain.describe() == "s3://b/p"
    assert "compression" not in plain.to_dict()
    lake = S3Target.from_dict({"aws_region": "us-east-1", "bucket": "b", "format": "parquet",
                               "compression": "zstd", "key_template": "{first_seq}"})
    assert lake.describe() == "s3://b (parquet+zstd, {first_seq})"
    assert S3Target.from_dict(lake.to_dict()) == lake
    assert S3Target("us-east-1", "b", compression="gzip").describe() == "s3://b (ndjson+gzip)"


def test_cli_flags_fill_the_s3_parameters() -> None:
    parser = argparse.ArgumentParser()
    integrations_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["integrations", "create", "lake", "--s3-bucket", "b",
                              "--s3-format", "parquet", "--s3-compression", "zstd",
                              "--s3-key-template", "{tenant}/{first_seq}"])
    body = integrations_cli.build_body(args, creating=True)
    assert body["s3_parameters"] == {"bucket": "b", "aws_region": "us-east-1",
                                     "format": "parquet", "compression": "zstd",
                                     "key_template": "{tenant}/{first_seq}"}


# ------------------------------------------------------------------ the API (in-process)


def s3_target(**extra: Any) -> dict[str, Any]:
    return {**s3_params("lake"), **extra}


def s3_body(integration_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": integration_id, "integration_type": "permanent",
            "s3_parameters": s3_target(**extra)}


async def test_bad_templates_and_unknown_formats_are_400s(tmp_path: Path) -> None:
    async with served(tmp_path) as (client, _, _):
        for extra, says in (({"key_template": "{tenant}/{when}"}, "'{when}'"),
                            ({"key_template": "{tenant}/fixed"}, "{random} or {first_seq}"),
                            ({"key_template": "{tenant}/a b{random}"}, "' '"),
                            ({"format": "orc"}, "format"),
                            ({"compression": "lz4"}, "compression")):
            answer = await client.call("registerIntegration", "POST", BASE, expect=400,
                                       body=s3_body("bad", **extra))
            assert says in answer["message"], answer
        await client.call("registerIntegration", "POST", BASE, expect=200,
                          body=s3_body("good", key_template="{tenant}/{first_seq}-{last_seq}",
                                       format="parquet"))
        await client.call("stopIntegration", "POST", f"{BASE}/good/_stop", expect=200)
        answer = await client.call("updateIntegration", "PATCH", f"{BASE}/good", expect=400,
                                   body={"s3_parameters": s3_target(key_template="{nope}")})
        assert "'{nope}'" in answer["message"]
        shown = await client.call("getIntegration", "GET", f"{BASE}/good", expect=200)
        assert shown["s3_parameters"]["key_template"] == "{tenant}/{first_seq}-{last_seq}"
        assert shown["s3_parameters"]["format"] == "parquet"


async def test_parquet_without_pyarrow_is_a_400_naming_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails
    async with served(tmp_path) as (client, _, _):
        answer = await client.call("registerIntegration", "POST", BASE, expect=400,
                                   body=s3_body("lake", format="parquet"))
        assert answer["error_code"] == "parquet_unavailable"
        assert "eventstreamd[parquet]" in answer["message"]
        await client.call("registerIntegration", "POST", BASE, expect=200,
                          body=s3_body("plain", compression="zstd"))  # NDJSON needs no pyarrow
        await client.call("stopIntegration", "POST", f"{BASE}/plain/_stop", expect=200)
        answer = await client.call("updateIntegration", "PATCH", f"{BASE}/plain", expect=400,
                                   body={"s3_parameters": s3_target(format="parquet")})
        assert "eventstreamd[parquet]" in answer["message"]


# ------------------------------------------------------------------ real daemons on moto


def published(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"ev-{start + i}", "name": "order.created", "tenant": f"t{(start + i) % 2}",
             "published_at": f"2024-05-01T12:{(start + i) % 60:02d}:00.250Z",
             "payload": {"i": start + i, "text": "caf\u00e9 \u2603", "n": [1, None, 2.5]}}
            for i in range(n)]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=Encoding.describe)
async def test_objects_decode_to_exactly_the_published_events(
        daemon_factory: Factory, moto: MotoServer, bucket: str,
        encoding: Encoding) -> None:
    d = daemon_factory(settings(moto, rotate_interval="1s"))
    sent = published(40)
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters={**s3_params(bucket, "lake"),
                                                 **params_of(encoding)})
        await api.publish(sent)
        objects = await moto.wait_objects(bucket, lambda o: len(all_rows(o)) >= len(sent))
        async with moto.client() as s3:
            heads = {key: await s3.head_object(Bucket=bucket, Key=key) for key in objects}
    rows = sorted(all_rows(objects), key=lambda r: r["payload"]["i"])
    delivery = ("tenant", "name", "published_at", "payload")
    assert [{k: r[k] for k in delivery} for r in rows] == [{k: e[k] for k in delivery}
                                                           for e in sent]
    if encoding.format == "parquet":
        assert [r["id"] for r in rows] == [e["id"] for e in sent]
        assert sorted(r["seq"] for r in rows) == [r["seq"] for r in rows]  # one publish
    else:
        assert all(set(r) == set(delivery) for r in rows)  # the webhook's body, exactly
    for key, head in heads.items():
        assert key.startswith("lake/") and key.endswith(encoding.suffix), key
        assert head["ContentType"] == encoding.content_type
        assert head.get("ContentEncoding") == encoding.content_encoding
        assert "-" not in head["ETag"]  # a small file goes up in one PUT


async def test_keys_follow_the_template(daemon_factory: Factory, moto: MotoServer,
                                        bucket: str) -> None:
    template = "{key_prefix}/date={date}/hour={hour}/{tenant}/{first_seq}-{last_seq}"
    d = daemon_factory(settings(moto, rotate_interval="1h", rotate_size="8KiB"))
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters={**s3_params(bucket, "lake"),
                                                 "format": "parquet",
                                                 "key_template": template})
        before = datetime.now(UTC)
        for start in range(0, 200, 50):
            await api.publish([{**e, "tenant": "acme"} for e in published(50, start)])
        await moto.wait_objects(bucket, lambda o: len(o) >= 3)
        d.stop()  # a graceful stop uploads the open file
        after = datetime.now(UTC)
    objects = await moto.objects(bucket)
    hours = {f"date={t:%Y-%m-%d}/hour={t:%H}" for t in (before, after)}
    seqs: list[int] = []
    for key, body in objects.items():
        match = re.fullmatch(r"lake/(date=[\d-]+/hour=\d\d)/acme/(\d+)-(\d+)\.parquet", key)
        assert match, key
        assert match[1] in hours
        in_file = [r["seq"] for r in rows_of(key, body)]
        assert (in_file[0], in_file[-1]) == (int(match[2]), int(match[3]))
        seqs += in_file
    assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs)))  # no gap, no twice
    assert counts(objects) == {("acme", i): 1 for i in range(200)}


@pytest.mark.reliability
@pytest.mark.parametrize("encoding", [Encoding("ndjson", "gzip"), Encoding("parquet", "zstd")],
                         ids=Encoding.describe)
async def test_sigkill_during_an_upload_leaves_every_event_once(
        daemon_factory: Factory, moto: MotoServer, bucket: str,
        encoding: Encoding) -> None:
    d = daemon_factory(settings(moto, rotate_interval="1s"),
                       env={"EVENTSTREAMD_CRASH_AT": "s3_after_upload"})
    n = 300
    async with ApiClient(d) as api:
        await api.create(id="s1", s3_parameters={**s3_params(bucket), **params_of(encoding)})
        await api.publish(published(n))
    assert d.proc is not None
    assert d.proc.wait(60) == -signal.SIGKILL, "the daemon did not die after an upload"
    d.wait(1)
    before = await moto.objects(bucket)
    assert before, "an object went up before the crash"
    d.env = {}
    d.start()
    await moto.wait_objects(bucket, lambda o: len(all_rows(o)) >= n, timeout=90)
    await wait_settled(d, ["s1"], timeout=90)
    objects = await moto.objects(bucket)
    assert counts(objects) == {(f"t{i % 2}", i): 1 for i in range(n)}
    # The files recorded before the crash went up again under their keys, rebuilt from
    # the log: the same lines or rows (the compressed bytes may differ).
    assert set(before) <= set(objects)
    for key in before:
        assert rows_of(key, objects[key]) == rows_of(key, before[key])


def rss_anon_mib(pid: int) -> tuple[float, float]:
    """(RssAnon, VmHWM) of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["RssAnon"], values["VmHWM"]


@pytest.mark.reliability
async def test_a_200_mib_parquet_catch_up_stays_in_bounded_memory(
        daemon_factory: Factory, moto: MotoServer, bucket: str) -> None:
    # 50 MiB files by size; the last one goes up 10 s after it started. The shared reader's
    # memory (the tail cache and the read budget, 32 + 64 MiB of event bytes by default) has
    # bounds and tests of its own (tests/test_feed.py); here they are small so that what is
    # measured is the Parquet encoder's.
    config = settings(moto, rotate_interval="10s")
    config["delivery"] = {"tail_cache": "4MiB", "read_budget": "8MiB"}
    d = daemon_factory(config)
    pad = "p" * 330  # ~420-byte lines: 200 MiB in ~500,000 events
    published_count = published_bytes = 0
    async with ApiClient(d) as api:
        starts_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        while published_bytes < 200 * 1024 * 1024:
            events = [{"id": f"ev-{published_count + i}", "name": "order.created",
                       "payload": {"i": published_count + i, "pad": pad}}
                      for i in range(20_000)]
            await api.publish(events)
            published_count += len(events)
            published_bytes += sum(len(orjson.dumps(e)) for e in events)
        idle, _ = rss_anon_mib(d.pid)
        peak = idle
        await api.create(id="lake", integration_type="permanent", starts_at=starts_at,
                         s3_parameters={**s3_params(bucket), "format": "parquet",
                                        "compression": "zstd"})
        with anyio.fail_after(300):  # four 50 MiB files and the rest
            while d.log().count("eventstreamd.s3: uploaded") < 5:
                for _ in range(10):
                    peak = max(peak, rss_anon_mib(d.pid)[0])
                    await anyio.sleep(0.05)
        _, hwm = rss_anon_mib(d.pid)
    objects = await moto.objects(bucket)
    rows = sum(pq.read_metadata(io.BytesIO(body)).num_rows for body in objects.values())
    print(f"\n200 MiB Parquet catch-up: RssAnon {idle:.0f} MiB before, peak {peak:.0f} MiB; "
          f"VmHWM {hwm:.0f} MiB (with LMDB's file-backed pages); {len(objects)} objects, "
          f"{rows} rows")
    assert rows == published_count
    # Measured: 70-107 MiB, of which ~30 MiB are botocore's S3 model and pyarrow, loaded
    # by the first S3 and Parquet integration, the rest a 16 MiB row group as it is encoded
    # and the worker threads' allocator arenas. One 50 MiB file held whole would add
    # ~85 MiB of Python values and ~50 MiB of Arrow arrays on top of the imports.
    assert peak - idle < 130, f"RssAnon grew by {peak - idle:.0f} MiB"
