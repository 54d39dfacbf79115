"""Driving the Textual dashboard in tests: an app attached to a daemon, bounded waits on
what it shows, and reading its tables."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from eventstreamd.tui.app import DashboardApp
from tests.helpers.daemon import DaemonProcess
from tests.helpers.wait import eventually

WAIT = 20.0  # the bound on every wait in this file, in seconds
TERMINAL = (160, 40)


def tui_for(daemon: DaemonProcess) -> DashboardApp:
    return DashboardApp(daemon.data_dir / "control.sock", reconnect_delay=0.2)


async def shows(pilot: Pilot[Any], condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
                what: str) -> None:
    """`eventually` for a running app: it has processed what was pending before each look
    (at the screen, or at what the daemon says)."""
    async def looked() -> bool:
        await pilot.pause()
        found = condition()
        return bool(await found if inspect.isawaitable(found) else found)

    await eventually(looked, within=WAIT, what=what)


def table(app: DashboardApp, selector: str = "#integrations") -> DataTable[Any]:
    return app.screen.query_one(selector, DataTable)


def cell(app: DashboardApp, row: str, column: str) -> str | None:
    grid = table(app)
    if row not in {key.value for key in grid.rows}:
        return None
    value = grid.get_cell(row, column)
    return getattr(value, "plain", str(value))


def row_ids(app: DashboardApp, selector: str) -> list[str]:
    """The rows' ids in the order they are shown."""
    return [str(row.key.value) for row in table(app, selector).ordered_rows]


def select(app: DashboardApp, row: str, selector: str = "#integrations") -> None:
    grid = table(app, selector)
    grid.move_cursor(row=grid.get_row_index(row))
