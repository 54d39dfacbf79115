"""How an event is laid out in the LMDB log (format 2), and the small key encodings.

Decisions:
- A stored event is a fixed 14-byte header, the id, tenant and name, an
  optional problem text, an optional trace context, then the delivery body
  verbatim:

      tag (1) = 2 | flags (1) | ingested_at ms (u64) | len id (u8) | len tenant (u8)
      | len name (u16) | id | tenant | name | [len problem (u16) | problem]
      | [trace (25)] | body

  Big-endian. `ingested_at` sits at a fixed offset, so retention and the time
  lookup read it without touching anything else; the body is sliced out, never
  parsed. Flag bit 0 says a problem text follows (an event an older version
  accepted that no sink can send, found when its log was migrated); flag bit 1
  that the publishing request's W3C trace context follows (`trace.py`: 25
  bytes). Records without bit 1, every one written before it existed, read as
  they always did: the format number stays 2.
- Format 1 (a msgpack map with the payload as an object) is read only by the
  migration (`decode_v1`); its values start with 0x86 (a fixmap of 6 pairs),
  never with the format-2 tag, so a half-migrated log is read correctly and
  the migration resumes where it stopped.
- Keys are big-endian u64 so LMDB's byte order is numeric order.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import orjson

from ..model import NewEvent, StoredEvent
from ..trace import TRACE_SIZE

FORMAT = 2
_TAG = 2
_FLAG_PROBLEM = 1
_FLAG_TRACE = 2
_HEADER = struct.Struct(">BBQBBH")
_INGESTED = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
V1_TAG = 0x86


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def encode_event(event: NewEvent, ingested_at_ms: int, problem: str | None = None) -> bytes:
    event_id, tenant, name = event.id.encode(), event.tenant.encode(), event.name.encode()
    trace = event.trace
    if not problem and not trace:  # nearly every event: the shortest path
        return b"".join((_HEADER.pack(_TAG, 0, ingested_at_ms, len(event_id), len(tenant),
                                      len(name)), event_id, tenant, name, event.body))
    flags = (_FLAG_PROBLEM if problem else 0) | (_FLAG_TRACE if trace else 0)
    head = _HEADER.pack(_TAG, flags, ingested_at_ms, len(event_id), len(tenant), len(name))
    parts = [head, event_id, tenant, name]
    if problem:
        text = problem.encode()[:65535]
        parts += (_U16.pack(len(text)), text)
    if trace:
        assert len(trace) == TRACE_SIZE
        parts.append(trace)
    parts.append(event.body)
    return b"".join(parts)


def decode_event(seq: int, raw: bytes) -> StoredEvent:
    tag, flags, ingested, id_len, tenant_len, name_len = _HEADER.unpack_from(raw)
    if tag != _TAG:
        raise ValueError(f"event {seq} is stored in format {tag:#x}, not {_TAG}")
    a = _HEADER.size
    b = a + id_len
    c = b + tenant_len
    d = c + name_len
    problem = trace = None
    if flags:
        if flags & _FLAG_PROBLEM:
            (length,) = _U16.unpack_from(raw, d)
            problem = raw[d + 2:d + 2 + length].decode()
            d += 2 + length
        if flags & _FLAG_TRACE:
            trace = raw[d:d + TRACE_SIZE]
            d += TRACE_SIZE
    return StoredEvent(seq, raw[a:b].decode(), raw[b:c].decode(), raw[c:c + name_len].decode(),
                       ingested, raw[d:], problem, trace)


_NAME_AT = struct.Struct(">BBH")  # len id, len tenant, len name, at offset 10


def name_of(raw: bytes) -> str:
    """The name of a format-2 stored event without decoding the rest (its body is never
    touched): what counting by name reads."""
    id_len, tenant_len, name_len = _NAME_AT.unpack_from(raw, 10)
    start = _HEADER.size + id_len + tenant_len
    return raw[start:start + name_len].decode()


def ingested_at_of(raw: bytes) -> int:
    """The ingest time of a stored event (either format) without decoding the rest."""
    if raw[0] == _TAG:
        return int(_INGESTED.unpack_from(raw, 2)[0])
    unpacker = msgpack.Unpacker()
    unpacker.feed(raw)
    unpacker.read_map_header()
    if unpacker.unpack() == "ingested_at":
        return int(unpacker.unpack())
    return int(msgpack.unpackb(raw)["ingested_at"])


def decode_v1(raw: bytes) -> tuple[NewEvent, int, str | None]:
    """A format-1 value as (event, ingested_at, problem): the body encoded as ingest
    would have; a payload the delivery encoder refuses gets a placeholder and a problem."""
    record = msgpack.unpackb(raw)
    delivery = {"tenant": record["tenant"], "name": record["name"],
                "published_at": record["published_at"], "payload": record["payload"]}
    problem = None
    try:
        body = orjson.dumps(delivery)
    except (TypeError, ValueError) as exc:
        problem = f"it cannot be encoded as JSON ({exc})"
        body = orjson.dumps({**delivery, "payload": {"error": problem}})
    event = NewEvent(str(record["id"]), str(record["tenant"]), str(record["name"]), body)
    return event, int(record["ingested_at"]), problem


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj)
    return packed


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw)
