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
- The recorded files are `Manifest` structs and the saved state an
  `S3State` (msgspec), stored in the plain form older versions wrote and
  read (`state_form` / `read_state`): a state that does not fit is refused
  with a message saying so (the sink then crash-loops visibly) instead of
  failing somewhere later on a missing key.
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
- A replay (`build_replay`) is the same pipeline with a key template of its
  own (`replay-<replay id>` as one more folder: `s3_keys.KeyTemplate.within`),
  its own spool directory (`{integration}.replay-<replay id>`, removed when
  the replay ends) and its own saved state: each event of its range lands in
  exactly one of its objects, across crashes, as live events do.
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
from typing import Any, ClassVar, cast

import anyio
import msgspec
import orjson

from ..codec import filter_from_api, filter_to_api
from ..config import Config, S3Config
from ..faults import crash_point
from ..logs import kv
from ..model import Integration, RejectedEvent, Replay, StoredEvent, TargetParams
from ..naming import valid_tenant
from ..storage.base import StoreFull
from ..timeouts import fail_after, move_on_after
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
from .s3_client import S3Client
from .s3_encoders import (
    COMPRESSIONS,
    FORMATS,
    PARQUET_EXTRA,
    Compression,
    Encoder,
    Encoding,
    FileFormat,
    parquet_missing,
)
from .s3_keys import DEFAULT as DEFAULT_KEYS
from .s3_keys import FileNaming, KeyTemplate, TemplateRefused

log = logging.getLogger("eventstreamd.s3")

PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 4  # multipart parts in flight per file: at most this many parts in memory
MAX_QUEUED_UPLOADS = 2  # sealed files waiting for or in upload; past it, spooling waits
MAX_OPEN_FILES = 64  # per integration; one per tenant until then
MAX_PENDING = 32 * 1024 * 1024  # taken but not yet encoded, over every open file
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
        "aws_access_key_id", "aws_secret_access_key", "aws_region", "bucket", "key_prefix",
        "compression", "format", "key_template")

    aws_region: str
    bucket: str
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    key_prefix: str | None = None
    # None where not given: shown back only when set, the defaults keep the plain objects.
    compression: str | None = None
    format: str | None = None
    key_template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"aws_access_key_id": self.aws_access_key_id,
               "aws_secret_access_key": self.aws_secret_access_key,
               "aws_region": self.aws_region, "bucket": self.bucket,
               "key_prefix": self.key_prefix, "compression": self.compression,
               "format": self.format, "key_template": self.key_template}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3Target:
        return cls(aws_region=data["aws_region"], bucket=data["bucket"],
                   aws_access_key_id=data.get("aws_access_key_id"),
                   aws_secret_access_key=data.get("aws_secret_access_key"),
                   key_prefix=data.get("key_prefix") or None,
                   compression=data.get("compression"), format=data.get("format"),
                   key_template=data.get("key_template"))

    @property
    def encoding(self) -> Encoding:
        """What its files hold (checked at registration: `check`)."""
        file_format = self.format or "ndjson"
        compression = self.compression or "none"
        assert file_format in FORMATS and compression in COMPRESSIONS
        return Encoding(cast(FileFormat, file_format), cast(Compression, compression))

    @property
    def template(self) -> KeyTemplate:
        """How its objects are named (checked at registration: `check`)."""
        return KeyTemplate.parse(self.key_template) if self.key_template else DEFAULT_KEYS

    def describe(self) -> str:
        prefix = (self.key_prefix or "").strip("/")
        where = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"
        settings = [] if self.encoding == Encoding() else [self.encoding.describe()]
        if self.key_template:
            settings.append(self.key_template)
        return f"{where} ({', '.join(settings)})" if settings else where


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
    if params.compression is not None and params.compression not in COMPRESSIONS:
        raise TargetRefused("invalid_s3_parameters", (
            f"'{field}.compression' must be one of " + ", ".join(COMPRESSIONS)))
    if params.format is not None and params.format not in FORMATS:
        raise TargetRefused("invalid_s3_parameters",
                            f"'{field}.format' must be one of " + ", ".join(FORMATS))
    if params.format == "parquet" and (missing := parquet_missing()) is not None:
        raise TargetRefused("parquet_unavailable", (
            f"'{field}.format' parquet needs the optional extra {PARQUET_EXTRA} on the "
            f"daemon's host: {missing}"))
    if params.key_template is not None:
        try:
            KeyTemplate.parse(params.key_template)
        except TemplateRefused as exc:
            raise TargetRefused("invalid_s3_parameters",
                                f"'{field}.key_template' {exc}") from None


