"""One integration: its live figures, its rejected events and its log, with the actions on them.

Decisions:
- The figures come from the pushed snapshot; the rejected events and the log
  are fetched over the socket on every snapshot while the screen is shown
  (one exclusive worker, so a slow answer is replaced, never queued behind).
- Rejected events are listed with what ties them to what was published and
  why: the original event id, sequence number, the receiver's HTTP status,
  the attempts it took and the receiver's answer.
- Its replays come with each snapshot (live progress, no request of their
  own): `p` opens the replay dialog (`replay.py`: count first, then start),
  `c` cancels the selected replay after a confirmation.
- Enter (or v) opens the selected rejected event's payload (with the same
  context); retry (y) and
  delete (d, after a confirmation) act on the selected one, here or from the
  payload view. Every action goes through the app's `act`, which reports the
  daemon's own error message.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Label, Static

from . import format as fmt
from .dialogs import ConfirmScreen, PayloadScreen
from .replay import ReplayScreen
from .screen import SnapshotScreen
from .widgets import ConnectionBar

LOG_REASON_WIDTH = 200
REPLAY_STYLES = {"running": "green", "paused": "yellow", "cancelled": "dim"}
PROGRESS_BAR = 12


def progress(replay: dict[str, Any]) -> str:
    """`[#####.......] 1,204/3,000`: a replay's delivered share of its events."""
    events, delivered = int(replay.get("events") or 0), int(replay.get("delivered") or 0)
    filled = round(PROGRESS_BAR * delivered / events) if events else PROGRESS_BAR
    filled = max(0, min(PROGRESS_BAR, filled))
    return (f"[{'#' * filled}{'.' * (PROGRESS_BAR - filled)}] "
            f"{fmt.count(delivered)}/{fmt.count(events)}")


def details_table(item: dict[str, Any] | None, integration_id: str) -> Table:
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column()
    if item is None:
        grid.add_row(fmt.plain(f"{integration_id}: not in the daemon's status (deleted?)",
                               "bold red"))
        return grid
    # Every value a Text: a plain str in a grid cell would be parsed as markup.
    pairs: list[tuple[str, Text | str]] = [
        ("Integration", fmt.plain(item["id"], "bold")),
        ("Status", fmt.health_text(item.get("health"), bool(item.get("auto_stopped")))),
        ("Type", fmt.plain(f"{item.get('kind')} · {item.get('integration_type')}")),
        ("Target", fmt.plain(item.get("target") or "")),
        ("Cursor", fmt.count(item.get("cursor"))),
        ("Lag", f"{fmt.count(item.get('lag_events'))} events · oldest "
                f"{fmt.age(item.get('lag_seconds'))}"),
        ("Delivered", f"{fmt.count(item.get('delivered'))} · "
                      f"{fmt.rate(item.get('delivered_rate'))} "
                      f"{fmt.sparkline(item.get('delivered_history') or [], 20)}"),
        ("In flight", fmt.count(item.get("in_flight"))),
        ("Failures", f"{fmt.count(item.get('failures'))} · crashes "
                     f"{fmt.count(item.get('crashes'))}"),
        ("Rejected", str(item.get("rejected_events") or 0)),
    ]
    if item.get("buffered_bytes") is not None:  # a sink that holds events before they go out
        pairs.append(("Buffered", f"{fmt.size(item.get('buffered_bytes'))} · age "
                                  f"{fmt.age(item.get('buffered_age'))}"))
    if item.get("max_rate") or item.get("ordering"):  # a webhook's delivery controls
        rate = item.get("max_rate")
        ordering = item.get("ordering")
        pairs.append(("Max rate", fmt.plain(f"{rate:g} deliveries/s" if rate else "unlimited")))
        pairs.append(("Order", fmt.plain(
            "strict: one request at a time" if ordering == "strict"
            else f"per value of {ordering.removeprefix('key ')}" if ordering
            else "none (up to max_in_flight at once)")))
    for index in range(0, len(pairs), 2):
        row: list[Text] = []
        for label, value in pairs[index:index + 2]:
            row += [Text(label, style="dim"), fmt.plain(value) if isinstance(value, str)
                    else value]
        grid.add_row(*row)
    if item.get("auto_stopped"):
        grid.add_row(Text("Stopped", style="dim"),
                     fmt.plain(f"by the daemon: {item.get('stop_reason') or ''}", "red"))
    error = item.get("last_error")
    if error:
        when = fmt.age(item.get("last_error_age"))
        grid.add_row(Text("Last error", style="dim"),
                     fmt.plain(f"{error} ({when} ago)", "red"))
    return grid


