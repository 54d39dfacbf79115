"""What receivers answer reaches the screen as text: the dashboard and `listen` never parse
it as markup nor pass its escape sequences to the terminal. Real daemon, real receivers,
the TUI under Textual's pilot, `eventstreamd listen` as a subprocess."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from textual.widgets import Static

from eventstreamd.tui.detail import IntegrationScreen
from eventstreamd.tui.dialogs import PayloadScreen
from tests.helpers.api import ApiClient
from tests.helpers.daemon import FAST, Factory, Listener
from tests.helpers.receiver import Received, Receiver
from tests.helpers.tui import cell, row_ids, select, shows, table, tui_for
from tests.helpers.wait import eventually, eventually_sync

# Unbalanced closing tag (MarkupError), styling, a link, and terminal escape sequences.
HOSTILE = "[/] [bold red]boom[/bold red] [link=http://evil.example]click[/link] \x1b[31mred"
SHOWN = HOSTILE.replace("\x1b", "\\x1b")  # as the screen must show it


def rendered(widget: Static) -> str:
    visual = widget.visual
    return str(getattr(visual, "plain", visual))


async def test_receiver_answers_with_markup_and_escapes_are_shown_as_text(
        daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    answers = {"w1": HOSTILE, "w2": HOSTILE}

    def respond(received: Received, attempt: int) -> web.Response:
        which = "w1" if received.headers.get("Authorization") == "Bearer key-w1" else "w2"
        # w1 rejects (400: kept with the answer); w2 keeps failing (its last error).
        return web.Response(status=400 if which == "w1" else 500, text=answers[which])

    receiver = await Receiver(respond).start()
    try:
        async with ApiClient(daemon) as api:
            await api.webhook("w1", receiver.url, api_key="key-w1")
            await api.webhook("w2", receiver.url, api_key="key-w2")
            await api.publish([{"name": "order.created", "payload": {"order": 1}}])
            [entry] = await eventually(lambda: api.rejected("w1"), lambda r: len(r) == 1)
            assert entry["reason"] == HOSTILE  # the API gives it back as it came

            app = tui_for(daemon)
            async with app.run_test(size=(200, 40)) as pilot:
                await shows(pilot, lambda: cell(app, "w1", "rejected") == "1", "rejected")
                await shows(pilot, lambda: (cell(app, "w2", "last_error") or "")
                            .startswith("[/] [bold red]boom"), "w2's last error as text")
                select(app, "w1")
                await pilot.press("enter")
                await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen),
                            "details open")
                await shows(pilot, lambda: len(row_ids(app, "#rejected")) == 1, "listed")
                [row] = row_ids(app, "#rejected")
                assert str(table(app, "#rejected").get_cell(row, "reason")) == SHOWN

                def log_reasons() -> list[str]:
                    log = table(app, "#log")
                    return [str(log.get_row_at(i)[2]) for i in range(log.row_count)]
                # (Logs keep control characters flattened to spaces.)
                await shows(pilot, lambda: any(SHOWN.split(" \\x1b")[0] in r
                                               for r in log_reasons()),
                            "the log's reason as text")

                # The rejected event's details, with the receiver's answer.
                await pilot.press("enter")
                await shows(pilot, lambda: isinstance(app.screen, PayloadScreen), "payload")
                context = app.screen.query_one("#context", Static)
                assert f"answer: {SHOWN}" in rendered(context)
                await pilot.press("escape")
                await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen), "back")

                # A retry that fails again: Tries and Answer show the latest attempt.
                answers["w1"] = "[i]still[/i] no"
                await pilot.press("y")
                await shows(pilot, lambda: "retry failed" in app.last_message, "retry failed")
                await shows(pilot, lambda: str(table(app, "#rejected").get_cell(
                    row, "attempts")) == "2", "tries updated")
                assert str(table(app, "#rejected").get_cell(row, "reason")) == \
                    "the receiver rejected the event again (HTTP 400): [i]still[/i] no"
                assert app.last_message.endswith("(HTTP 400): [i]still[/i] no")
            assert app.return_code in (None, 0)
    finally:
        await receiver.close()


async def test_listen_shows_escape_sequences_as_text(tmp_path: Any) -> None:
    listener = Listener(tmp_path)
    try:
        body = b"\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m and \xc2\x9b2J done"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{listener.url}hook", data=body) as response:
                assert response.status == 200
            async with session.post(listener.url, json={"s": "\x1b[2J\u009b"}) as response:
                assert response.status == 200
        eventually_sync(listener.deliveries, lambda n: n >= 2, within=20)
        printed = listener.out_path.read_bytes()
        assert b"\x1b" not in printed and b"\x07" not in printed and b"\x7f" not in printed
        assert "\u009b".encode() not in printed
        text = printed.decode()
        assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred" in text
        assert '"s": "\\u001b[2J\\x9b"' in text
    finally:
        listener.stop()
