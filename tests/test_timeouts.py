"""The package's timeouts (`eventstreamd/timeouts.py`) on the daemon's own event loop
(uvloop): a timed-out wait takes its timer once, not once per loop turn until the clock
ticks, and never ends before it was asked to."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import pytest
from anyio._backends._asyncio import CancelScope as AsyncioCancelScope

from eventstreamd import timeouts

PACKAGE = Path(timeouts.__file__).parent
WAITS = 100


def _timer_callbacks_per_wait(scope_for: Any, delay: float) -> tuple[float, float]:
    """Timer callbacks anyio ran per timed-out wait, and the shortest wait (s), on uvloop."""
    original = AsyncioCancelScope._timeout
    calls = 0

    def counted(self: AsyncioCancelScope) -> None:
        nonlocal calls
        calls += 1
        original(self)

    async def waits() -> float:
        never = anyio.Event()
        shortest = float("inf")
        for _ in range(WAITS):
            started = anyio.current_time()
            with scope_for(delay):
                await never.wait()
            shortest = min(shortest, anyio.current_time() - started)
        return shortest

    with mock.patch.object(AsyncioCancelScope, "_timeout", counted):
        shortest = anyio.run(waits, backend="asyncio", backend_options={"use_uvloop": True})
    return calls / WAITS, shortest


@pytest.mark.parametrize("delay", [0.0004, 0.002, 0.0025])
def test_a_timed_out_wait_runs_its_timer_once(delay: float) -> None:
    per_wait, shortest = _timer_callbacks_per_wait(timeouts.move_on_after, delay)
    # Once when the scope is entered, once when the deadline passes; anyio's own
    # move_on_after runs it hundreds of times here (61,842 for 200 waits of 2 ms).
    assert per_wait <= 2.5, per_wait
    assert shortest >= delay - timeouts.SLACK, (shortest, delay)


def test_fail_after_raises_at_its_deadline_and_none_means_never() -> None:
    async def waits() -> None:
        with pytest.raises(TimeoutError), timeouts.fail_after(0.002):
            await anyio.Event().wait()
        with timeouts.fail_after(None) as scope:  # no deadline
            await anyio.sleep(0.001)
        assert scope.deadline == float("inf")
        with timeouts.move_on_after(None) as scope:
            await anyio.sleep(0.001)
        assert scope.deadline == float("inf") and not scope.cancelled_caught

    anyio.run(waits, backend="asyncio", backend_options={"use_uvloop": True})


def test_the_package_uses_these_timeouts_only() -> None:
    """anyio's own move_on_after / fail_after spin under uvloop (see timeouts.py)."""
    used = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in ("move_on_after", "fail_after")
                    and isinstance(node.value, ast.Name) and node.value.id == "anyio"
                    and path.name != "timeouts.py"):
                used.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not used, used
