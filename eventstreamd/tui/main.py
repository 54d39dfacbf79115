"""The `eventstreamd tui` entry point: check the socket once, then run the app.

A wrong socket path, a stopped daemon or missing permissions are found before
the full-screen app starts, and reported as one line on stderr with exit code
1 (the caller's shell still shows it); once the dashboard runs, a daemon that
goes away is shown in the app and reconnected to instead.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from .client import ControlUnavailable, probe


def run_tui(socket_path: Path) -> int:
    try:
        asyncio.run(probe(socket_path))
    except ControlUnavailable as exc:
        print(f"eventstreamd tui: {exc}", file=sys.stderr)
        return 1
    from .app import DashboardApp  # Textual is imported only when it is needed

    app = DashboardApp(socket_path)
    app.run()
    return app.return_code or 0
