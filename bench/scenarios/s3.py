"""S3 upload throughput on the default backend: 200 MiB of stored events (24 MiB quick)
uploaded by one S3 integration to moto as plain, gzip or zstd NDJSON or as Parquet, each
against the bare client encoding and putting the same files."""

from __future__ import annotations

import math
import time

from ..common import API_BASE, MIB, TOKEN, Meter, http
from ..context import Ctx, starts_at_now
from ..daemon import BenchDaemon
from ..processes import pid_of, start_moto
from ..rows import Row, ratio_row

S3_KEY_ID = "bench-access-key-id"
S3_SECRET = "bench-secret-access-key-0123"


def s3_upload(ctx: Ctx) -> list[Row]:
    """Plain NDJSON files: the daemon against bare put_object of the same files."""
    return _s3_files(ctx, "s3-upload", "ndjson", "none", 0.8)


def s3_gzip(ctx: Ctx) -> list[Row]:
    return _s3_files(ctx, "s3-gzip", "ndjson", "gzip", None)


def s3_zstd(ctx: Ctx) -> list[Row]:
    return _s3_files(ctx, "s3-zstd", "ndjson", "zstd", None)


def s3_parquet(ctx: Ctx) -> list[Row]:
    return _s3_files(ctx, "s3-parquet", "parquet", "zstd", None)


def _s3_files(ctx: Ctx, scenario: str, file_format: str, compression: str,
              min_ratio: float | None) -> list[Row]:
    """200 MiB of events (quick: 24 MiB) published first, then one S3 integration writing
    them as `file_format` / `compression` catches up into 50 MiB files (of the events'
    NDJSON bytes: `rotate_size`). Figure: MiB of events per second until every file is
    in the bucket. Baseline: the bare client encodes the same files the same way and puts
    them one after another. The compression ratio (events' bytes / object bytes) of
    both is in the note."""
    files, rotate_mib = ctx.size((4, 50), (2, 12))
    rotate_size = rotate_mib * MIB
    line_len = len(ctx.factory.delivery_body(0)) + 1
    lines_per_file = math.ceil(rotate_size / line_len)  # a file is sealed at the first line
    events = files * lines_per_file                     # that takes it to rotate_size
    expected = events * line_len
    mib = expected / MIB
    plain = file_format == "ndjson" and compression == "none"
    encoding = {"format": file_format, "compression": compression}
    what = "plain NDJSON" if plain else f"{file_format}, {compression}"
    figure = "MiB/s uploaded" if plain else "MiB/s of events uploaded"
    target = f">= {min_ratio:g} x baseline" if min_ratio is not None else None
    moto = start_moto(ctx.children)
    creds = {"endpoint": moto.url, "key_id": S3_KEY_ID, "secret": S3_SECRET}
    try:
        for bucket in ("bench-baseline", "bench-daemon"):
            ctx.run("s3_create_bucket", {**creds, "bucket": bucket}, timeout=60)
        ctx.log(f"  baseline: {what}, {files} files encoded and put, {mib:.1f} MiB of events")
        base, base_busy = ctx.measure(
            "s3_baseline", {**creds, "bucket": "bench-baseline", "files": files,
                            "lines_per_file": lines_per_file, **encoding},
            {"moto": pid_of(moto)}, timeout=600)
        baseline = base["mib"] / base["wall_s"]
        daemon = ctx.daemon(scenario, {"s3": {"endpoint_url": moto.url,
                                              "rotate_size": rotate_size,
                                              "rotate_interval": "30m"}})
        try:
            starts_at = starts_at_now()
            ctx.log(f"  daemon: publishing {events:,} events ({mib:.1f} MiB as NDJSON lines)")
            ctx.run("publish_all", {"url": f"{daemon.url}/events", "events": events},
                    timeout=600)
            first_timeout = ctx.size(60.0, 15.0)
            watch = ctx.worker("s3_watch", {**creds, "bucket": "bench-daemon",
                                            "expected": expected if plain else None,
                                            "expected_objects": files, "interval": 0.05,
                                            "first_timeout": first_timeout,
                                            "timeout": ctx.size(300.0, 40.0)})
            watch.line(60)  # ready
            meter = Meter({"daemon": daemon.pid, "moto": pid_of(moto)})
            t0 = time.monotonic_ns()
            status, answer = http("POST", f"{daemon.url}{API_BASE}", {
                "id": "bench-s3", "integration_type": "permanent", "starts_at": starts_at,
                "s3_parameters": {"aws_access_key_id": S3_KEY_ID,
                                  "aws_secret_access_key": S3_SECRET,
                                  "aws_region": "us-east-1", "bucket": "bench-daemon",
                                  "key_prefix": "bench",
                                  **({} if plain else encoding)}}, token=TOKEN)
            if status != 200:
                watch.end()
                return [Row(scenario, figure, "MiB/s", None, baseline, None, target, None,
                            f"S3 sink not available: creating the integration answered "
                            f"{status}: {str(answer)[:200]}")]
            seen = watch.result(ctx.size(420.0, 60.0))
            wall = (time.monotonic_ns() - t0) / 1e9
            busy = {**meter.busy(wall), "baseline_client": base_busy["loadgen"],
                    "baseline_moto": base_busy["moto"], "baseline_machine": base_busy["machine"]}
        finally:
            timeline = _upload_timeline(daemon)
            daemon.stop()
    finally:
        moto.stop()
    if not seen["total"]:
        return [Row(scenario, figure, "MiB/s", None, baseline, None, target, None,
                    f"S3 sink not available: nothing uploaded within {first_timeout:g}s", busy)]
    elapsed = (seen["done_ns"] - t0) / 1e9
    value = mib / elapsed if seen["reached"] else None
    sizes = sorted({size for _, size in seen["objects"]})
    note = (f"{what}: {len(seen['objects'])} objects of {sizes} bytes "
            f"({mib:.1f} MiB of events) in {elapsed:.2f}s (bucket polled every 0.05s); "
            f"baseline {base['mib']:.1f} MiB in {base['wall_s']:.2f}s")
    if not plain:
        note += (f"; compression ratio {expected / max(1, seen['total']):.1f} "
                 f"(baseline {base['raw_bytes'] / max(1, base['bytes']):.1f})")
    if timeline:
        note += f"; daemon timeline: {timeline}"
    if not seen["reached"]:
        note += " (INCOMPLETE within the time limit)"
    return [ratio_row(scenario, figure, "MiB/s", value, baseline, min_ratio, note=note,
                      busy=busy)]


def _upload_timeline(daemon: BenchDaemon) -> str:
    """From the daemon's log, in seconds from the integration's creation: when each file
    was sealed and when its upload ended, and how long the upload took (where the time
    went)."""
    created = None
    files = []
    for line in daemon.log().splitlines():
        if "integration created" not in line and "eventstreamd.s3: uploaded" not in line:
            continue
        try:
            moment = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            moment += int(line[20:23]) / 1000
        except ValueError:
            continue
        if created is None:
            created = moment
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        upload = float(fields.get("upload_s", 0))
        sealed = moment - upload - float(fields.get("queued_s", 0)) - created
        files.append(f"sealed {sealed:.2f} up {moment - created:.2f} (put {upload:.2f})")
    return "; ".join(files)