class IntegrationScreen(SnapshotScreen):
    DEFAULT_CSS = """
    IntegrationScreen #details { height: auto; padding: 0 1; margin-bottom: 1; }
    IntegrationScreen .section { padding: 0 1; text-style: bold; background: $boost; width: 1fr; }
    IntegrationScreen #rejected { height: 9; }
    IntegrationScreen #replays { height: 6; }
    IntegrationScreen #log { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("enter", "payload", "Payload", priority=True),
        Binding("v", "payload", "Payload", show=False),
        Binding("y", "retry", "Retry"),
        Binding("d", "delete", "Delete"),
        Binding("p", "replay", "Replay"),
        Binding("c", "cancel_replay", "Cancel replay"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self, integration_id: str) -> None:
        super().__init__()
        self.integration_id = integration_id
        self.sub_title = integration_id
        self._log_shown: list[dict[str, Any]] | None = None
        self._rejected_shown: list[dict[str, Any]] | None = None
        self._replays_shown: list[dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBar(id="link")
        yield Static(id="details")
        yield Label("Rejected events (newest first) — enter: payload · y: retry · d: delete",
                    classes="section")
        rejected: DataTable[Any] = DataTable(id="rejected", cursor_type="row")
        rejected.add_column("Rejected event id", key="id", width=36)
        rejected.add_column("Rejected at", key="created_at", width=24)
        rejected.add_column("Event id", key="event_id", width=36)
        rejected.add_column("Seq", key="seq", width=8)
        rejected.add_column("HTTP", key="status", width=4)
        rejected.add_column("Tries", key="attempts", width=5)
        rejected.add_column("Answer", key="reason")
        yield rejected
        yield Label("Replays (newest first) — p: new replay · c: cancel", classes="section")
        replays: DataTable[Any] = DataTable(id="replays", cursor_type="row")
        replays.add_column("Replay", key="id", width=16)
        replays.add_column("Status", key="status", width=9)
        replays.add_column("Progress", key="progress", width=34)
        replays.add_column("Created", key="created_at", width=24)
        replays.add_column("Range", key="range")
        yield replays
        yield Label("Log (newest first)", classes="section")
        log: DataTable[Any] = DataTable(id="log", cursor_type="row", zebra_stripes=True)
        log.add_column("At", key="created_at", width=24)
        log.add_column("Action", key="action", width=28)
        log.add_column("Reason", key="reason")
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#rejected", DataTable).focus()
        self._show(self.dashboard.snapshot)

    # ------------------------------------------------------------------ display

    def show_snapshot(self, snapshot: dict[str, Any] | None) -> None:
        if not self.is_mounted:  # on_mount shows the app's latest snapshot
            return
        try:
            self._show(snapshot)
        except NoMatches:
            pass  # the screen is being torn down (see DashboardScreen.show_snapshot)

    def _show(self, snapshot: dict[str, Any] | None) -> None:
        item = None
        for candidate in (snapshot or {}).get("integrations") or []:
            if candidate["id"] == self.integration_id:
                item = candidate
        self.query_one("#details", Static).update(details_table(item, self.integration_id))
        self._fill_replays((item or {}).get("replays") or [])
        self.action_refresh_lists()

    def action_refresh_lists(self) -> None:
        self.run_worker(self._load_lists(), group="lists", exclusive=True)

    async def _load_lists(self) -> None:
        rejected = await self.dashboard.fetch("rejected", integration_id=self.integration_id)
        entries = await self.dashboard.fetch("logs", integration_id=self.integration_id)
        if rejected is not None:
            self._fill_rejected(rejected.get("rejected_events") or [])
        if entries is not None:
            self._fill_log(entries.get("entries") or [])

    def _fill_rejected(self, events: list[dict[str, Any]]) -> None:
        # Compared whole, not by id: a retry that failed again changes an entry's
        # attempts, status and answer in place.
        if events == self._rejected_shown:
            return  # unchanged: keep the user's place in the table
        self._rejected_shown = events
        table: DataTable[Any] = self.query_one("#rejected", DataTable)
        ids = [e["id"] for e in events]
        selected = self.selected_rejected()
        table.clear()
        for event in events:
            table.add_row(fmt.plain(event["id"]), fmt.plain(event.get("created_at", "")),
                          fmt.plain(fmt.shorten(event.get("event_id"), 36)),
                          Text(fmt.count(event.get("seq")), justify="right"),
                          Text(str(event.get("status") or fmt.NONE), justify="right"),
                          Text(fmt.count(event.get("attempts")), justify="right"),
                          fmt.plain(fmt.shorten(event.get("reason"), LOG_REASON_WIDTH)),
                          key=event["id"])
        if selected in ids:
            table.move_cursor(row=ids.index(selected))

    def _fill_replays(self, replays: list[dict[str, Any]]) -> None:
        if replays == self._replays_shown:
            return
        self._replays_shown = replays
        table: DataTable[Any] = self.query_one("#replays", DataTable)
        selected = self.selected_replay()
        ids = [r["replay_id"] for r in replays]
        table.clear()
        for replay in replays:
            table.add_row(fmt.plain(replay["replay_id"]),
                          fmt.plain(replay.get("status", ""), REPLAY_STYLES.get(
                              replay.get("status", ""), "")),
                          fmt.plain(progress(replay)),
                          fmt.plain(replay.get("created_at", "")),
                          fmt.plain(f"{replay.get('starts_at')} .. {replay.get('ends_at')}"),
                          key=replay["replay_id"])
        if selected in ids:
            table.move_cursor(row=ids.index(selected))

    def selected_replay(self) -> str | None:
        table: DataTable[Any] = self.query_one("#replays", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def _fill_log(self, entries: list[dict[str, Any]]) -> None:
        if entries == self._log_shown:
            return  # unchanged: keep the user's place in the table
        self._log_shown = entries
        table: DataTable[Any] = self.query_one("#log", DataTable)
        table.clear()
        for entry in entries:
            table.add_row(fmt.plain(entry.get("created_at", "")),
                          fmt.plain(entry.get("action", "")),
                          fmt.plain(fmt.shorten(entry.get("reason"), LOG_REASON_WIDTH)))

    def selected_rejected(self) -> str | None:
        table: DataTable[Any] = self.query_one("#rejected", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_refresh(self) -> None:
        self.run_worker(self._refresh(), group="refresh", exclusive=True)

    async def _refresh(self) -> None:
        await self.dashboard.refresh_status()
        await self._load_lists()

    def action_start(self) -> None:
        self._act("start", f"{self.integration_id} started")

    def action_stop(self) -> None:
        self._act("stop", f"{self.integration_id} stopped")

    def action_replay(self) -> None:
        def after(request: dict[str, Any] | None) -> None:
            if request is not None:
                self._act("replay", f"replay to {self.integration_id} started",
                          replay=request)

        self.app.push_screen(ReplayScreen(self.integration_id, self.dashboard.ask), after)

    def action_cancel_replay(self) -> None:
        replay_id = self.selected_replay()
        replays = {r["replay_id"]: r for r in self._replays_shown or ()}
        if replay_id is None or replays[replay_id].get("status") not in ("running", "paused"):
            self.dashboard.say("no running or paused replay selected", error=True)
            return

        def after(confirmed: bool | None) -> None:
            if confirmed:
                self._act("cancel_replay", f"replay {replay_id} cancelled",
                          replay_id=replay_id)

        self.app.push_screen(ConfirmScreen(
            f"Cancel replay {replay_id} of {self.integration_id}?\n"
            "What it delivered stays delivered; it cannot be resumed.", "Yes, cancel (y)"),
            after)

    def action_payload(self) -> None:
        event_id = self.selected_rejected()
        if event_id is None:
            self.dashboard.say("no rejected event selected", error=True)
            return
        self.run_worker(self._show_payload(event_id), group="payload", exclusive=True)

    async def _show_payload(self, event_id: str) -> None:
        event = await self.dashboard.fetch("rejected_event", report=True,
                                           integration_id=self.integration_id,
                                           event_id=event_id)
        if event is None:
            return

        def after(choice: str | None) -> None:
            if choice == "retry":
                self._retry(event_id)
            elif choice == "delete":
                self._confirm_delete(event_id)

        self.app.push_screen(PayloadScreen(self.integration_id, event_id, event), after)

    def action_retry(self) -> None:
        event_id = self.selected_rejected()
        if event_id is None:
            self.dashboard.say("no rejected event selected", error=True)
            return
        self._retry(event_id)

    def action_delete(self) -> None:
        event_id = self.selected_rejected()
        if event_id is None:
            self.dashboard.say("no rejected event selected", error=True)
            return
        self._confirm_delete(event_id)

    def _retry(self, event_id: str) -> None:
        self.dashboard.say(f"retrying {event_id}…")
        self._act("retry_rejected", f"rejected event {event_id} delivered and removed",
                  event_id=event_id)

    def _confirm_delete(self, event_id: str) -> None:
        def after(confirmed: bool | None) -> None:
            if confirmed:
                self._act("delete_rejected", f"rejected event {event_id} deleted",
                          event_id=event_id)

        self.app.push_screen(ConfirmScreen(
            f"Delete rejected event {event_id} of {self.integration_id}?\n"
            "It is gone for good: it cannot be retried afterwards."), after)

    def _act(self, op: str, done: str, **fields: Any) -> None:
        async def run() -> None:
            await self.dashboard.act(op, done, integration_id=self.integration_id, **fields)
            await self._load_lists()

        self.run_worker(run(), group="actions")
