"""Retry delays: exponential backoff with full jitter, and `Retry-After`.

Full jitter (a uniform draw between 0 and the capped exponential) spreads the
retries of many integrations so a receiver coming back is not hit by all of
them at once. A receiver's `Retry-After` (seconds or an HTTP date) wins over
the computed delay, capped at `MAX_RETRY_AFTER` so a bad header cannot park an
integration for days.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 3600.0


def backoff_delay(attempt: int, initial: float, cap: float,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 for the first retry)."""
    # The exponent is capped so a days-long outage cannot overflow the float.
    ceiling = min(cap, initial * (2 ** min(max(0, attempt - 1), 60)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdecimal():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
