"""S3 delivery: NDJSON files per tenant, rotated by time and size, uploaded exactly once.

Decisions:
- One open file per tenant, spooled to disk under
  `{data_dir}/spool/{integration}/`, never held in memory (Vector's S3 sink
  holds whole batches in RAM and its users hit OOM). Each line is the same
  JSON object a webhook receives.
- Objects are named `{key_prefix}/{tenant}/{epoch_ms}-data-{random}.export`
  (`{tenant}/...` without a prefix), `epoch_ms` being when the file started.
- Rotation: a file is sealed when it reaches `s3.rotate_size`, or when it is
  `s3.rotate_interval` old by the wall clock — checked on every loop tick, so
  a file goes up on time even when no new event arrives.
- Exactly-once objects (the Kafka Connect approach, with recorded rather than
  derived names): before a sealed file is uploaded, its key, tenant, sequence
  range and filter are committed to the store (`sink_state.pending`) together
  with the tenant's *watermark* (the last sequence number that is in a
  recorded file). The cursor never passes the first sequence number of a
  pending or open file. After a crash, `open()` rebuilds every pending file
  from the log (same range, tenant and filter, so the same bytes) and uploads
  it under the same key, which overwrites rather than duplicates; events at or
  below a tenant's watermark are skipped when the log is read again, so no
  event lands in two objects. Only after the upload succeeded is the file
  removed from `pending`.
- Small files go up with one PUT; files larger than `PART_SIZE` as multipart
  uploads with parts of `PART_SIZE` (8 MiB), read from the spool file one
  part at a time, so memory stays bounded by one part. A multipart upload that
  fails is aborted so no orphaned parts are left to bill.
- Upload failures (server down, 5xx, throttling, bad credentials, missing
  bucket) are retried with the webhook backoff settings and logged as
  `retry_triggered` with a reason naming the cause; they also show in the
  sink's status. Nothing is lost or duplicated by retrying.
- Stop: open files are sealed and uploaded within the grace period; what
  cannot finish stays recorded (or, if not sealed, simply after the cursor)
  and is rebuilt on the next start.
- An event no object can hold (it cannot be encoded, or its tenant cannot be
  a key segment; ingest refuses both today, older logs may hold them) is set
  aside as a rejected event and skipped, never retried forever. Its `_retry`
  uploads it alone as a one-line object (`upload_single`). Spool files are
  named by a random id, not by the key, which may be longer than a file name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from anyio.abc import TaskGroup
from botocore.exceptions import BotoCoreError, ClientError

from ..faults import crash_point
from ..logs import kv
from ..naming import valid_tenant
from ..storage.lmdb_store import LmdbStore, StoreFull
from ..storage.records import StoredEvent
from .backoff import backoff_delay
from .filters import EventFilter
from .loop import SinkLoop

log = logging.getLogger("eventstreamd.s3")

PART_SIZE = 8 * 1024 * 1024
MAX_OPEN_FILES = 64  # per integration; one per tenant until then
REBUILD_BATCH = 1024


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


# What S3 (and S3-compatible servers) accept, so that an integration that can never
# upload is refused at registration. Buckets: AWS's rules, plus the upper case and
# underscores of legacy us-east-1 names (the spec's own example is `sap_export`).
BUCKET_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
REGION_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # as botocore


def s3_params_problem(params: dict[str, Any]) -> tuple[str, str] | None:
    """(field, what is wrong) for S3 parameters no upload could ever succeed with."""
    bucket = params.get("bucket", "")
    if (not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket
            or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket)):
        return "bucket", ("must be 3-63 letters, digits, '.', '_' or '-', start and end with a "
                          "letter or digit, hold no '..' and not look like an IP address")
    region = params.get("aws_region", "")
    if not REGION_PATTERN.fullmatch(region):
        return "aws_region", "must be a region name such as us-east-1"
    prefix = params.get("key_prefix")
    if prefix:
        segments = prefix.split("/")
        if not all(PREFIX_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
            return "key_prefix", ("must be segments of letters, digits, '_', '.' or '-' "
                                  "separated by single '/', none of them '.' or '..', "
                                  "and not start or end with '/'")
    return None


def object_key(prefix: str | None, tenant: str, epoch_ms: int) -> str:
    name = f"{epoch_ms}-data-{uuid.uuid4().hex}.export"
    return f"{prefix}/{tenant}/{name}" if prefix else f"{tenant}/{name}"


def event_line(event: StoredEvent) -> bytes:
    return orjson.dumps(event.delivery_body()) + b"\n"


def describe_error(exc: BaseException) -> tuple[str, int | None]:
    """A reason naming the cause, and the HTTP status when S3 answered."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code", "Error")
        message = error.get("Message", "")
        return f"{code}: {message}".rstrip(": "), status
    if isinstance(exc, TimeoutError):
        return "timed out", None
    return f"{type(exc).__name__}: {exc}", None


