"""What an S3 file holds and how it is written: NDJSON (plain, gzip or zstd) or Parquet.

Decisions:
- An `Encoding` (format + compression, from `s3_parameters`) opens an
  `Encoder` on a spool file; the pipeline adds events to it, has it encode
  what is pending now and then (`flush`), and `finish`es it when the file is
  sealed. A file recorded before a crash is rebuilt through the same encoder
  from the same events: the bytes may differ (compressor state, Parquet
  metadata), the lines and rows never do.
- Memory stays bounded: events are taken by reference and encoded in chunks
  of `flush_at` (1 MiB of events), then written to the spool file; Parquet
  keeps its chunks as Arrow record batches (the bytes and their offsets) until
  a row group of `ROW_GROUP_BYTES` is written. A file is never held whole.
- `raw_bytes` counts the events' NDJSON bytes whatever the encoding: that is
  what `s3.rotate_size` measures, so a rotation setting means the same amount
  of events in every format.
- gzip is zlib at level 6 (zlib's and Vector's default) with a gzip header
  without a timestamp; zstd is level 3 (zstd's default) with a frame
  checksum. Compressing costs far more CPU than writing (gzip ~60 MB/s,
  zstd ~300 MB/s on the bench's events), so those encoders say `offload`:
  the pipeline runs their `flush` in a worker thread (zlib, zstandard and
  Arrow release the GIL while they work) and the event loop stays free.
- Parquet: one row per event, columns `id`, `seq`, `tenant`, `name`,
  `published_at` (timestamp, microseconds, UTC) and `payload` (the payload's
  JSON as a string, sliced from the stored body: not parsed, not
  re-encoded). `compression` applies inside the file (Parquet's column
  codecs), so the key ends `.parquet` and carries no Content-Encoding.
  Dictionary encoding only for `tenant` and `name` (few distinct values).
  pyarrow is the optional extra `eventstreamd[parquet]`: imported when a
  Parquet file is opened; registration refuses Parquet when it is missing.
- Object metadata as analytics readers and Vector set it: `Content-Encoding:
  gzip` / `zstd` for compressed NDJSON (from the compression, as Vector
  does), `Content-Type: application/x-ndjson` (what the lines are; Vector
  says `text/x-log` for its generic logs) or `application/vnd.apache.parquet`.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

import orjson

from ..model import StoredEvent

Compression = Literal["none", "gzip", "zstd"]
FileFormat = Literal["ndjson", "parquet"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
FORMATS: tuple[str, ...] = get_args(FileFormat)
PARQUET_EXTRA = "eventstreamd[parquet]"

GZIP_LEVEL = 6
ZSTD_LEVEL = 3
NDJSON_CHUNK = 1024 * 1024  # lines are encoded and written this much at a time
ROW_GROUP_BYTES = 16 * 1024 * 1024  # a Parquet row group per this much event data

_SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}


class ParquetUnavailable(RuntimeError):
    """pyarrow cannot be imported: Parquet files cannot be written here."""


def parquet_missing() -> str | None:
    """Why Parquet cannot be written here (pyarrow missing), or None when it can."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        return f"pyarrow cannot be imported ({exc}); install {PARQUET_EXTRA}"
    return None


@dataclass(frozen=True, slots=True)
class Encoding:
    format: FileFormat = "ndjson"
    compression: Compression = "none"

    @property
    def suffix(self) -> str:
        """What the key gains."""
        return ".parquet" if self.format == "parquet" else _SUFFIXES[self.compression]

    @property
    def content_type(self) -> str:
        return ("application/vnd.apache.parquet" if self.format == "parquet"
                else "application/x-ndjson")

    @property
    def content_encoding(self) -> str | None:
        if self.format == "parquet" or self.compression == "none":
            return None
        return self.compression

    def describe(self) -> str:
        """`ndjson`, `ndjson+gzip`, `parquet+zstd` ..."""
        return self.format + ("" if self.compression == "none" else f"+{self.compression}")

    def open(self, path: Path) -> Encoder:
        if self.format == "parquet":
            return ParquetEncoder(path, self.compression)
        return NdjsonEncoder(path, self.compression)


class Encoder(ABC):
    """One spool file being written. Not thread-safe: one caller at a time (the pipeline
    awaits each `flush` it hands to a worker thread before it adds more)."""

    offload: bool = False  # encoding is CPU-heavy: run flush/finish in a worker thread
    flush_at: int = NDJSON_CHUNK

    def __init__(self) -> None:
        self.raw_bytes = 0  # the events' NDJSON bytes taken (what rotate_size counts)
        self.rows = 0
        self.pending = 0  # bytes taken but not yet encoded into the file

    @abstractmethod
    def add(self, event: StoredEvent) -> None: ...

    @abstractmethod
    def flush(self) -> None:
        """Encode what is pending into the file."""

    @abstractmethod
    def finish(self) -> None:
        """Encode the rest, end the stream (trailer, footer) and close the file."""

    @abstractmethod
    def close(self) -> None:
        """Close without finishing (the file is discarded); safe to call twice."""


