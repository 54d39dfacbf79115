"""S3 delivery: NDJSON files per tenant, rotated by time and size, uploaded exactly once.

Decisions:
- One open file per tenant, spooled to disk under
  `{data_dir}/spool/{integration}/`, never held in memory (Vector's S3 sink
  holds whole batches in RAM and its users hit OOM). Each line is the event's
  stored delivery body — the same bytes a webhook receives — plus a newline.
- Objects are named `{key_prefix}/{tenant}/{epoch_ms}-data-{random}.export`
  (`{tenant}/...` without a prefix), `epoch_ms` being when the file started.
  Spool files are named by a random id, not by the key, which may be longer
  than a file name may be.
- Rotation: a file is sealed when it reaches `s3.rotate_size`, or when it is
  `s3.rotate_interval` old by the wall clock — checked on every loop tick;
  `tick` returns the next file's rotation time, so the loop wakes for it and a
  file goes up on time even when no new event arrives (with no open file the
  sink sleeps until an event comes).
- Exactly-once objects (the Kafka Connect approach, with recorded rather than
  derived names): before a sealed file is uploaded, its key, tenant, sequence
  range and filter are saved as the sink's state, together with the tenant's
  *watermark* (the last sequence number that is in a recorded file). The
  cursor never passes the first sequence number of a pending or open file.
  After a crash, `open()` rebuilds every pending file from the log (same
  range, tenant and filter, so the same bytes) and uploads it under the same
  key, which overwrites rather than duplicates; events at or below a tenant's
  watermark are skipped when the log is read again, so no event lands in two
  objects. Only after the upload succeeded is the file removed from
  `pending`.
- Spooling and uploading overlap: a sealed file is recorded, then handed to
  the pipeline's uploader task (`serve`), and spooling goes on into the next
  file; at most `MAX_QUEUED_UPLOADS` sealed files wait, after which spooling
  waits for the uploader (backpressure, bounded disk). Spool files are written
  through a 1 MiB buffer.
- Small files go up with one PUT; files larger than `PART_SIZE` as multipart
  uploads with parts of `PART_SIZE` (8 MiB), up to `PART_CONCURRENCY` parts in
  flight at once, each read from the spool file when its turn comes, so
  memory stays bounded by that many parts. A multipart upload that fails is
  aborted so no orphaned parts are left to bill.
- Upload failures (server down, 5xx, throttling, bad credentials, missing
  bucket) are retried with `s3.retry_initial` / `s3.retry_max` (the shared
  retry loop, `retry.py`) and logged as `retry_triggered` with a reason
  naming the cause; they also show in the sink's status. Nothing is lost or
  duplicated by retrying.
- Stop: open files are sealed and uploaded within the grace period; what
  cannot finish stays recorded (or, if not sealed, simply after the cursor)
  and is rebuilt on the next start.
- An event no object can hold (its tenant cannot be a key segment; ingest
  refuses that today, older logs may hold it) is set aside as a rejected
  event and skipped, never retried forever. Its `_retry` uploads it alone as
  a one-line object (`upload_single`).
- Registration refuses what S3 never accepts: bucket names outside AWS's
  rules (plus the upper case and underscores of legacy us-east-1 names: the
  spec's own example is `sap_export`), a `key_prefix` with characters or
  segments no key may hold, a region that is no region name, credentials
  with control characters (they go into a signed header).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import anyio
import orjson

from ..codec import filter_from_api, filter_to_api
from ..config import Config
from ..faults import crash_point
from ..logs import kv
from ..model import Integration, RejectedEvent, StoredEvent, TargetParams
from ..naming import valid_tenant
from ..storage.base import StoreFull
from .base import (
    DeliveryFailed,
    PipelineStatus,
    SinkContext,
    SinkEnv,
    SinkType,
    TargetRefused,
)
from .filters import EventFilter
from .retry import Failure, RetryPolicy, retry_until_stopped

log = logging.getLogger("eventstreamd.s3")

PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 4  # multipart parts in flight per file: at most this many parts in memory
MAX_QUEUED_UPLOADS = 2  # sealed files waiting for or in upload; past it, spooling waits
SPOOL_BUFFER = 1024 * 1024  # spool files are written in writes of this size
MAX_OPEN_FILES = 64  # per integration; one per tenant until then
REBUILD_BATCH = 1024


def upload_errors() -> tuple[type[BaseException], ...]:
    """What a failed S3 request raises. aiobotocore and botocore are imported when an S3
    sink first needs them, not when the daemon starts: they cost ~0.25 s of every start
    (bench `restart`), and a daemon may have no S3 integration at all."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, OSError, TimeoutError)