# ------------------------------------------------------------------------ objects


@dataclass(frozen=True, slots=True)
class Sealed:
    """A recorded file waiting for the uploader; `at` is when it was sealed (monotonic)."""

    manifest: Manifest
    path: Path
    at: float


@dataclass
class OpenFile:
    """A tenant's file being spooled; its key is decided when it is sealed."""

    tenant: str
    path: Path
    encoder: Encoder
    first_seq: int
    last_seq: int
    started_at: float  # wall clock seconds


class Manifest(msgspec.Struct, frozen=True):
    """A sealed file, recorded before its upload: what rebuilds it from the log."""

    key: str
    tenant: str
    first_seq: int
    last_seq: int
    lines: int
    size: int  # the events' NDJSON bytes (before compression or Parquet encoding)
    filter: dict[str, list[str]] | None = None  # the integration's, in the API's form
    opened_at: float | None = None  # for the latency histogram; absent in older states
    # How the file is written (a PATCH may change the integration's before it is rebuilt);
    # absent in older states, whose files were all plain NDJSON.
    format: FileFormat = "ndjson"
    compression: Compression = "none"

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.format, self.compression)


class S3State(msgspec.Struct):
    """The sink's durable bookkeeping: per tenant the last sequence number in a recorded
    file, and the recorded files not yet uploaded."""

    watermarks: dict[str, int] = {}
    pending: list[Manifest] = []


class StateUnreadable(Exception):
    """The saved S3 state does not have the shape this version reads."""


def state_form(state: S3State) -> dict[str, object]:
    """The state as the store keeps it: plain data, the form every version reads. A plain
    NDJSON file's entry names no format or compression, exactly as versions before them
    wrote it."""
    form: dict[str, Any] = msgspec.to_builtins(state)
    for entry in form["pending"]:
        for name, default in _PLAIN_ENCODING.items():
            if entry.get(name) == default:
                del entry[name]
    return form


_PLAIN_ENCODING = {"format": "ndjson", "compression": "none"}


def read_state(form: dict[str, object] | None) -> S3State:
    """The saved state (an empty one when none was saved), checked."""
    if form is None:
        return S3State()
    try:
        return msgspec.convert(form, S3State)
    except msgspec.ValidationError as exc:
        raise StateUnreadable(f"the S3 sink's saved state cannot be read: {exc}") from None


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


async def s3_client(target: S3Target, endpoint_url: str | None,
                    request_timeout: float) -> S3Client:
    """The S3 client for an integration's target (`s3_client.py`)."""
    return await S3Client.connect(
        region=target.aws_region, endpoint_url=endpoint_url or None,
        access_key_id=target.aws_access_key_id,
        secret_access_key=target.aws_secret_access_key, request_timeout=request_timeout,
        max_connections=PART_CONCURRENCY + 2)


