"""The TUI against a real daemon (Textual pilot), its SVG snapshot with fixed data, the command."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from textual.widgets import Button, Input, Static

from eventstreamd.tui import format as fmt
from eventstreamd.tui.app import DashboardApp
from eventstreamd.tui.detail import IntegrationScreen
from eventstreamd.tui.dialogs import ConfirmScreen, PayloadScreen
from eventstreamd.tui.replay import ReplayScreen
from eventstreamd.tui.sample import SIZE, SNAPSHOT, SOCKET_LABEL
from eventstreamd.tui.widgets import ConnectionBar
from tests.helpers.api import ApiClient, events
from tests.helpers.daemon import FAST, Factory
from tests.helpers.receiver import Receiver, Switch, answer
from tests.helpers.tui import TERMINAL, WAIT, cell, row_ids, select, shows, table, tui_for
from tests.helpers.wait import eventually

# ------------------------------------------------------------- live daemon


async def test_table_lists_integrations_with_live_status(daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(daemon) as api:
        await api.webhook("w1", receiver.url)
        await api.webhook("w2", receiver.url)
        await api.stop("w2")
        app = tui_for(daemon)
        async with app.run_test(size=TERMINAL) as pilot:
            await shows(pilot, lambda: app.link[0] == "connected", "connected")
            await shows(pilot, lambda: cell(app, "w2", "health") == "■ stopped",
                        "both listed")
            assert cell(app, "w1", "health") == "● running"
            assert cell(app, "w1", "kind") == "webhook"
            # Host, port and path: two receivers on one host look different.
            port = receiver.url.split(":")[2].split("/")[0]
            assert cell(app, "w1", "target") == f"127.0.0.1:{port}/events"
            # Events flow: the cursor and lag move on screen without a key press.
            await api.publish(events(5))
            await eventually(lambda: len(receiver.delivered) == 5)
            await shows(pilot, lambda: cell(app, "w1", "cursor") == "6", "w1 delivered")
            assert cell(app, "w1", "lag") == "0"
            await shows(pilot, lambda: cell(app, "w2", "lag") == "5", "w2 lags by 5")
            # The stopped one counts what it has not delivered, and has no live counters.
            assert cell(app, "w2", "failures") == "-"


async def test_stop_and_start_from_the_tui(daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(daemon) as api:
        await api.webhook("a1", receiver.url)
        await api.webhook("w1", receiver.url)

        async def http_status(expected: str) -> bool:
            return bool((await api.get("w1"))["status"] == expected)

        app = tui_for(daemon)
        async with app.run_test(size=TERMINAL) as pilot:
            await shows(pilot, lambda: cell(app, "w1", "health") == "● running", "listed")
            select(app, "w1")
            await pilot.press("x")
            await shows(pilot, lambda: http_status("stopped"), "stopped via HTTP")
            await shows(pilot, lambda: cell(app, "w1", "health") == "■ stopped",
                        "stopped on screen")
            assert cell(app, "a1", "health") == "● running"  # only the selected one
            assert app.last_message == "w1 stopped"
            await pilot.press("s")
            await shows(pilot, lambda: http_status("running"), "running via HTTP")
            await shows(pilot, lambda: cell(app, "w1", "health") == "● running",
                        "running on screen")
            actions = [e["action"] for e in await api.logs("w1")]
            assert actions[:2] == ["integration_started", "integration_stopped"]


async def test_rejected_event_is_viewed_retried_and_deleted(daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    refusing = Switch(answer(400, "no such order"))
    receiver = await Receiver(refusing).start()
    try:
        async with ApiClient(daemon) as api:
            await api.webhook("w1", receiver.url)
            await api.publish([{"name": "order.created", "payload": {"order": n}}
                               for n in (1, 2)])
            await eventually(lambda: api.rejected("w1"), lambda r: len(r) >= 2, within=WAIT)
            newest = (await api.rejected("w1"))[0]["id"]

            app = tui_for(daemon)
            async with app.run_test(size=TERMINAL) as pilot:
                await shows(pilot, lambda: cell(app, "w1", "rejected") == "2", "2 rejected")
                select(app, "w1")
                await pilot.press("enter")
                await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen),
                            "details open")
                await shows(pilot, lambda: len(row_ids(app, "#rejected")) == 2, "listed")
                assert row_ids(app, "#rejected")[0] == newest
                # Each row says which published event it is, and the receiver's answer.
                rejected_table = table(app, "#rejected")
                shown = {str(rejected_table.get_cell(newest, c)) for c in
                         ("status", "attempts", "reason")}
                assert shown == {"400", "1", "no such order"}
                assert str(rejected_table.get_cell(newest, "event_id")) in \
                    {r.key for r in receiver.requests}
                await shows(pilot, lambda: "event_rejected" in [
                    str(r[1]) for r in (table(app, "#log").get_row_at(i)
                                        for i in range(table(app, "#log").row_count))],
                    "the log shows the rejection")

                # The payload, as the receiver would get it.
                await pilot.press("enter")
                await shows(pilot, lambda: isinstance(app.screen, PayloadScreen), "payload")
                payload = app.screen
                assert isinstance(payload, PayloadScreen)
                assert payload.event["name"] == "order.created"
                assert payload.event["payload"] in ({"order": 1}, {"order": 2})
                await pilot.press("escape")
                await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen), "back")

                # Retried while the receiver still refuses: the daemon's reason, event kept.
                await pilot.press("y")
                await shows(pilot, lambda: "failed" in app.last_message, "retry failed")
                assert app.last_message.startswith(
                    "retry failed: the receiver rejected the event again")
                assert len(await api.rejected("w1")) == 2

                # The receiver accepts now: retried from the TUI, it disappears.
                refusing.flip()
                select(app, newest, "#rejected")
                await pilot.press("y")
                await shows(pilot, lambda: row_ids(app, "#rejected") != [] and
                            newest not in row_ids(app, "#rejected"), "retried away")
                assert [r["id"] for r in await api.rejected("w1")] == row_ids(app, "#rejected")
                assert len(receiver.delivered) == 1

                # Delete asks first; "n" keeps it, "y" deletes it.
                await pilot.press("d")
                await shows(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirm")
                await pilot.press("n")
                await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen), "kept")
                assert len(await api.rejected("w1")) == 1
                await pilot.press("d")
                await shows(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirm")
                await pilot.press("y")
                await shows(pilot, lambda: row_ids(app, "#rejected") == [], "deleted")
                assert await api.rejected("w1") == []
                await pilot.press("escape")
                await shows(pilot, lambda: cell(app, "w1", "rejected") == "0", "dashboard")
    finally:
        await receiver.close()


async def test_a_replay_is_counted_started_watched_and_cancelled(
        daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    async with Receiver() as receiver, ApiClient(daemon) as api:
        await api.webhook("w1", receiver.url)
        await api.publish(events(30) + events(10, name="return.opened"))
        await eventually(lambda: len(receiver.delivered) == 40, within=WAIT)
        app = tui_for(daemon)
        async with app.run_test(size=TERMINAL) as pilot:
            await shows(pilot, lambda: "w1" in row_ids(app, "#integrations"), "listed")
            select(app, "w1")
            await pilot.press("enter")
            await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen), "details")
            await pilot.press("p")
            await shows(pilot, lambda: isinstance(app.screen, ReplayScreen), "the dialog")
            dialog = app.screen
            assert isinstance(dialog, ReplayScreen)
            dialog.query_one("#from", Input).value = "5m"
            dialog.query_one("#entities", Input).value = "order"
            dialog.query_one("#rate", Input).value = "5"
            start = dialog.query_one("#start", Button)
            assert start.disabled  # nothing can start before it was counted
            await pilot.click("#count")
            await shows(pilot, lambda: not start.disabled, "counted")
            assert str(start.label) == "Start replay of 30 events"
            assert "30 events would be replayed" in str(
                dialog.query_one("#counted", Static).render())
            dialog.query_one("#rate", Input).value = "4"  # a change forgets the count
            await shows(pilot, lambda: start.disabled, "forgotten")
            await pilot.click("#count")
            await shows(pilot, lambda: not start.disabled, "counted again")
            await pilot.click("#start")
            await shows(pilot, lambda: isinstance(app.screen, IntegrationScreen), "started")
            await shows(pilot, lambda: len(row_ids(app, "#replays")) == 1, "listed")
            replay_id = row_ids(app, "#replays")[0]
            await shows(pilot, lambda: str(table(app, "#replays").get_cell(
                replay_id, "progress")).endswith(("/30",)) and "0/30" not in str(
                table(app, "#replays").get_cell(replay_id, "progress")), "progress")
            assert str(table(app, "#replays").get_cell(replay_id, "status")) == "running"
            await pilot.press("c")
            await shows(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirm")
            await pilot.press("y")
            await shows(pilot, lambda: str(table(app, "#replays").get_cell(
                replay_id, "status")) == "cancelled", "cancelled")
            listed = await api.replays("w1")
            assert [(r["replay_id"], r["status"], r["events"]) for r in listed] == \
                [(replay_id, "cancelled", 30)]
            await pilot.press("c")  # nothing running to cancel now
            await shows(pilot, lambda: "no running" in app.last_message, "refused")


async def test_daemon_gone_then_back(daemon_factory: Factory) -> None:
    daemon = daemon_factory(FAST)
    async with ApiClient(daemon) as api:
        await api.webhook("w1", "http://127.0.0.1:9/unused")
    app = tui_for(daemon)
    async with app.run_test(size=TERMINAL) as pilot:
        await shows(pilot, lambda: cell(app, "w1", "health") is not None, "listed")
        assert app.connections == 1
        bar = app.screen.query_one(ConnectionBar)
        assert bar.has_class("-connected")

        assert await anyio.to_thread.run_sync(daemon.stop) == 0
        await shows(pilot, lambda: app.link[0] == "disconnected", "disconnected")
        assert app.link[1].startswith("✖ disconnected — reconnecting every")
        assert bar.has_class("-disconnected")
        # The last status stays on screen, but no row claims a state it cannot know.
        await shows(pilot, lambda: cell(app, "w1", "health") == "? no data", "stale")
        assert cell(app, "w1", "cursor") is not None
        await pilot.press("x")  # an action while disconnected is refused, not a crash
        await shows(pilot, lambda: "not connected" in app.last_message, "refused")

        await anyio.to_thread.run_sync(daemon.start)
        await shows(pilot, lambda: app.link[0] == "connected", "reconnected")
        assert app.connections == 2 and bar.has_class("-connected")
        assert app.last_message == "reconnected to the daemon"
        await shows(pilot, lambda: cell(app, "w1", "health") != "? no data", "fresh")
        select(app, "w1")
        await pilot.press("x")
        async with ApiClient(daemon) as api:
            await eventually(lambda: api.get("w1"), lambda i: i["status"] == "stopped",
                             within=WAIT, every=0.1)


# ------------------------------------------------------------- the command


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstreamd", "tui", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_wrong_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = run_cli("--socket", str(tmp_path / "nope.sock"))
    assert missing.returncode == 1
    assert "no control socket at" in missing.stderr and "Traceback" not in missing.stderr
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()
    refused = run_cli("--socket", str(stale))
    assert refused.returncode == 1
    assert "nothing is listening" in refused.stderr and "Traceback" not in refused.stderr
    config = tmp_path / "c.toml"
    config.write_text(f"[control]\nsocket = \"{tmp_path / 'from-config.sock'}\"\n")
    from_config = run_cli("--config", str(config))
    assert from_config.returncode == 1 and "from-config.sock" in from_config.stderr
    both = run_cli("--config", str(config), "--socket", str(stale))
    assert both.returncode == 2 and "not allowed with" in both.stderr


# ------------------------------------------------------------- fixed data


def test_dashboard_snapshot(snap_compare: Any) -> None:
    assert snap_compare(DashboardApp(SOCKET_LABEL, snapshot=SNAPSHOT), terminal_size=SIZE)


async def test_fixed_snapshot_shows_every_state_and_refuses_actions() -> None:
    app = DashboardApp(SOCKET_LABEL, snapshot=SNAPSHOT)
    async with app.run_test(size=SIZE) as pilot:
        assert row_ids(app, "#integrations") == sorted(i["id"] for i in SNAPSHOT["integrations"])
        assert cell(app, "returns-erp", "health") == "✖ failing"
        assert cell(app, "analytics", "health") == "▲ lagging"
        assert cell(app, "legacy-crm", "oldest") == "2h03m"
        assert cell(app, "returns-erp", "last_error") == "cannot connect (Co…"
        assert cell(app, "s3-archive", "target") == "s3://acme-archive/events"
        # Delivery controls and the daemon's own stop.
        assert cell(app, "returns-erp", "mode") == "20/s strict"
        assert cell(app, "orders-webhook", "mode") == "by key"
        assert cell(app, "legacy-crm", "health") == "■ auto-stop"
        assert cell(app, "s3-archive", "mode") == ""
        await pilot.press("x")
        await shows(pilot, lambda: "not connected" in app.last_message, "refused")


async def test_a_snapshot_arriving_while_screens_are_torn_down_is_ignored() -> None:
    # CI once saw this: a status push reached the dashboard while the app was
    # closing and its widgets were already gone, and the lookup crashed the app.
    app = DashboardApp(SOCKET_LABEL, snapshot=SNAPSHOT)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(IntegrationScreen("returns-erp"))
        await pilot.pause()
        for screen in app.screen_stack:
            await screen.remove_children()
        app.apply_snapshot(SNAPSHOT)
        app.link = ("disconnected", "✖ disconnected")  # redraws through the watcher
        await pilot.pause()


async def test_a_thousand_rows_redraw_only_what_changed() -> None:
    """Each snapshot updates the cells that changed and no others; an integration that
    comes or goes adds or removes its row (in id order), and the cursor stays on the
    integration picked."""
    def snapshot(count: int, busy: str = "", extra: str = "") -> dict[str, Any]:
        items = [{**SNAPSHOT["integrations"][2], "id": f"i{k:04d}", "lag_events": 0,
                  "delivered_rate": 0.0, "delivered_history": []} for k in range(count)]
        items = [{**item, "lag_events": 7} if item["id"] == busy else item for item in items]
        if extra:
            items.append({**items[0], "id": extra})
        return {**SNAPSHOT, "integrations": sorted(items, key=lambda i: i["id"])}

    app = DashboardApp(SOCKET_LABEL, snapshot=snapshot(1000))
    async with app.run_test(size=SIZE) as pilot:
        grid = table(app)
        assert grid.row_count == 1000
        select(app, "i0500")
        updated: list[tuple[str, str]] = []
        update_cell = grid.update_cell

        def counted(row: Any, column: Any, value: Any, **kwargs: Any) -> None:
            updated.append((str(row), str(column)))
            update_cell(row, column, value, **kwargs)

        grid.update_cell = counted  # type: ignore[method-assign,assignment]  # counts, updates
        app.apply_snapshot(snapshot(1000))
        await pilot.pause()
        assert updated == []  # nothing changed, nothing drawn
        app.apply_snapshot(snapshot(1000, busy="i0007"))
        await pilot.pause()
        assert updated == [("i0007", "lag")]
        app.apply_snapshot(snapshot(999, busy="i0007", extra="i0499x"))
        await pilot.pause()
        ids = row_ids(app, "#integrations")
        assert len(ids) == 1000 and "i0999" not in ids
        assert ids[500:502] == ["i0499x", "i0500"]
        assert app.screen.selected_id() == "i0500"  # type: ignore[attr-defined]


def test_formatting() -> None:
    assert fmt.age(None) == "-" and fmt.age(0.44) == "0.4s" and fmt.age(75) == "1m15s"
    assert fmt.age(7380) == "2h03m" and fmt.age(3 * 86400 + 3600) == "3d01h"
    assert fmt.rate(182.54) == "182.5/s" and fmt.rate(12_345) == "12k/s"
    assert fmt.size(1_887_436) == "1.8 MiB" and fmt.size(10) == "10 B"
    assert fmt.sparkline([0, 1, 2, 4], 6) == "  ▁▃▅█"
    assert fmt.sparkline([0.0, 0.0], 2) == "▁▁" and fmt.sparkline([], 3) == "   "
    assert fmt.shorten("a  b\nc", 10) == "a b c" and fmt.shorten("abcdef", 4) == "abc…"


@pytest.mark.parametrize("health", ["ok", "lagging", "failing", "stopped", "completed"])
def test_every_health_has_a_colour(health: str) -> None:
    assert fmt.health_text(health).style
    assert fmt.health_text(health, auto_stopped=True).style


def test_text_from_outside_is_never_markup() -> None:
    from eventstreamd.tui.dashboard import row_cells
    from eventstreamd.tui.detail import details_table

    item = {"id": "x", "kind": "[bold]webhook", "health": "stopped", "auto_stopped": True,
            "stop_reason": "[red]boom[/red]", "target": "[link=x]host[/link]",
            "ordering": "key [b]order[/b]", "max_rate": 2.5}
    cells = row_cells(item)
    assert all(not isinstance(c, str) for c in cells)  # Text objects: shown as they are
    assert "[bold]webhook" in str(cells[1]) and "[link=x]host[/link]" in str(cells[4])
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(details_table(item, "x"))
    shown = console.export_text()
    assert "[red]boom[/red]" in shown and "per value of [b]order[/b]" in shown
    assert "2.5 deliveries/s" in shown


def test_the_dashboard_names_owners_and_the_daemons_of_a_cluster() -> None:
    from eventstreamd.tui.dashboard import row_cells, summary

    snapshot = {"head": 10, "ingest_rate": 1.0, "integrations": [], "cluster": {
        "instance": "a", "instances": [
            {"instance": "a", "this": True, "live": True, "owns": ["w1", "w2"],
             "delivered_rate": 12.5},
            {"instance": "b", "this": False, "live": False, "owns": ["w3"],
             "delivered_rate": 0.0}]}}
    line = summary(snapshot).splitlines()[1]
    assert line.startswith("cluster: ") and "a* 2 integ." in line and "12.5/s" in line
    assert "b 1 integ." in line and line.endswith("gone")
    cell = row_cells({"id": "w3", "owner": "b"})[0]
    assert str(cell) == "w3 @b"
    # Without a cluster (LMDB) nothing changes: one line, the bare id.
    assert "\n" not in summary({**snapshot, "cluster": None})
    assert str(row_cells({"id": "w3"})[0]) == "w3"  # a Text: never markup
