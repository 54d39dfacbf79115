"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` in, `traceparent` out.

Decisions:
- `POST /events` may carry a `traceparent` header; it is kept with every event
  of that request, in the stored event's header (never in the delivery body),
  and each webhook delivery of those events carries a `traceparent` with the
  same trace id, the same sampled flag, and a new span id (one per delivery
  attempt: the request is its own span, a child of the publisher's).
- Stored compactly: `trace id (16 bytes) | parent id (8) | flags (1)`, 25
  bytes, once per event (`TRACE_SIZE`); the parent id is the publishing
  request's span, kept so a later reader can link the two.
- An invalid `traceparent` is ignored, as the W3C spec says a receiver must
  (no 400): version `ff`, a wrong length, upper-case or non-hex digits, an
  all-zero trace or parent id. A version above `00` is read by its first
  four fields (the spec's forward compatibility rule) and sent on as `00`.
- `tracestate` is not kept: a vendor's state belongs to the vendor's own
  spans, and the delivery starts a new one of ours.
- Cost: parsing is once per request, never per event; a delivery formats 25
  bytes as hex and draws 64 random bits.
"""

from __future__ import annotations

import random

TRACE_SIZE = 25  # trace id 16, parent id 8, flags 1
HEADER = "traceparent"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def _hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def parse_traceparent(value: str | None) -> bytes | None:
    """The stored form of a valid `traceparent` header value, or None (absent or invalid)."""
    if not value:
        return None
    value = value.strip(" \t")
    if len(value) < 55:
        return None
    version = value[:2]
    if not _hex(version, 2) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":  # a later version may append fields, after a dash
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_hex(trace_id, 32) and _hex(parent_id, 16) and _hex(flags, 2)):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return bytes.fromhex(trace_id + parent_id + flags)


def trace_id(stored: bytes) -> str:
    """The trace id of a stored trace context, as hex."""
    return stored[:16].hex()


def child_traceparent(stored: bytes, rng: random.Random | None = None) -> str:
    """A `traceparent` for a delivery of an event published under `stored`: the same trace
    id and flags, a new span id."""
    span = 0
    while span == 0:  # all zeroes is not a valid span id
        span = (rng or random).getrandbits(64)
    return f"00-{stored[:16].hex()}-{span:016x}-{stored[24:25].hex()}"
