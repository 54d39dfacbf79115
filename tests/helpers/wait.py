"""One polling helper for the tests: wait, bounded in time and count, until a condition holds.

`eventually` takes a probe that is a plain function or a coroutine function;
`eventually_sync` is the same wait for synchronous tests (it sleeps the thread).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio

T = TypeVar("T")
WITHIN = 30.0  # the default bound, in seconds: generous for a loaded CI machine


@overload
async def eventually(probe: Callable[[], Awaitable[T]], until: Callable[[T], object] = bool,
                     *, within: float = WITHIN, every: float = 0.05, what: str = "") -> T: ...


@overload
async def eventually(probe: Callable[[], T], until: Callable[[T], object] = bool,
                     *, within: float = WITHIN, every: float = 0.05, what: str = "") -> T: ...


async def eventually(probe: Callable[[], Any], until: Callable[[Any], object] = bool,
                     *, within: float = WITHIN, every: float = 0.05, what: str = "") -> Any:
    """Call `probe` until `until(result)` holds; the result. Fails after `within` seconds
    (and at most `within / every` probes), saying what it waited for and the last result."""
    last = None
    with anyio.move_on_after(within):
        for _ in range(_probes(within, every)):
            result = probe()
            last = await result if inspect.isawaitable(result) else result
            if until(last):
                return last
            await anyio.sleep(every)
    raise _timed_out(within, what, last)


def eventually_sync(probe: Callable[[], T], until: Callable[[T], object] = bool, *,
                    within: float = WITHIN, every: float = 0.05, what: str = "") -> T:
    """`eventually` for synchronous code: the same bounds, sleeping the thread."""
    last: T | None = None
    deadline = time.monotonic() + within
    for _ in range(_probes(within, every)):
        last = probe()
        if until(last):
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    raise _timed_out(within, what, last)


def _probes(within: float, every: float) -> int:
    return max(1, int(within / every))


def _timed_out(within: float, what: str, last: object) -> AssertionError:
    return AssertionError(f"not within {within:g}s: {what or 'condition'} (last: {last!r})")
