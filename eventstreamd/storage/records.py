"""The stored form of an event, and the small key encodings the store uses.

Decisions:
- An event is stored as a msgpack *map* with the keys `ingested_at` (int ms,
  set by the log writer), `id`, `tenant`, `name`, `published_at` (RFC 3339
  string, UTC) and `payload`. A map, not an array, so the log is
  self-describing to anyone who opens it with `mdb_dump` and msgpack.
- The publisher packs everything but `ingested_at` before the event reaches
  the writer (`PackedEvent.body`); the writer only prepends the map header and
  the `ingested_at` pair. A msgpack map is its header followed by its pairs, so
  the result is an ordinary map and the writer's transaction stays short.
- Keys are big-endian so LMDB's byte order is numeric order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

_U64 = struct.Struct(">Q")
_FIELDS_PACKED = 5  # id, tenant, name, published_at, payload
_MAP_HEADER = bytes([0x80 | (_FIELDS_PACKED + 1)])  # fixmap with 6 pairs
_INGESTED_KEY = msgpack.packb("ingested_at")


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


@dataclass(frozen=True, slots=True)
class PackedEvent:
    """An event validated and packed by the publisher, waiting for a sequence number."""

    body: bytes  # the five packed key/value pairs, without a map header


def pack_event(
    event_id: str, tenant: str, name: str, published_at: str, payload: Any
) -> PackedEvent:
    packer = msgpack.Packer()
    parts = (
        packer.pack("id"), packer.pack(event_id),
        packer.pack("tenant"), packer.pack(tenant),
        packer.pack("name"), packer.pack(name),
        packer.pack("published_at"), packer.pack(published_at),
        packer.pack("payload"), packer.pack(payload),
    )
    return PackedEvent(b"".join(parts))


def seal_event(event: PackedEvent, ingested_at_ms: int) -> bytes:
    """The stored value: the packed pairs plus the writer's ingest time, as one msgpack map."""
    return _MAP_HEADER + _INGESTED_KEY + msgpack.packb(ingested_at_ms) + event.body


@dataclass(slots=True)  # not frozen: a frozen init costs ~2 µs per event on every sink's path
class StoredEvent:
    seq: int
    id: str
    tenant: str
    name: str
    published_at: str
    ingested_at: int  # ms since the epoch
    payload: dict[str, Any]

    @property
    def entity(self) -> str:
        return self.name.split(".", 1)[0]

    def delivery_body(self) -> dict[str, Any]:
        """The object every sink delivers: the seed's Rejected Event schema."""
        return {
            "tenant": self.tenant,
            "name": self.name,
            "published_at": self.published_at,
            "payload": self.payload,
        }


def unpack_event(seq: int, raw: bytes) -> StoredEvent:
    record = msgpack.unpackb(raw)
    return StoredEvent(
        seq=seq,
        id=record["id"],
        tenant=record["tenant"],
        name=record["name"],
        published_at=record["published_at"],
        ingested_at=record["ingested_at"],
        payload=record["payload"],
    )


def ingested_at_of(raw: bytes) -> int:
    """The ingest time of a stored event, read from its first pair: the payload,
    however large, is not unpacked (retention and the time lookup call this)."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(raw)
    unpacker.read_map_header()
    if unpacker.unpack() == "ingested_at":
        return int(unpacker.unpack())
    return int(msgpack.unpackb(raw)["ingested_at"])


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw)
