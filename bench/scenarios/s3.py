"""S3 upload throughput on the default backend: 200 MiB of stored events (12 MiB quick)
uploaded by one S3 integration to moto, against bare aiobotocore `put_object` of the same
files; the note adds the same files as bare multipart uploads, the daemon's way."""

from __future__ import annotations

import math
import time

from eventstreamd.sinks.s3 import PART_CONCURRENCY, PART_SIZE

from ..common import API_BASE, MIB, TOKEN, Meter, http
from ..context import Ctx, starts_at_now
from ..processes import pid_of, start_moto
from ..rows import Row, ratio_row

S3_KEY_ID = "bench-access-key-id"
S3_SECRET = "bench-secret-access-key-0123"


def s3_upload(ctx: Ctx) -> list[Row]:
    scenario = "s3-upload"
    files, rotate_mib = ctx.size((4, 50), (2, 12))
    rotate_size = rotate_mib * MIB
    line_len = len(ctx.factory.delivery_body(0)) + 1
    lines_per_file = math.ceil(rotate_size / line_len)  # a file is sealed at the first line
    events = files * lines_per_file                     # that takes it to rotate_size
    expected = events * line_len
    mib = expected / MIB
    moto = start_moto(ctx.children)
    creds = {"endpoint": moto.url, "key_id": S3_KEY_ID, "secret": S3_SECRET}
    try:
        for bucket in ("bench-baseline", "bench-daemon"):
            ctx.run("s3_create_bucket", {**creds, "bucket": bucket}, timeout=60)
        ctx.log(f"  baseline: put_object of {files} files, {mib:.1f} MiB")
        base, base_busy = ctx.measure(
            "s3_baseline", {**creds, "bucket": "bench-baseline", "files": files,
                            "lines_per_file": lines_per_file},
            {"moto": pid_of(moto)}, timeout=600)
        baseline = base["mib"] / base["wall_s"]
        ctx.log(f"  for the note: the same files as multipart uploads ({PART_SIZE // MIB} MiB "
                f"parts, {PART_CONCURRENCY} at once, as the daemon sends them)")
        bare_multipart, _ = ctx.measure(
            "s3_baseline", {**creds, "bucket": "bench-baseline", "files": files,
                            "lines_per_file": lines_per_file, "multipart": True,
                            "part_size": PART_SIZE, "part_concurrency": PART_CONCURRENCY},
            {"moto": pid_of(moto)}, timeout=600)
        multipart_rate = bare_multipart["mib"] / bare_multipart["wall_s"]

        daemon = ctx.daemon(scenario, {"s3": {"endpoint_url": moto.url,
                                              "rotate_size": rotate_size,
                                              "rotate_interval": "30m"}})
        try:
            starts_at = starts_at_now()
            ctx.log(f"  daemon: publishing {events:,} events ({mib:.1f} MiB as NDJSON lines)")
            ctx.publish(daemon, events, timeout=600)
            first_timeout = ctx.size(60.0, 15.0)
            watch = ctx.worker("s3_watch", {**creds, "bucket": "bench-daemon",
                                            "expected": expected, "interval": 0.2,
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
                                  "key_prefix": "bench"}}, token=TOKEN)
            if status != 200:
                watch.end()
                return [Row(scenario, "MiB/s uploaded", "MiB/s", None, baseline, None,
                            ">= 0.8 x baseline", None,
                            f"S3 sink not available: creating the integration answered "
                            f"{status}: {str(answer)[:200]}")]
            seen = watch.result(ctx.size(420.0, 60.0))
            wall = (time.monotonic_ns() - t0) / 1e9
            busy = {**meter.busy(wall), "baseline_client": base_busy["loadgen"],
                    "baseline_moto": base_busy["moto"], "baseline_machine": base_busy["machine"]}
        finally:
            daemon.stop()
    finally:
        moto.stop()
    if not seen["total"]:
        return [Row(scenario, "MiB/s uploaded", "MiB/s", None, baseline, None,
                    ">= 0.8 x baseline", None,
                    f"S3 sink not available: nothing uploaded within {first_timeout:g}s",
                    busy)]
    elapsed = (seen["done_ns"] - t0) / 1e9
    value = seen["total"] / MIB / elapsed
    sizes = sorted({size for _, size in seen["objects"]})
    note = (f"{seen['total'] / MIB:.1f} of {mib:.1f} MiB in {len(seen['objects'])} objects "
            f"in {elapsed:.2f}s (bucket polled every 0.2s); object sizes {sizes}; "
            f"baseline {base['mib']:.1f} MiB in {base['wall_s']:.2f}s; the same files as bare "
            f"multipart uploads ({PART_SIZE // MIB} MiB parts, {PART_CONCURRENCY} at once): "
            f"{multipart_rate:.1f} MiB/s, so the daemon does {value / multipart_rate:.2f} "
            f"of the same S3 calls made bare")
    if not seen["reached"]:
        note += " (INCOMPLETE within the time limit)"
    return [ratio_row(scenario, "MiB/s uploaded", "MiB/s", value, baseline, 0.8, note=note,
                      busy=busy)]