def s3_client(params: dict[str, Any], endpoint_url: str | None, timeout: float) -> Any:
    """An aiobotocore S3 client (an async context manager) for an integration's parameters."""
    config = AioConfig(
        connect_timeout=timeout, read_timeout=max(timeout, 30.0),
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return get_session().create_client(
        "s3",
        region_name=params["aws_region"],
        endpoint_url=endpoint_url or None,
        aws_access_key_id=params.get("aws_access_key_id"),
        aws_secret_access_key=params.get("aws_secret_access_key"),
        config=config,
    )


async def upload_single(params: dict[str, Any], endpoint_url: str | None,
                        request_timeout: float, event: dict[str, Any]) -> str:
    """Upload one event as its own one-line object (a rejected event's retry); its key.

    Raises ValueError when the event cannot be encoded or its tenant cannot be part
    of a key, and the botocore/OS errors of a failed upload.
    """
    tenant = str(event.get("tenant", ""))
    if not valid_tenant(tenant):
        raise ValueError("its tenant cannot be part of an S3 key")
    line = orjson.dumps(event) + b"\n"
    key = object_key(params.get("key_prefix") or None, tenant, int(time.time() * 1000))
    with anyio.fail_after(request_timeout * 2):
        async with s3_client(params, endpoint_url, request_timeout) as client:
            await client.put_object(Bucket=params["bucket"], Key=key, Body=line)
    return key


class S3Pipeline:
    def __init__(
        self,
        *,
        store: LmdbStore,
        integration_id: str,
        params: dict[str, Any],
        endpoint_url: str,
        rotate_interval: float,
        rotate_size: int,
        retry_initial: float,
        retry_max: float,
        timeout: float,
        spool_dir: Path,
    ) -> None:
        self.store = store
        self.integration_id = integration_id
        self.bucket: str = params["bucket"]
        self.prefix: str | None = params.get("key_prefix") or None
        self._params = params
        self._endpoint_url = endpoint_url or None
        self.rotate_interval = rotate_interval
        self.rotate_size = rotate_size
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._timeout = timeout
        self.spool_dir = spool_dir
        self.files: dict[str, OpenFile] = {}
        state = store.get_sink_state(integration_id) or {}
        self.watermarks: dict[str, int] = dict(state.get("watermarks", {}))
        self.pending: list[dict[str, Any]] = list(state.get("pending", []))
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self.uploads = 0

    @property
    def target(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    # ------------------------------------------------------------- pipeline

    async def open(self, sink: SinkLoop) -> None:
        # Whatever a previous run left in the spool is rebuilt from the log.
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._client = await self._stack.enter_async_context(
            s3_client(self._params, self._endpoint_url, self._timeout))
        for manifest in list(self.pending):
            log.info("re-uploading a recorded file", extra=kv(
                integration=self.integration_id, key=manifest["key"]))
            await self._abort_stale_multipart(manifest["key"])
            if not await self._upload(manifest, sink, None):
                return

    async def accept(self, event: StoredEvent, sink: SinkLoop, tg: TaskGroup) -> bool:
        if event.seq <= self.watermarks.get(event.tenant, 0):
            return True  # already in a recorded file (we crashed after recording it)
        if not valid_tenant(event.tenant):
            return await self._set_aside(event, sink, "its tenant cannot be part of an S3 key")
        try:
            line = event_line(event)
        except (TypeError, ValueError) as exc:  # orjson: nesting beyond 254 levels
            return await self._set_aside(event, sink, f"it cannot be encoded as JSON ({exc})",
                                         encodable=False)
        open_file = self.files.get(event.tenant)
        if open_file is None:
            if len(self.files) >= MAX_OPEN_FILES:
                # Tenants come from publishers: cap the descriptors one sink holds by
                # sealing the oldest file early.
                oldest = min(self.files.values(), key=lambda f: f.started_at)
                if not await self._rotate([oldest], sink):
                    return False
            open_file = self._new_file(event.tenant, event.seq, sink.clock())
        open_file.handle.write(line)
        open_file.size += len(line)
        open_file.lines += 1
        open_file.last_seq = event.seq
        if open_file.size >= self.rotate_size:
            return await self._rotate([open_file], sink)
        return True

    @staticmethod
    async def _set_aside(event: StoredEvent, sink: SinkLoop, reason: str, *,
                         encodable: bool = True) -> bool:
        """Keep an event no object can hold as rejected; False when stopping first."""
        while True:
            try:
                await sink.set_aside(event, reason, encodable=encodable)
                return True
            except StoreFull:
                if await sink.sleep_unless_stopping(1.0):
                    return False

    async def tick(self, sink: SinkLoop) -> None:
        now = sink.clock()
        due = [f for f in self.files.values() if now - f.started_at >= self.rotate_interval]
        if due:
            await self._rotate(due, sink)

    def blocked(self) -> bool:
        return False

    def safe_cursor(self, read_position: int) -> int:
        firsts = [f.first_seq for f in self.files.values()]
        firsts += [m["first_seq"] for m in self.pending]
        return min([read_position, *firsts])

    def committed(self, cursor: int) -> None:
        return None

    async def close(self, sink: SinkLoop, outcome: str, grace: float) -> None:
        with anyio.move_on_after(grace if outcome == "stopped" else None):
            if self.files:
                await self._rotate(list(self.files.values()), sink)

    async def release(self) -> None:
        for open_file in self.files.values():
            open_file.handle.close()
        self.files.clear()
        await self._stack.aclose()

    def status(self) -> dict[str, Any]:
        now_files = list(self.files.values())
        return {
            "target": self.target,
            "open_files": len(now_files),
            "open_file_bytes": sum(f.size for f in now_files),
            "open_file_started_at": min((f.started_at for f in now_files), default=None),
            "pending_uploads": len(self.pending),
            "uploads": self.uploads,
        }

    # ---------------------------------------------------------------- files

    def _new_file(self, tenant: str, first_seq: int, now: float) -> OpenFile:
        epoch_ms = int(now * 1000)
        key = object_key(self.prefix, tenant, epoch_ms)
        # Not named after the key: a key may be longer than a file name may be.
        path = self.spool_dir / f"{uuid.uuid4().hex}.ndjson"
        handle = open(path, "wb")  # closed when the file is sealed
        open_file = OpenFile(tenant, key, path, handle, first_seq, first_seq, now)
        self.files[tenant] = open_file
        return open_file

    async def _rotate(self, files: list[OpenFile], sink: SinkLoop) -> bool:
        """Seal, record and upload `files`; False when a stop cut the upload short."""
        manifests = []
        for open_file in files:
            open_file.handle.close()
            del self.files[open_file.tenant]
            manifests.append({
                "key": open_file.key, "tenant": open_file.tenant,
                "first_seq": open_file.first_seq, "last_seq": open_file.last_seq,
                "lines": open_file.lines, "size": open_file.size,
                "filter": sink.record.get("filter_conditions"),
                "path": str(open_file.path),
            })
        for manifest in manifests:
            self.watermarks[manifest["tenant"]] = manifest["last_seq"]
        self.pending.extend(manifests)
        if not await self._save_state(sink):
            return False  # deleted or replaced: upload nothing more for it
        for manifest in manifests:
            if not await self._upload(manifest, sink, Path(manifest["path"])):
                return False
        return True

    async def _save_state(self, sink: SinkLoop) -> bool:
        """Commit watermarks and pending files; False when the integration is gone."""
        state = {"watermarks": self.watermarks,
                 "pending": [{k: v for k, v in m.items() if k != "path"} for m in self.pending]}
        return await sink.write(
            lambda txn: self.store.txn_put_sink_state(txn, self.integration_id, state))

    async def _forget(self, manifest: dict[str, Any], sink: SinkLoop, path: Path) -> bool:
        log.warning("recorded file not re-uploaded (its events were pruned)", extra=kv(
            integration=self.integration_id, key=manifest["key"]))
        self.pending = [m for m in self.pending if m["key"] != manifest["key"]]
        with contextlib.suppress(OSError):
            os.unlink(path)
        await self._save_state(sink)
        sink.progressed()
        return True

    async def _exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except (ClientError, BotoCoreError, OSError):
            return False

    async def _abort_stale_multipart(self, key: str) -> None:
        """Abort multipart uploads of `key` left by a crash, so no orphaned parts stay billed."""
        with contextlib.suppress(ClientError, BotoCoreError, OSError), \
                anyio.move_on_after(self._timeout):
            listing = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key:
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    def _rebuild(self, manifest: dict[str, Any]) -> tuple[Path, int]:
        """Write the recorded file again from the log: same range, tenant and filter."""
        path = self.spool_dir / f"{uuid.uuid4().hex}.rebuilt"
        event_filter = EventFilter.from_conditions(manifest.get("filter"))
        lines = 0
        position = manifest["first_seq"]
        with open(path, "wb") as out:
            while position <= manifest["last_seq"]:
                batch = self.store.read_events(position, REBUILD_BATCH, 8 * 1024 * 1024)
                if not batch:
                    break
                for event in batch:
                    if event.seq > manifest["last_seq"]:
                        break
                    if event.tenant == manifest["tenant"] and event_filter.matches(event):
                        try:
                            line = event_line(event)
                        except (TypeError, ValueError):
                            continue  # set aside when it was first read, never in a file
                        out.write(line)
                        lines += 1
                position = batch[-1].seq + 1
        if lines != manifest["lines"]:
            log.warning("rebuilt file differs from the recorded one (events pruned?)", extra=kv(
                integration=self.integration_id, key=manifest["key"],
                recorded=manifest["lines"], rebuilt=lines))
        return path, lines

    # --------------------------------------------------------------- upload

    async def _upload(self, manifest: dict[str, Any], sink: SinkLoop, path: Path | None) -> bool:
        if path is None or not await anyio.Path(path).exists():
            path, lines = await anyio.to_thread.run_sync(self._rebuild, manifest)
            if lines != manifest["lines"] and await self._exists(manifest["key"]):
                # Retention pruned part of the range since; the object that went up
                # before the crash is the complete one: keep it, do not shrink it.
                return await self._forget(manifest, sink, path)
            if lines == 0:
                return await self._forget(manifest, sink, path)
        attempt = 0
        while True:
            try:
                await self._put(manifest["key"], path)
                crash_point("s3_after_upload")
                break
            except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
                attempt += 1
                cause, status = describe_error(exc)
                code = status if status is not None else "none"
                reason = (f"Request to URL s3://{self.bucket}/{manifest['key']} failed. "
                          f"Reason: {cause} (HTTP status code {code}). "
                          f"Payload: {manifest['lines']} events, {manifest['size']} bytes")
                sink.record_failure(reason)
                log.warning("upload failed, will retry", extra=kv(
                    integration=self.integration_id, key=manifest["key"], attempt=attempt,
                    reason=cause))
                await sink.add_log("retry_triggered", reason)
                delay = backoff_delay(attempt, self._retry_initial, self._retry_max)
                if await sink.sleep_unless_stopping(delay):
                    return False
        self.pending = [m for m in self.pending if m["key"] != manifest["key"]]
        await self._save_state(sink)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.uploads += 1
        sink.stats.delivered += manifest["lines"]
        sink.progressed()
        log.info("uploaded", extra=kv(integration=self.integration_id, key=manifest["key"],
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
        try:
            parts = []
            async with await anyio.open_file(path, "rb") as fh:
                number = 1
                while chunk := await fh.read(PART_SIZE):
                    part = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=chunk)
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
                    crash_point("s3_multipart_part")
                    number += 1
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            # Shielded so a stop cannot skip it, bounded so it cannot hold a stop up.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout), \
                    contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