BUCKET_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
REGION_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # as botocore


@dataclass(frozen=True)
class S3Target(TargetParams):
    kind: ClassVar[str] = "s3"
    api_field: ClassVar[str] = "s3_parameters"
    secret_fields: ClassVar[tuple[str, ...]] = ("aws_secret_access_key",)
    api_fields: ClassVar[tuple[str, ...]] = (
        "aws_access_key_id", "aws_secret_access_key", "aws_region", "bucket", "key_prefix")

    aws_region: str
    bucket: str
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    key_prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"aws_access_key_id": self.aws_access_key_id,
               "aws_secret_access_key": self.aws_secret_access_key,
               "aws_region": self.aws_region, "bucket": self.bucket,
               "key_prefix": self.key_prefix}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3Target:
        return cls(aws_region=data["aws_region"], bucket=data["bucket"],
                   aws_access_key_id=data.get("aws_access_key_id"),
                   aws_secret_access_key=data.get("aws_secret_access_key"),
                   key_prefix=data.get("key_prefix") or None)

    def describe(self) -> str:
        prefix = (self.key_prefix or "").strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


# ----------------------------------------------------------------- registration


def check(params: TargetParams, config: Config) -> None:
    assert isinstance(params, S3Target)
    field = S3Target.api_field
    for name in ("aws_access_key_id", "aws_secret_access_key"):
        value = getattr(params, name)
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise TargetRefused("invalid_s3_parameters",
                                f"'{field}.{name}' must not contain control characters")
    bucket = params.bucket
    if (not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket
            or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket)):
        raise TargetRefused("invalid_s3_parameters", (
            f"'{field}.bucket' must be 3-63 letters, digits, '.', '_' or '-', start and end "
            "with a letter or digit, hold no '..' and not look like an IP address"))
    if not REGION_PATTERN.fullmatch(params.aws_region):
        raise TargetRefused("invalid_s3_parameters",
                            f"'{field}.aws_region' must be a region name such as us-east-1")
    if params.key_prefix:
        segments = params.key_prefix.split("/")
        if not all(PREFIX_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
            raise TargetRefused("invalid_s3_parameters", (
                f"'{field}.key_prefix' must be segments of letters, digits, '_', '.' or '-' "
                "separated by single '/', none of them '.' or '..', and not start or end "
                "with '/'"))


# ------------------------------------------------------------------------ objects


@dataclass
class OpenFile:
    tenant: str
    key: str
    path: Path
    handle: IO[bytes]
    first_seq: int
    last_seq: int
    started_at: float  # wall clock seconds
    size: int = 0
    lines: int = 0

    def __post_init__(self) -> None:
        self.write = self.handle.write  # bound once: called twice per event


def object_key(prefix: str | None, tenant: str, epoch_ms: int) -> str:
    name = f"{epoch_ms}-data-{uuid.uuid4().hex}.export"
    return f"{prefix}/{tenant}/{name}" if prefix else f"{tenant}/{name}"


def describe_error(exc: BaseException) -> Failure:
    """The cause in words, and the HTTP status when S3 answered."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code", "Error")
        message = error.get("Message", "")
        return Failure(f"{code}: {message}".rstrip(": "), status)
    if isinstance(exc, TimeoutError):
        return Failure("timed out")
    return Failure(f"{type(exc).__name__}: {exc}")


def s3_client(target: S3Target, endpoint_url: str | None, timeout: float) -> Any:
    """An aiobotocore S3 client (an async context manager) for an integration's target."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        connect_timeout=timeout, read_timeout=max(timeout, 30.0),
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return get_session().create_client(
        "s3",
        region_name=target.aws_region,
        endpoint_url=endpoint_url or None,
        aws_access_key_id=target.aws_access_key_id,
        aws_secret_access_key=target.aws_secret_access_key,
        config=config,
    )


class S3Pipeline:
    def __init__(self, *, target: S3Target, endpoint_url: str, rotate_interval: float,
                 rotate_size: int, policy: RetryPolicy, timeout: float,
                 spool_dir: Path) -> None:
        self.target = target
        self.bucket = target.bucket
        self.prefix = target.key_prefix
        self._endpoint_url = endpoint_url or None
        self.rotate_interval = rotate_interval
        self.rotate_size = rotate_size
        self._policy = policy
        self._timeout = timeout
        self.spool_dir = spool_dir
        self.files: dict[str, OpenFile] = {}
        self.watermarks: dict[str, int] = {}
        self.pending: list[dict[str, Any]] = []
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self.uploads = 0
        self._queue: deque[tuple[dict[str, Any], Path]] = deque()  # sealed, not yet uploaded
        self._queue_changed = anyio.Event()
        self._uploader_done = anyio.Event()

    # ------------------------------------------------------------- pipeline

    async def open(self, ctx: SinkContext) -> None:
        state = await ctx.load_state() or {}
        self.watermarks = dict(state.get("watermarks", {}))  # type: ignore[call-overload]
        self.pending = list(state.get("pending", []))  # type: ignore[call-overload]
        # Whatever a previous run left in the spool is rebuilt from the log.
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._client = await self._stack.enter_async_context(
            s3_client(self.target, self._endpoint_url, self._timeout))
        for manifest in list(self.pending):
            log.info("re-uploading a recorded file", extra=kv(
                integration=ctx.integration.id, key=manifest["key"]))
            await self._abort_stale_multipart(manifest["key"])
            if not await self._upload(manifest, ctx, None):
                return

    async def serve(self, ctx: SinkContext) -> None:
        """The uploader: sealed files, one after the other, while spooling goes on."""
        try:
            while True:
                while not self._queue:
                    await self._wait_queue()
                manifest, path = self._queue[0]
                if not await self._upload(manifest, ctx, path):
                    return  # stopping: it stays recorded and is rebuilt on the next start
                self._queue.popleft()
                self._queue_moved()
        finally:
            self._uploader_done.set()
            self._queue_moved()

    def _queue_moved(self) -> None:
        moved, self._queue_changed = self._queue_changed, anyio.Event()
        moved.set()

    async def _wait_queue(self) -> None:
        await self._queue_changed.wait()

    async def accept(self, events: list[StoredEvent], ctx: SinkContext) -> int:
        watermarks, files = self.watermarks, self.files
        for taken, event in enumerate(events):
            tenant = event.tenant
            if event.seq <= watermarks.get(tenant, 0):
                continue  # already in a recorded file (we crashed after recording it)
            open_file = files.get(tenant)
            if open_file is None:
                if not valid_tenant(tenant):
                    if not await self._set_aside(event, ctx,
                                                 "its tenant cannot be part of an S3 key"):
                        return taken
                    continue
                if len(files) >= MAX_OPEN_FILES:
                    # Tenants come from publishers: cap the descriptors one sink holds
                    # by sealing the oldest file early.
                    oldest = min(files.values(), key=lambda f: f.started_at)
                    if not await self._rotate([oldest], ctx):
                        return taken
                open_file = self._new_file(tenant, event.seq, ctx.clock())
            body = event.body
            open_file.write(body)
            open_file.write(b"\n")
            open_file.size += len(body) + 1
            open_file.lines += 1
            open_file.last_seq = event.seq
            if open_file.size >= self.rotate_size and not await self._rotate([open_file], ctx):
                return taken + 1  # recorded: it is taken, only its upload waits
        return len(events)

    @staticmethod
    async def _set_aside(event: StoredEvent, ctx: SinkContext, reason: str) -> bool:
        """Keep an event no object can hold as rejected; False when stopping first."""
        while True:
            try:
                await ctx.set_aside(event, reason)
                return True
            except StoreFull:
                if await ctx.sleep_unless_stopping(1.0):
                    return False

    async def tick(self, ctx: SinkContext) -> float | None:
        now = ctx.clock()
        due = [f for f in self.files.values() if now - f.started_at >= self.rotate_interval]
        if due:
            await self._rotate(due, ctx)
        # The next rotation by time; without an open file only new events give work.
        return min((f.started_at + self.rotate_interval for f in self.files.values()),
                   default=None)

    def blocked(self) -> bool:
        return len(self._queue) >= MAX_QUEUED_UPLOADS

    def waits_for_cursor(self) -> bool:
        return False  # uploads free it, not cursor writes

    def safe_cursor(self, read_position: int) -> int:
        firsts = [f.first_seq for f in self.files.values()]
        firsts += [m["first_seq"] for m in self.pending]
        return min([read_position, *firsts])

    def committed(self, cursor: int) -> None:
        return None

    async def close(self, ctx: SinkContext, outcome: str, grace: float) -> None:
        """Seal what is open and wait for the uploader to drain, within `grace` when stopped
        (a completed temporary integration waits until every file is up, or a stop)."""
        with anyio.move_on_after(grace if outcome == "stopped" else None):
            if self.files:
                await self._rotate(list(self.files.values()), ctx)
            while self._queue and not self._uploader_done.is_set():
                await self._wait_queue()

    async def release(self) -> None:
        for open_file in self.files.values():
            open_file.handle.close()
        self.files.clear()
        await self._stack.aclose()

    def status(self) -> PipelineStatus:
        now_files = list(self.files.values())
        return PipelineStatus(
            buffered_bytes=sum(f.size for f in now_files),
            buffered_since=min((f.started_at for f in now_files), default=None),
            pending_uploads=len(self.pending),
            uploads=self.uploads,
        )

    # ---------------------------------------------------------------- files

    def _new_file(self, tenant: str, first_seq: int, now: float) -> OpenFile:
        epoch_ms = int(now * 1000)
        key = object_key(self.prefix, tenant, epoch_ms)
        path = self.spool_dir / f"{uuid.uuid4().hex}.ndjson"
        handle = open(path, "wb", buffering=SPOOL_BUFFER)  # closed when the file is sealed
        open_file = OpenFile(tenant, key, path, handle, first_seq, first_seq, now)
        self.files[tenant] = open_file
        return open_file

    async def _rotate(self, files: list[OpenFile], ctx: SinkContext) -> bool:
        """Seal and record `files` and hand them to the uploader; False when the integration
        is gone or a stop came while waiting for room in the upload queue."""
        while len(self._queue) >= MAX_QUEUED_UPLOADS:
            if ctx.stopping.is_set():
                return False
            with anyio.move_on_after(0.2):
                await self._wait_queue()
        manifests = []
        for open_file in files:
            open_file.handle.close()
            del self.files[open_file.tenant]
            manifests.append({
                "key": open_file.key, "tenant": open_file.tenant,
                "first_seq": open_file.first_seq, "last_seq": open_file.last_seq,
                "lines": open_file.lines, "size": open_file.size,
                "opened_at": open_file.started_at,  # for the latency histogram
                "filter": filter_to_api(ctx.integration.filter),
                "path": str(open_file.path),
            })
        for manifest in manifests:
            self.watermarks[manifest["tenant"]] = manifest["last_seq"]
        self.pending.extend(manifests)
        if not await self._save_state(ctx):
            return False  # deleted or replaced: upload nothing more for it
        self._queue.extend((m, Path(m["path"])) for m in manifests)
        self._queue_moved()
        return True

    async def _save_state(self, ctx: SinkContext) -> bool:
        """Save watermarks and pending files; False when the integration is gone."""
        state: dict[str, object] = {
            "watermarks": self.watermarks,
            "pending": [{k: v for k, v in m.items() if k != "path"} for m in self.pending]}
        return await ctx.save_state(state)

    async def _forget(self, manifest: dict[str, Any], ctx: SinkContext, path: Path) -> bool:
        log.warning("recorded file not re-uploaded (its events were pruned)", extra=kv(
            integration=ctx.integration.id, key=manifest["key"]))
        self.pending = [m for m in self.pending if m["key"] != manifest["key"]]
        with contextlib.suppress(OSError):
            os.unlink(path)
        await self._save_state(ctx)
        ctx.progressed()
        return True

    async def _exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except upload_errors():
            return False

    async def _abort_stale_multipart(self, key: str) -> None:
        """Abort multipart uploads of `key` left by a crash, so no orphaned parts stay billed."""
        with contextlib.suppress(*upload_errors()), anyio.move_on_after(self._timeout):
            listing = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key:
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    async def _rebuild(self, manifest: dict[str, Any], ctx: SinkContext) -> tuple[Path, int]:
        """Write the recorded file again from the log: same range, tenant and filter."""
        path = self.spool_dir / f"{uuid.uuid4().hex}.rebuilt"
        event_filter = EventFilter.of(filter_from_api(manifest.get("filter")))
        lines = 0
        position = manifest["first_seq"]
        async with await anyio.open_file(path, "wb") as out:
            while position <= manifest["last_seq"]:
                batch = await ctx.read_events(position, REBUILD_BATCH, 8 * 1024 * 1024)
                if not batch:
                    break
                chunk = [event.body + b"\n" for event in batch
                         if event.seq <= manifest["last_seq"]
                         and event.tenant == manifest["tenant"] and event.problem is None
                         and event_filter.matches(event)]
                await out.write(b"".join(chunk))  # one write per batch, off the loop
                lines += len(chunk)
                position = batch[-1].seq + 1
        if lines != manifest["lines"]:
            log.warning("rebuilt file differs from the recorded one (events pruned?)", extra=kv(
                integration=ctx.integration.id, key=manifest["key"],
                recorded=manifest["lines"], rebuilt=lines))
        return path, lines

    # --------------------------------------------------------------- upload

    async def _upload(self, manifest: dict[str, Any], ctx: SinkContext,
                      path: Path | None) -> bool:
        if path is None or not await anyio.Path(path).exists():
            path, lines = await self._rebuild(manifest, ctx)
            if lines != manifest["lines"] and await self._exists(manifest["key"]):
                # Retention pruned part of the range since; the object that went up
                # before the crash is the complete one: keep it, do not shrink it.
                return await self._forget(manifest, ctx, path)
            if lines == 0:
                return await self._forget(manifest, ctx, path)
        key, spooled = manifest["key"], path

        async def attempt() -> bool | Failure:
            try:
                await self._put(key, spooled)
                crash_point("s3_after_upload")
                return True
            except upload_errors() as exc:
                return describe_error(exc)

        done = await retry_until_stopped(
            ctx, attempt, url=f"s3://{self.bucket}/{key}",
            payload=lambda: f"{manifest['lines']} events, {manifest['size']} bytes",
            policy=self._policy)
        if done is None:
            return False
        self.pending = [m for m in self.pending if m["key"] != key]
        await self._save_state(ctx)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.uploads += 1
        opened_at = manifest.get("opened_at")  # absent in state older versions wrote
        ctx.stats.record_delivered(int(opened_at * 1000) if opened_at else None,
                                   manifest["lines"])
        ctx.progressed()
        log.info("uploaded", extra=kv(integration=ctx.integration.id, key=key,
                                      events=manifest["lines"], bytes=manifest["size"]))
        return True

    async def _put(self, key: str, path: Path) -> None:
        size = (await anyio.Path(path).stat()).st_size
        if size <= PART_SIZE:
            body = await anyio.Path(path).read_bytes()
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
            return
        upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        parts: dict[int, str] = {}
        slots = anyio.Semaphore(PART_CONCURRENCY)

        async def send(number: int, chunk: bytes) -> None:
            try:
                part = await self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=chunk)
                parts[number] = part["ETag"]
                crash_point("s3_multipart_part")
            finally:
                slots.release()

        try:
            async with await anyio.open_file(path, "rb") as fh, anyio.create_task_group() as tg:
                for number in range(1, size // PART_SIZE + 2):
                    await slots.acquire()  # read a part only when it can be sent
                    chunk = await fh.read(PART_SIZE)
                    if not chunk:
                        slots.release()
                        break
                    tg.start_soon(send, number, chunk)
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"ETag": parts[n], "PartNumber": n}
                                           for n in sorted(parts)]})
        except BaseException:
            # Shielded so a stop cannot skip it, bounded so it cannot hold a stop up.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout), \
                    contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise


