"""RFC 3339 timestamps: parsing what users send, formatting what we return.

Everything we emit is UTC with a `Z` and millisecond precision
(`2019-01-17T12:00:00.000Z`, the spec's examples), or microseconds when the
input carried them, so values round-trip without losing precision.

The command line and the dashboard also take a time as "that long ago"
(`since`: `2h`, `30m`, `90s`, `1d`), turned into RFC 3339 before it is sent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# RFC 3339 requires the date, a T (or space), the time and an offset.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(value: str) -> datetime:
    """An aware datetime, or ValueError with a message fit for the user."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
    text = value.replace("z", "Z").replace("t", "T")
    # Python parses at most 6 fractional digits; RFC 3339 allows more.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("is not a valid date and time") from None


_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def since(value: str, now: datetime | None = None) -> str:
    """`value` as given (an RFC 3339 time, or anything for the daemon to judge), or,
    for a duration such as `2h`, the time that long before `now` in RFC 3339."""
    found = _AGO.match(value)
    if found is None:
        return value
    ago = timedelta(seconds=float(found.group(1)) * _UNIT[found.group(2)])
    return format_utc((now or now_utc()) - ago)


def format_utc(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    spec = "microseconds" if moment.microsecond % 1000 else "milliseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def now_utc() -> datetime:
    return datetime.now(UTC)


def now_iso() -> str:
    """Now, at millisecond precision (the spec's format)."""
    moment = now_utc()
    return format_utc(moment.replace(microsecond=moment.microsecond // 1000 * 1000))


def ms_to_iso(ms: int) -> str:
    return format_utc(datetime.fromtimestamp(ms / 1000, UTC))


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
