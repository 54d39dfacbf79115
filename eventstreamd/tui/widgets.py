"""Small widgets every screen shares: the connection bar.

The connection bar watches the app's `link` (state, text) so each screen shows
the same connection state without the app knowing which screens exist. It
grows to three lines rather than cut a long reason (a socket path) off.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from .format import plain_lines

STATES = ("connected", "connecting", "disconnected", "degraded")
# The states in which the daemon answers ("degraded": it cannot reach its store).
LINKED = ("connected", "degraded")


class ConnectionBar(Static):
    DEFAULT_CSS = """
    ConnectionBar { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    ConnectionBar.-connected { color: $success; }
    ConnectionBar.-connecting { color: $warning; }
    ConnectionBar.-degraded { background: $warning 30%; color: $text; text-style: bold; }
    ConnectionBar.-disconnected { background: $error 30%; color: $text; text-style: bold; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "link", self._show)

    def _show(self, link: Any) -> None:
        state, text = link
        for name in STATES:
            self.set_class(state == name, f"-{name}")
        self.update(plain_lines(text))  # names a socket path, a store's error: not markup
