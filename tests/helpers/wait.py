"""One polling helper for the tests: wait, bounded in time and count, until a condition holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], until: Callable[[T], bool] = bool, *,
                     within: float = 20.0, every: float = 0.05, what: str = "") -> T:
    """Call `probe` until `until(result)` holds; the result. Fails after `within` seconds
    (and at most `within / every` probes), saying what it waited for and the last result."""
    last: T | None = None
    with anyio.move_on_after(within):
        for _ in range(max(1, int(within / every))):
            last = await probe()
            if until(last):
                return last
            await anyio.sleep(every)
    raise AssertionError(f"not within {within:g}s: {what or 'condition'} (last: {last!r})")
