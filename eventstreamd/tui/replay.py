"""Starting a replay from the dashboard: what to replay, its count, then the confirmation.

Decisions:
- The dialog asks what `POST .../_replay` takes: from and until (RFC 3339,
  or a duration meaning that long ago: `1h`; until empty is now), event names
  and entities (comma-separated; both empty: the integration's own filter)
  and a rate. "Count" asks the daemon for a dry run over the control socket
  and shows its answer; only then can the replay be started, and the start
  button says how many events it will send. Changing any field forgets the
  count, so what is started is always what was counted.
- The dialog starts nothing itself: it returns the request body and the
  integration's screen starts it (`replay` op), so every action still goes
  through the dashboard's `act`, which reports the daemon's own message.
- The daemon's refusal of a count (a bad time, a range older than the
  retention) is shown in the dialog, which stays open to correct it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from ..timeutil import since
from . import format as fmt

# The dashboard's `ask`: a request whose failure the caller shows itself.
Ask = Callable[..., Awaitable[tuple[Any, str | None]]]

FIELDS = (  # id, label, placeholder, default
    ("from", "From", "RFC 3339, or a duration ago: 1h, 30m", "1h"),
    ("to", "Until", "empty: now", ""),
    ("events", "Events", "order.created, order.paid (empty: the integration's filter)", ""),
    ("entities", "Entities", "order, return", ""),
    ("rate", "Max rate", "events per second (empty: as fast as it goes)", ""),
)


def replay_request(values: dict[str, str]) -> dict[str, Any]:
    """The `_replay` body the dialog's fields say (times turned into RFC 3339)."""
    body: dict[str, Any] = {"starts_at": since(values["from"].strip())}
    if values["to"].strip():
        body["ends_at"] = since(values["to"].strip())
    conditions = {}
    for field, key in (("events", "event_filter"), ("entities", "entity_filter")):
        names = [n.strip() for n in values[field].split(",") if n.strip()]
        if names:
            conditions[key] = names
    if conditions:
        body["filter_conditions"] = conditions
    rate = values["rate"].strip()
    if rate:
        try:
            body["max_rate"] = float(rate)
        except ValueError:
            body["max_rate"] = rate  # the daemon says what it must be
    return body


class ReplayScreen(ModalScreen[dict[str, Any] | None]):
    DEFAULT_CSS = """
    ReplayScreen { align: center middle; }
    ReplayScreen > Vertical {
        width: 90; height: auto; border: thick $accent; background: $surface; padding: 1 2;
    }
    ReplayScreen #title { text-style: bold; margin-bottom: 1; }
    ReplayScreen Grid { grid-size: 2; grid-columns: 12 1fr; grid-rows: 3; height: auto; }
    ReplayScreen Grid Label { padding: 1 0; }
    ReplayScreen #counted { margin: 1 0; height: auto; }
    ReplayScreen Horizontal { height: auto; align: right middle; }
    ReplayScreen Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, integration_id: str, ask: Ask) -> None:
        super().__init__()
        self.integration_id = integration_id
        self.ask = ask
        self.counted: dict[str, Any] | None = None  # the request whose count is shown

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(fmt.plain(f"Replay to {self.integration_id}"), id="title")
            with Grid():
                for field, label, placeholder, value in FIELDS:
                    yield Label(label)
                    yield Input(value=value, placeholder=placeholder, id=field)
            yield Static("", id="counted")
            with Horizontal():
                yield Button("Close", id="close")
                yield Button("Count events", id="count", variant="primary")
                yield Button("Start replay", id="start", variant="warning", disabled=True)

    def on_mount(self) -> None:
        self.query_one("#from", Input).focus()

    def values(self) -> dict[str, str]:
        return {field: self.query_one(f"#{field}", Input).value for field, *_ in FIELDS}

    def on_input_changed(self, event: Input.Changed) -> None:
        self._forget()

    def _forget(self) -> None:
        self.counted = None
        start = self.query_one("#start", Button)
        start.disabled = True
        start.label = "Start replay"
        self.query_one("#counted", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.run_worker(self._count(), group="count", exclusive=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "count":
            self.run_worker(self._count(), group="count", exclusive=True)
        elif event.button.id == "start" and self.counted is not None:
            self.dismiss(self.counted)
        elif event.button.id == "close":
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    async def _count(self) -> None:
        self._forget()
        request = replay_request(self.values())
        shown = self.query_one("#counted", Static)
        answer, problem = await self.ask("replay", integration_id=self.integration_id,
                                         replay={**request, "dry_run": True})
        if problem is not None:
            shown.update(fmt.plain(f"cannot count: {problem}", "red"))
            return
        events = int(answer.get("events") or 0)
        self.counted = request
        shown.update(fmt.plain(f"{fmt.count(events)} events would be replayed."))
        start = self.query_one("#start", Button)
        start.label = f"Start replay of {fmt.count(events)} events"
        start.disabled = False
        start.focus()
