"""What the dashboard's screens share: the app they ask (`Dashboard`), and the base of
every screen that shows the live status (`SnapshotScreen`).

Screens talk to the app only through `Dashboard` (the app, `app.py`, is the one
implementation), so they do not import the app that imports them; the app hands
each new snapshot to every `SnapshotScreen` on its stack.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from textual.screen import Screen


@runtime_checkable
class Dashboard(Protocol):
    """The app as its screens see it: the last snapshot, the connection, and the
    actions and reads that report their outcome the same way everywhere."""

    @property
    def snapshot(self) -> dict[str, Any] | None: ...

    @property
    def link(self) -> tuple[str, str]: ...

    def say(self, text: str, *, error: bool = False) -> None: ...

    async def act(self, op: str, done: str, **fields: Any) -> bool: ...

    async def fetch(self, op: str, *, report: bool = False, **fields: Any) -> Any: ...

    async def ask(self, op: str, **fields: Any) -> tuple[Any, str | None]:
        """A request whose failure the caller shows itself: (answer, None), or (None, why)."""
        ...

    async def refresh_status(self) -> None: ...


class SnapshotScreen(Screen[None]):
    """A screen that redraws from each status snapshot the app receives."""

    @property
    def dashboard(self) -> Dashboard:
        app = self.app
        if not isinstance(app, Dashboard):
            raise TypeError(f"{type(self).__name__} runs only in the dashboard app")
        return app

    def show_snapshot(self, snapshot: dict[str, Any]) -> None:
        raise NotImplementedError
