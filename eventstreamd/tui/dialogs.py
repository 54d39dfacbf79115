"""Modal screens: a rejected event's payload, and the yes/no confirmation for deletes.

Decisions:
- Modals return what the user chose (`dismiss`) and the screen that opened
  them acts on it, so the actions live in one place.
- The confirmation defaults to "no": escape, n and the No button all cancel,
  and only y or the Yes button confirm (a delete, or a replay's cancel).
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static

from . import format as fmt


def rejection_summary(context: dict[str, Any]) -> str:
    """Why the event was set aside and which published event it is, in three lines."""
    status = context.get("status")
    attempts = context.get("attempts")
    lines = [f"event {context.get('event_id')} · seq {context.get('seq')} · rejected at "
             f"{context.get('created_at')}",
             (f"HTTP {status}" if status is not None else "set aside")
             + (f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else "")
             + ("" if context.get("deliverable", True) else " · cannot be retried"),
             f"answer: {context.get('reason') or '-'}"]
    return "\n".join(lines)


class PayloadScreen(ModalScreen[str | None]):
    DEFAULT_CSS = """
    PayloadScreen { align: center middle; }
    PayloadScreen > Vertical {
        width: 90%; height: 85%; border: thick $accent; background: $surface;
    }
    PayloadScreen #title { padding: 0 1; text-style: bold; width: 1fr; background: $boost; }
    PayloadScreen VerticalScroll { height: 1fr; padding: 0 1; }
    PayloadScreen #context { padding: 0 1; height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("y", "choose('retry')", "Retry"),
        Binding("d", "choose('delete')", "Delete"),
    ]

    def __init__(self, integration_id: str, event_id: str, event: dict[str, Any]) -> None:
        super().__init__()
        self.integration_id = integration_id
        self.event_id = event_id
        self.event = event

    def compose(self) -> ComposeResult:
        event = dict(self.event)
        context = event.pop("rejection", None) or {}
        text = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
        with Vertical():
            yield Label(fmt.plain(f"Rejected event {self.event_id} · {self.integration_id}"),
                        id="title")
            if context:
                yield Static(fmt.plain_lines(rejection_summary(context)), id="context")
            with VerticalScroll():
                yield Static(Syntax(text, "json", word_wrap=True, theme="ansi_dark"),
                             id="payload")
            yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class ConfirmScreen(ModalScreen[bool]):
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 70; height: auto; border: thick $error; background: $surface; padding: 1 2;
    }
    ConfirmScreen #question { width: 1fr; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align: right middle; }
    ConfirmScreen Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, question: str, yes: str = "Yes, delete (y)") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(fmt.plain_lines(self.question), id="question")
            with Horizontal():
                yield Button("No (n)", id="no")
                yield Button(self.yes, id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
