"""The Textual app: owns the connection to the daemon and the latest snapshot; screens show them.

Decisions:
- One worker keeps the connection: connect, `subscribe`, then wait until the
  connection ends; on any failure the bar says "disconnected" with the reason
  and the worker tries again every `reconnect_delay` seconds, for as long as
  the app runs. The last snapshot stays on screen meanwhile.
- Pushed snapshots arrive on the client's reader task and are posted to the
  app as a message, so widgets are only touched from the app's own message
  handling; every `SnapshotScreen` on the stack gets each one.
- Actions (`act`) and reads (`fetch`) go through here so every screen reports
  outcomes the same way: a notification, and `last_message` (what tests read).
- With `snapshot=` the app shows that fixed snapshot and never connects:
  deterministic output for SVG snapshot tests and docs screenshots.
- The connection bar also tells when the daemon cannot reach its store (the
  snapshot's `store`; with JetStream: NATS is down): state "degraded", with
  the reason, until a snapshot says it is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen

from .client import ConnectionLost, ControlClient, ControlError, ControlUnavailable
from .dashboard import DashboardScreen
from .format import printable
from .screen import SnapshotScreen
from .widgets import LINKED

RECONNECT_DELAY = 1.0
# How an action reads in a message ("retry failed: ...").
ACTIONS = {"retry_rejected": "retry", "delete_rejected": "delete", "replay": "start the replay",
           "cancel_replay": "cancel the replay"}


class SnapshotArrived(Message):
    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class DashboardApp(App[int]):
    TITLE = "eventstreamd"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit")]

    link: reactive[tuple[str, str]] = reactive(("connecting", "connecting…"))

    def __init__(self, socket_path: Path | str, *, snapshot: dict[str, Any] | None = None,
                 reconnect_delay: float = RECONNECT_DELAY) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.fixed = snapshot is not None
        self.snapshot: dict[str, Any] | None = snapshot
        self.reconnect_delay = reconnect_delay
        self.client: ControlClient | None = None
        self.last_message = ""
        self.connections = 0  # successful connections so far (tests watch reconnects)
        self._link_text = ""  # the bar's text while connected to the daemon

    def get_default_screen(self) -> Screen[Any]:
        return DashboardScreen()

    def on_mount(self) -> None:
        if self.fixed:
            version = (self.snapshot or {}).get("daemon", {}).get("version", "?")
            self._link_text = f"● connected to {self.socket_path} · eventstreamd {version}"
            self.link = ("connected", self._link_text)
            self._show_store(self.snapshot or {})
            return
        self.link = ("connecting", f"connecting to {self.socket_path}…")
        self.run_worker(self._keep_connected(), name="connection", group="connection",
                        exclusive=True)

    # --------------------------------------------------------------- connection

    async def _keep_connected(self) -> None:
        while True:
            try:
                client = await ControlClient.connect(self.socket_path, on_push=self._pushed)
            except ControlUnavailable as exc:
                self._disconnected(str(exc))
                await asyncio.sleep(self.reconnect_delay)
                continue
            try:
                first = await client.request("subscribe")
                self.client = client
                self.connections += 1
                version = client.server.get("version", "?")
                self._link_text = (f"● connected to {self.socket_path} · "
                                   f"eventstreamd {version}")
                self.link = ("connected", self._link_text)
                if self.connections > 1:
                    self.say("reconnected to the daemon")
                self.apply_snapshot(first)
                await client.wait_closed()
                reason = client.close_reason
            except (ConnectionLost, ControlError) as exc:
                reason = str(exc)
            finally:
                self.client = None
                await client.close()
            self._disconnected(reason)
            await asyncio.sleep(self.reconnect_delay)

    def _disconnected(self, reason: str) -> None:
        was_connected = self.link[0] in LINKED
        self.link = ("disconnected", f"✖ disconnected — reconnecting every "
                                     f"{self.reconnect_delay:g}s: {reason}")
        if was_connected:
            self.say(f"lost the daemon: {reason}", error=True)

    def _pushed(self, snapshot: dict[str, Any]) -> None:
        self.post_message(SnapshotArrived(snapshot))

    def on_snapshot_arrived(self, message: SnapshotArrived) -> None:
        self.apply_snapshot(message.snapshot)

    def apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self._show_store(snapshot)
        for screen in self.screen_stack:
            if isinstance(screen, SnapshotScreen):
                screen.show_snapshot(snapshot)

    def _show_store(self, snapshot: dict[str, Any]) -> None:
        if self.link[0] not in LINKED:
            return
        problem = store_problem(snapshot)
        self.link = (("degraded", f"{self._link_text} · {problem}") if problem
                     else ("connected", self._link_text))

    # ------------------------------------------------------------------ actions

    def say(self, text: str, *, error: bool = False) -> None:
        self.last_message = text
        # Messages quote the daemon, which quotes receivers: text, never markup.
        self.notify(printable(text), severity="error" if error else "information",
                    timeout=6 if error else 3, markup=False)

    async def act(self, op: str, done: str, **fields: Any) -> bool:
        """Run one action on the daemon; report the outcome; refresh the status after it."""
        client = self.client
        what = ACTIONS.get(op, op.replace("_", " "))
        if client is None:
            self.say(f"cannot {what}: not connected to the daemon", error=True)
            return False
        try:
            await client.request(op, **fields)
        except ControlError as exc:
            self.say(f"{what} failed: {exc.message}", error=True)
            return False
        except ConnectionLost as exc:
            self.say(f"{what} failed: {exc}", error=True)
            return False
        self.say(done)
        await self.refresh_status()
        return True

    async def fetch(self, op: str, *, report: bool = False, **fields: Any) -> Any:
        """A read; None when it cannot be answered (reported only when `report`)."""
        client = self.client
        if client is None:
            if report:
                self.say("not connected to the daemon", error=True)
            return None
        try:
            return await client.request(op, **fields)
        except (ControlError, ConnectionLost) as exc:
            if report:
                self.say(f"{op.replace('_', ' ')} failed: {exc}", error=True)
            return None

    async def ask(self, op: str, **fields: Any) -> tuple[Any, str | None]:
        client = self.client
        if client is None:
            return None, "not connected to the daemon"
        try:
            return await client.request(op, **fields), None
        except ControlError as exc:
            return None, exc.message
        except ConnectionLost as exc:
            return None, str(exc)

    async def refresh_status(self) -> None:
        snapshot = await self.fetch("status")
        if snapshot is not None:
            self.apply_snapshot(snapshot)


def store_problem(snapshot: dict[str, Any]) -> str | None:
    """What the bar says when the daemon cannot reach its store; None when it can."""
    store = snapshot.get("store") or {}
    where = f" at {store['server']}" if store.get("server") else ""
    if store.get("connected", True):
        # Reachable but unusable (JetStream: its streams are gone): the error says it all.
        return f"✖ {store.get('backend', 'store')}{where}: {store['error']}" \
            if store.get("error") else None
    return (f"✖ {store.get('backend', 'store')}{where} unreachable: "
            f"{store.get('error') or 'no connection'} — delivery paused, publishing "
            "answers 503")