class S3Pipeline:
    """Files per tenant, recorded before upload, uploaded exactly once.

    Built from an integration's target (`build`), or by another reader of the log with
    its own `key_template`, spool directory and saved state (a replay writing into its
    own objects): the files, encoders and uploads are the same machinery."""

    def __init__(self, *, target: S3Target, endpoint_url: str, rotate_interval: float,
                 rotate_size: int, policy: RetryPolicy, timeout: float,
                 spool_dir: Path, multipart_threshold: int,
                 key_template: KeyTemplate | None = None) -> None:
        self.target = target
        self.bucket = target.bucket
        self.prefix = target.key_prefix
        self.encoding = target.encoding
        self.key_template = key_template or target.template
        self._endpoint_url = endpoint_url or None
        self.rotate_interval = rotate_interval
        self.rotate_size = rotate_size
        self._policy = policy
        self._timeout = timeout
        self._multipart_threshold = multipart_threshold
        self.spool_dir = spool_dir
        self.files: dict[str, OpenFile] = {}
        self.watermarks: dict[str, int] = {}
        self.pending: list[Manifest] = []
        self._client: S3Client | None = None
        self.uploads = 0
        self._queue: deque[Sealed] = deque()  # sealed, not yet uploaded
        self._queue_changed = anyio.Event()
        self._uploader_done = anyio.Event()

    # ------------------------------------------------------------- pipeline

    async def open(self, ctx: SinkContext) -> None:
        state = read_state(await ctx.load_state())
        self.watermarks, self.pending = state.watermarks, state.pending
        # Whatever a previous run left in the spool is rebuilt from the log.
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._client = await s3_client(self.target, self._endpoint_url, self._timeout)
        for manifest in list(self.pending):
            log.info("re-uploading a recorded file", extra=kv(
                integration=ctx.integration.id, key=manifest.key))
            await self._abort_stale_multipart(manifest.key)
            if not await self._upload(manifest, ctx, None):
                return

    async def serve(self, ctx: SinkContext) -> None:
        """The uploader: sealed files, one after the other, while spooling goes on."""
        try:
            while True:
                while not self._queue:
                    await self._wait_queue()
                sealed = self._queue[0]
                if not await self._upload(sealed.manifest, ctx, sealed.path, sealed.at):
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
            encoder = open_file.encoder
            encoder.add(event)
            open_file.last_seq = event.seq
            if encoder.raw_bytes >= self.rotate_size:
                if not await self._rotate([open_file], ctx):
                    return taken + 1  # recorded: it is taken, only its upload waits
            elif encoder.pending >= encoder.flush_at:
                await _encode(encoder)
        if len(files) > 1:
            await self._bound_pending()
        return len(events)

    async def _bound_pending(self) -> None:
        """Many tenants' files each below their own chunk size: encode the largest until
        what all of them hold unencoded is within `MAX_PENDING`."""
        while sum(f.encoder.pending for f in self.files.values()) > MAX_PENDING:
            await _encode(max(self.files.values(), key=lambda f: f.encoder.pending).encoder)

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
        firsts += [m.first_seq for m in self.pending]
        return min([read_position, *firsts])

    def committed(self, cursor: int) -> None:
        return None

    async def close(self, ctx: SinkContext, outcome: str, grace: float) -> None:
        """Seal what is open and wait for the uploader to drain, within `grace` when stopped
        (a completed temporary integration waits until every file is up, or a stop)."""
        with move_on_after(grace if outcome == "stopped" else None):
            if self.files:
                await self._rotate(list(self.files.values()), ctx)
            while self._queue and not self._uploader_done.is_set():
                await self._wait_queue()

    async def release(self) -> None:
        for open_file in self.files.values():
            open_file.encoder.close()
        self.files.clear()
        if self._client is not None:
            self._client.close()

    def status(self) -> PipelineStatus:
        now_files = list(self.files.values())
        return PipelineStatus(
            buffered_bytes=sum(f.encoder.raw_bytes for f in now_files),
            buffered_since=min((f.started_at for f in now_files), default=None),
            pending_uploads=len(self.pending),
            uploads=self.uploads,
        )

    # ---------------------------------------------------------------- files

    def _new_file(self, tenant: str, first_seq: int, now: float) -> OpenFile:
        path = self.spool_dir / f"{uuid.uuid4().hex}.spool"
        open_file = OpenFile(tenant, path, self.encoding.open(path), first_seq, first_seq, now)
        self.files[tenant] = open_file
        return open_file

    async def _rotate(self, files: list[OpenFile], ctx: SinkContext) -> bool:
        """Seal and record `files` and hand them to the uploader; False when the integration
        is gone or a stop came while waiting for room in the upload queue."""
        while len(self._queue) >= MAX_QUEUED_UPLOADS:
            if ctx.stopping.is_set():
                return False
            with move_on_after(0.2):
                await self._wait_queue()
        sealed: list[Sealed] = []
        for open_file in files:
            del self.files[open_file.tenant]
            encoder = open_file.encoder
            await _encode(encoder, finish=True)
            # The key is decided now ({last_seq} is known only now) and recorded below,
            # before anything is uploaded.
            key = self.key_template.render(FileNaming(
                self.prefix, open_file.tenant, open_file.started_at, open_file.first_seq,
                open_file.last_seq), self.encoding.suffix)
            sealed.append(Sealed(Manifest(
                key=key, tenant=open_file.tenant, first_seq=open_file.first_seq,
                last_seq=open_file.last_seq, lines=encoder.rows, size=encoder.raw_bytes,
                filter=filter_to_api(ctx.integration.filter), opened_at=open_file.started_at,
                format=self.encoding.format, compression=self.encoding.compression,
            ), open_file.path, time.monotonic()))
        for entry in sealed:
            self.watermarks[entry.manifest.tenant] = entry.manifest.last_seq
            self.pending.append(entry.manifest)
        if not await self._save_state(ctx):
            return False  # deleted or replaced: upload nothing more for it
        self._queue.extend(sealed)
        self._queue_moved()
        return True

    async def _save_state(self, ctx: SinkContext) -> bool:
        """Save watermarks and pending files; False when the integration is gone."""
        return await ctx.save_state(state_form(S3State(self.watermarks, self.pending)))

    async def _forget(self, manifest: Manifest, ctx: SinkContext, path: Path) -> bool:
        log.warning("recorded file not re-uploaded (its events were pruned)", extra=kv(
            integration=ctx.integration.id, key=manifest.key))
        self.pending = [m for m in self.pending if m.key != manifest.key]
        with contextlib.suppress(OSError):
            os.unlink(path)
        await self._save_state(ctx)
        ctx.progressed()
        return True

    @property
    def client(self) -> S3Client:
        assert self._client is not None, "open() creates the client"
        return self._client

    async def _exists(self, key: str) -> bool:
        try:
            await self.client.call("head_object", Bucket=self.bucket, Key=key)
            return True
        except upload_errors():
            return False

    async def _abort_stale_multipart(self, key: str) -> None:
        """Abort multipart uploads of `key` left by a crash, so no orphaned parts stay billed."""
        with contextlib.suppress(*upload_errors()), move_on_after(self._timeout):
            listing = await self.client.call("list_multipart_uploads", Bucket=self.bucket,
                                             Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key:
                    await self.client.call("abort_multipart_upload", Bucket=self.bucket,
                                           Key=key, UploadId=upload["UploadId"])

    async def _rebuild(self, manifest: Manifest, ctx: SinkContext) -> tuple[Path, int]:
        """Write the recorded file again from the log: same range, tenant and filter, and
        the encoding it was recorded with, so the same lines or rows."""
        path = self.spool_dir / f"{uuid.uuid4().hex}.rebuilt"
        event_filter = EventFilter.of(filter_from_api(manifest.filter))
        encoder = manifest.encoding.open(path)
        position = manifest.first_seq
        try:
            while position <= manifest.last_seq:
                batch = await ctx.read_events(position, REBUILD_BATCH, 8 * 1024 * 1024)
                if not batch:
                    break
                for event in batch:
                    if (event.seq <= manifest.last_seq and event.tenant == manifest.tenant
                            and event.problem is None and event_filter.matches(event)):
                        encoder.add(event)
                if encoder.pending >= encoder.flush_at:
                    await _encode(encoder)
                position = batch[-1].seq + 1
            await _encode(encoder, finish=True)
        except BaseException:
            encoder.close()
            raise
        if encoder.rows != manifest.lines:
            log.warning("rebuilt file differs from the recorded one (events pruned?)", extra=kv(
                integration=ctx.integration.id, key=manifest.key,
                recorded=manifest.lines, rebuilt=encoder.rows))
        return path, encoder.rows

    # --------------------------------------------------------------- upload

    async def _upload(self, manifest: Manifest, ctx: SinkContext, path: Path | None,
                      sealed_at: float | None = None) -> bool:
        started = time.monotonic()
        if path is None or not await anyio.Path(path).exists():
            path, lines = await self._rebuild(manifest, ctx)
            if lines != manifest.lines and await self._exists(manifest.key):
                # Retention pruned part of the range since; the object that went up
                # before the crash is the complete one: keep it, do not shrink it.
                return await self._forget(manifest, ctx, path)
            if lines == 0:
                return await self._forget(manifest, ctx, path)
        key, spooled = manifest.key, path

        async def attempt() -> bool | Failure:
            try:
                await put_file(self.client, self.bucket, key, spooled, manifest.encoding,
                               self._multipart_threshold, self._timeout)
                crash_point("s3_after_upload")
                return True
            except upload_errors() as exc:
                return describe_error(exc)

        done = await retry_until_stopped(
            ctx, attempt, url=f"s3://{self.bucket}/{key}",
            payload=lambda: f"{manifest.lines} events, {manifest.size} bytes",
            policy=self._policy)
        if done is None:
            return False
        self.pending = [m for m in self.pending if m.key != key]
        await self._save_state(ctx)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.uploads += 1
        opened_at = manifest.opened_at
        ctx.stats.record_delivered(int(opened_at * 1000) if opened_at else None,
                                   manifest.lines)
        ctx.progressed()
        # How long it waited for the uploader and took to go up: a catch-up's timeline.
        timing = {"upload_s": round(time.monotonic() - started, 3)}
        if sealed_at is not None:
            timing["queued_s"] = round(started - sealed_at, 3)
        log.info("uploaded", extra=kv(
            integration=ctx.integration.id, key=key, events=manifest.lines,
            bytes=manifest.size, encoding=manifest.encoding.describe(), **timing))
        return True


async def _encode(encoder: Encoder, finish: bool = False) -> None:
    """Encode what the encoder holds (and end the file when `finish`); compression and
    Parquet in a worker thread, off the event loop."""
    work = encoder.finish if finish else encoder.flush
    if encoder.offload:
        await anyio.to_thread.run_sync(work)
    else:
        work()


async def put_file(client: S3Client, bucket: str, key: str, path: Path, encoding: Encoding,
                   multipart_threshold: int, abort_within: float) -> None:
    """Upload a spool file as the object `key`, with the encoding's Content-Type and
    Content-Encoding: one PUT streamed from the file up to `multipart_threshold`, a
    multipart upload above it (parts read from the file when their turn comes)."""
    metadata = {"ContentType": encoding.content_type}
    if encoding.content_encoding is not None:
        metadata["ContentEncoding"] = encoding.content_encoding
    size = (await anyio.Path(path).stat()).st_size
    if size <= multipart_threshold:
        def put(s3: Any) -> None:
            # A plain file: botocore reads it to sign and send, in chunks, never whole.
            with open(path, "rb") as body:
                s3.put_object(Bucket=bucket, Key=key, Body=body, **metadata)

        await client.run(put)
        return
    upload = await client.call("create_multipart_upload", Bucket=bucket, Key=key, **metadata)
    upload_id = upload["UploadId"]
    parts: dict[int, str] = {}
    slots = anyio.Semaphore(PART_CONCURRENCY)

    async def send(number: int) -> None:
        def part(s3: Any) -> str:
            with open(path, "rb") as fh:
                fh.seek((number - 1) * PART_SIZE)
                chunk = fh.read(PART_SIZE)  # at most PART_CONCURRENCY parts in memory
            answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                    PartNumber=number, Body=chunk)
            return str(answer["ETag"])

        async with slots:
            parts[number] = await client.run(part)
            crash_point("s3_multipart_part")

    try:
        async with anyio.create_task_group() as tg:
            for number in range(1, -(-size // PART_SIZE) + 1):
                tg.start_soon(send, number)
        await client.call("complete_multipart_upload", Bucket=bucket, Key=key,
                          UploadId=upload_id, MultipartUpload={"Parts": [
                              {"ETag": parts[n], "PartNumber": n} for n in sorted(parts)]})
    except BaseException:
        # Shielded so a stop cannot skip it, bounded so it cannot hold a stop up.
        with anyio.CancelScope(shield=True), move_on_after(abort_within), \
                contextlib.suppress(Exception):
            await client.call("abort_multipart_upload", Bucket=bucket, Key=key,
                              UploadId=upload_id)
        raise


# ------------------------------------------------------------------ the sink type


def build(env: SinkEnv, integration: Integration) -> S3Pipeline:
    return _pipeline(env, integration, env.spool_root / integration.id)


def _pipeline(env: SinkEnv, integration: Integration, spool_dir: Path,
              key_template: KeyTemplate | None = None) -> S3Pipeline:
    s3 = env.config.s3
    assert isinstance(integration.target, S3Target)
    return S3Pipeline(
        target=integration.target, endpoint_url=s3.endpoint_url,
        rotate_interval=s3.rotate_interval, rotate_size=s3.rotate_size,
        policy=RetryPolicy(s3.retry_initial, s3.retry_max), timeout=s3.timeout,
        spool_dir=spool_dir, multipart_threshold=s3.multipart_threshold,
        key_template=key_template)


def replay_spool(env: SinkEnv, integration_id: str, replay_id: str) -> Path:
    # Integration ids hold no '.': this never names another integration's directory.
    return env.spool_root / f"{integration_id}.replay-{replay_id}"


def build_replay(env: SinkEnv, integration: Integration, replay: Replay) -> S3Pipeline:
    """A replay's files: the integration's encoding, its objects under `replay-<id>`."""
    assert isinstance(integration.target, S3Target)
    return _pipeline(env, integration, replay_spool(env, integration.id, replay.id),
                     integration.target.template.within(f"replay-{replay.id}"))


def replay_ended(env: SinkEnv, integration_id: str, replay_id: str) -> None:
    """A replay completed or was cancelled: its spool files are of no further use."""
    shutil.rmtree(replay_spool(env, integration_id, replay_id), ignore_errors=True)


async def upload_single(target: S3Target, config: S3Config, event: StoredEvent,
                        spool_dir: Path) -> str:
    """Upload one event as its own object (a rejected event's retry), written and named as
    the integration's files are (its range is the event's sequence number); its key."""
    await anyio.Path(spool_dir).mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"{uuid.uuid4().hex}.single"
    encoding = target.encoding
    encoder = encoding.open(path)
    try:
        encoder.add(event)
        await _encode(encoder, finish=True)
        key = target.template.render(FileNaming(
            target.key_prefix, event.tenant, time.time(), event.seq, event.seq),
            encoding.suffix)
        with fail_after(config.timeout * 2):
            client = await s3_client(target, config.endpoint_url, config.timeout)
            try:
                await put_file(client, target.bucket, key, path, encoding,
                               config.multipart_threshold, config.timeout)
            finally:
                client.close()
    finally:
        encoder.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    return key


async def retry_rejected(env: SinkEnv, integration: Integration,
                         entry: RejectedEvent) -> None:
    assert isinstance(integration.target, S3Target)
    fields = _fields_of(entry.body)
    tenant = str(entry.extra.get("tenant") or fields.get("tenant") or "")
    if not valid_tenant(tenant):
        raise DeliveryFailed("this event cannot be delivered: its tenant cannot be part of "
                             "an S3 key", attempted=False)
    event = StoredEvent(entry.seq, entry.event_id, tenant, str(fields.get("name") or ""), 0,
                        entry.body)
    try:
        await upload_single(integration.target, env.config.s3, event,
                            env.spool_root / integration.id)
    except upload_errors() as exc:
        failure = describe_error(exc)
        code = f" (HTTP status code {failure.status})" if failure.status is not None else ""
        raise DeliveryFailed(f"upload to s3://{integration.target.bucket} failed: "
                             f"{failure.cause}{code}", status=failure.status) from None


def _fields_of(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


SINK = SinkType(
    params=S3Target,
    description="NDJSON (plain, gzip, zstd) or Parquet files per tenant in an S3 bucket, "
                "rotated by time and size, exactly once",
    check=check,
    build=build,
    build_replay=build_replay,
    replay_ended=replay_ended,
    retry_rejected=retry_rejected,
    stop_grace=lambda config: 20.0,  # an open file's last upload; after it, rebuilt next start
    lag_allowance=lambda config: config.s3.rotate_interval,
)