class NdjsonEncoder(Encoder):
    def __init__(self, path: Path, compression: Compression) -> None:
        super().__init__()
        self._file: IO[bytes] = open(path, "wb", buffering=0)  # closed by finish/close
        self._lines: list[bytes] = []
        self._compressor: Any = None
        if compression == "gzip":
            # wbits 31: a gzip member (header with no name and mtime 0, CRC-32 trailer).
            self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        elif compression == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True).compressobj()
        self.offload = self._compressor is not None

    def add(self, event: StoredEvent) -> None:
        body = event.body
        self._lines.append(body)
        size = len(body) + 1
        self.pending += size
        self.raw_bytes += size
        self.rows += 1

    def flush(self) -> None:
        if not self._lines:
            return
        self._lines.append(b"")
        data = b"\n".join(self._lines)
        self._lines = []
        self.pending = 0
        if self._compressor is not None:
            data = self._compressor.compress(data)
        self._file.write(data)

    def finish(self) -> None:
        self.flush()
        if self._compressor is not None:
            self._file.write(self._compressor.flush())
        self._file.close()

    def close(self) -> None:
        self._file.close()


_TIME_KEY = b'","published_at":"'
_PAYLOAD_KEY = b'","payload":'


def split_body(body: bytes) -> tuple[str, bytes]:
    """(published_at, the payload's JSON) of a stored delivery body.

    Ingest writes `{"tenant":"..","name":"..","published_at":"..","payload":...}` with
    header values that never hold a quote, so the payload is a slice of the body; any
    other spelling of the same object is parsed instead."""
    start = body.find(_TIME_KEY)
    if start > 0:
        time_from = start + len(_TIME_KEY)
        time_to = body.find(b'"', time_from)
        if body.startswith(_PAYLOAD_KEY, time_to) and body.endswith(b"}"):
            return body[time_from:time_to].decode(), body[time_to + len(_PAYLOAD_KEY):-1]
    parsed = orjson.loads(body)
    return str(parsed["published_at"]), orjson.dumps(parsed["payload"])


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("seq", pa.int64()),
        ("tenant", pa.string()),
        ("name", pa.string()),
        ("published_at", pa.timestamp("us", tz="UTC")),
        ("payload", pa.string()),
    ])


class ParquetEncoder(Encoder):
    """Rows are gathered as Python values for a chunk (`flush_at`), turned into an Arrow
    record batch (compact: the bytes plus offsets), and written as one row group once
    `ROW_GROUP_BYTES` of events are batched."""

    offload = True

    def __init__(self, path: Path, compression: Compression) -> None:
        super().__init__()
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ParquetUnavailable(f"pyarrow cannot be imported ({exc}); install "
                                     f"{PARQUET_EXTRA}") from None
        self._schema = parquet_schema()
        self._writer = pq.ParquetWriter(
            str(path), self._schema, compression=compression,
            use_dictionary=["tenant", "name"])
        self._closed = False
        self._batches: list[Any] = []
        self._batched = 0  # event bytes in self._batches
        self._reset()

    def _reset(self) -> None:
        self._ids: list[str] = []
        self._seqs: list[int] = []
        self._tenants: list[str] = []
        self._names: list[str] = []
        self._times: list[str] = []
        self._payloads: list[bytes] = []
        self.pending = 0

    def add(self, event: StoredEvent) -> None:
        published_at, payload = split_body(event.body)
        self._ids.append(event.id)
        self._seqs.append(event.seq)
        self._tenants.append(event.tenant)
        self._names.append(event.name)
        self._times.append(published_at)
        self._payloads.append(payload)
        size = len(event.body) + 1
        self.pending += size
        self.raw_bytes += size
        self.rows += 1

    def flush(self) -> None:
        """The pending rows as a record batch; a row group once enough are batched."""
        self._batch_pending()
        if self._batched >= ROW_GROUP_BYTES:
            self._write_row_group()

    def _batch_pending(self) -> None:
        if not self._ids:
            return
        import pyarrow as pa

        self._batches.append(pa.RecordBatch.from_arrays([
            pa.array(self._ids, pa.string()),
            pa.array(self._seqs, pa.int64()),
            pa.array(self._tenants, pa.string()),
            pa.array(self._names, pa.string()),
            _timestamps(self._times),
            pa.array(self._payloads, pa.string()),
        ], schema=self._schema))
        self._batched += self.pending
        self._reset()

    def _write_row_group(self) -> None:
        if not self._batches:
            return
        import pyarrow as pa

        table = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches, self._batched = [], 0
        self._writer.write_table(table, row_group_size=table.num_rows)

    def finish(self) -> None:
        self._batch_pending()
        self._write_row_group()
        self._closed = True
        self._writer.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()


def _timestamps(values: list[str]) -> Any:
    """RFC 3339 strings (as ingest normalised them) as UTC timestamps."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(pa.array(values, pa.string()), pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        # A spelling Arrow's ISO 8601 parser does not take: one by one, as ingest reads them.
        from ..timeutil import parse_rfc3339

        return pa.array([parse_rfc3339(value) for value in values],
                        pa.timestamp("us", tz="UTC"))