# ------------------------------------------------------------------ the sink type


def build(env: SinkEnv, integration: Integration) -> S3Pipeline:
    s3 = env.config.s3
    assert isinstance(integration.target, S3Target)
    return S3Pipeline(
        target=integration.target, endpoint_url=s3.endpoint_url,
        rotate_interval=s3.rotate_interval, rotate_size=s3.rotate_size,
        policy=RetryPolicy(s3.retry_initial, s3.retry_max), timeout=s3.timeout,
        spool_dir=env.spool_root / integration.id,
    )


async def upload_single(target: S3Target, endpoint_url: str | None, request_timeout: float,
                        tenant: str, body: bytes) -> str:
    """Upload one event as its own one-line object (a rejected event's retry); its key."""
    key = object_key(target.key_prefix, tenant, int(time.time() * 1000))
    with anyio.fail_after(request_timeout * 2):
        async with s3_client(target, endpoint_url, request_timeout) as client:
            await client.put_object(Bucket=target.bucket, Key=key, Body=body + b"\n")
    return key


async def retry_rejected(env: SinkEnv, integration: Integration,
                         entry: RejectedEvent) -> None:
    assert isinstance(integration.target, S3Target)
    tenant = str(entry.extra.get("tenant") or _tenant_of(entry.body))
    if not valid_tenant(tenant):
        raise DeliveryFailed("this event cannot be delivered: its tenant cannot be part of "
                             "an S3 key", attempted=False)
    try:
        await upload_single(integration.target, env.config.s3.endpoint_url,
                            env.config.s3.timeout, tenant, entry.body)
    except upload_errors() as exc:
        failure = describe_error(exc)
        code = f" (HTTP status code {failure.status})" if failure.status is not None else ""
        raise DeliveryFailed(f"upload to s3://{integration.target.bucket} failed: "
                             f"{failure.cause}{code}", status=failure.status) from None


def _tenant_of(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("tenant", ""))
    except (ValueError, AttributeError):
        return ""


SINK = SinkType(
    params=S3Target,
    description="NDJSON files per tenant in an S3 bucket, rotated by time and size, "
                "exactly once",
    check=check,
    build=build,
    retry_rejected=retry_rejected,
    stop_grace=lambda config: 20.0,  # an open file's last upload; after it, rebuilt next start
    lag_allowance=lambda config: config.s3.rotate_interval,
)
