"""The dashboard: one live row per integration, so a glance tells healthy from stuck.

Decisions:
- Rows are keyed by integration id and kept: a snapshot updates only the
  cells that changed since the last one drawn (`_cells` remembers them), so a
  thousand quiet integrations cost a comparison each per second, not a
  redraw; integrations that come or go add or remove their own row (then the
  rows are sorted by id again), and the cursor stays on the integration the
  user picked. Textual's DataTable draws only the rows on screen.
- Fixed column widths: the layout does not jump as numbers grow, and a fixed
  snapshot always renders the same (the SVG snapshot test depends on it).
- The status cell carries the daemon's `health` verdict (coloured, with a
  symbol); lag and age take the same colour when they are the problem.
  While the daemon is unreachable the verdicts are stale: the cell says
  "? no data" instead of a state that may no longer hold.
- With several daemons on one JetStream the id cell names the daemon that
  delivers it (`@d1`) and the summary's second line lists the daemons (this
  one starred), what each delivers and how fast.
- The target is the sink's own description (host:port/path, `s3://bucket/
  prefix`), wide enough to tell two receivers on one host apart; the last
  error column shows its cause (the full reason is on the details
  screen).
- The mode column shows a webhook's delivery controls (its `max_rate`, and
  "strict" or "by key" when ordered); an integration the daemon stopped
  because its deliveries kept failing says "auto-stop" in the status
  column (why, on the details screen).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from . import format as fmt
from .detail import IntegrationScreen
from .screen import SnapshotScreen
from .widgets import LINKED, ConnectionBar

SPARK_WIDTH = 10
TARGET_WIDTH = 24
LAST_ERROR_WIDTH = 19  # the whole error is on the details screen
MODE_WIDTH = 11
# (key, label, width)
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("id", "Integration", 16),
    ("kind", "Type", 7),
    ("health", "Status", 11),
    ("mode", "Mode", MODE_WIDTH),
    ("target", "Target", TARGET_WIDTH),
    ("cursor", "Cursor", 8),
    ("lag", "Lag", 7),
    ("oldest", "Oldest", 6),
    ("rate", "Delivered/s", 18),
    ("failures", "Fails", 5),
    ("rejected", "Rej", 3),
    ("last_error", "Last error", LAST_ERROR_WIDTH),
)


def row_cells(item: dict[str, Any], stale: bool = False) -> list[Any]:
    health = item.get("health")
    alert = fmt.health_style(health) if health in ("lagging", "failing") else ""
    rejected = item.get("rejected_events") or 0
    owner = item.get("owner")  # several daemons on one JetStream: who delivers it
    return [
        Text.assemble(fmt.plain(item["id"]), fmt.plain(f" @{owner}", "dim")) if owner
        else fmt.plain(item["id"]),
        fmt.plain(item.get("kind", "")),
        fmt.STALE if stale else fmt.health_text(health, bool(item.get("auto_stopped"))),
        fmt.plain(fmt.shorten(fmt.mode(item.get("max_rate"), item.get("ordering")), MODE_WIDTH)),
        fmt.plain(fmt.shorten(item.get("target"), TARGET_WIDTH)),
        Text(fmt.count(item.get("cursor")), justify="right"),
        Text(fmt.count(item.get("lag_events")), style=alert, justify="right"),
        Text(fmt.age(item.get("lag_seconds")), style=alert, justify="right"),
        Text(f"{fmt.rate(item.get('delivered_rate')):>7} "
             f"{fmt.sparkline(item.get('delivered_history') or [], SPARK_WIDTH)}"),
        Text(fmt.count(item.get("failures")),
             style="red" if item.get("failures") else "", justify="right"),
        Text(str(rejected), style="yellow" if rejected else "", justify="right"),
        fmt.plain(fmt.shorten(item.get("last_error_cause") or item.get("last_error"),
                              LAST_ERROR_WIDTH), "red"),
    ]


def _looks(cell: Any) -> Any:
    """What a cell shows, to tell whether it needs drawing again (rich's own equality
    leaves the style out)."""
    if isinstance(cell, Text):
        return (cell.plain, str(cell.style), tuple(cell.spans), cell.justify)
    return cell


def summary(snapshot: dict[str, Any]) -> str:
    items = snapshot.get("integrations") or []
    counts: dict[str, int] = {}
    for item in items:
        counts[item.get("health", "?")] = counts.get(item.get("health", "?"), 0) + 1
    states = ", ".join(f"{n} {fmt.HEALTH.get(h, (h,))[0].split()[-1]}"
                       for h, n in sorted(counts.items()))
    line = (f"head {fmt.count(snapshot.get('head'))}  ·  "
            f"ingest {fmt.rate(snapshot.get('ingest_rate'))}  ·  "
            f"{len(items)} integration{'s' if len(items) != 1 else ''}"
            + (f" ({states})" if states else ""))
    cluster = snapshot.get("cluster")
    if cluster:
        line += "\n" + cluster_line(cluster)
    return line


def cluster_line(cluster: dict[str, Any]) -> str:
    """Every daemon sharing the JetStream: which one this is, how many it delivers."""
    parts = []
    for entry in cluster.get("instances") or []:
        name = entry["instance"] + ("*" if entry.get("this") else "")
        state = "" if entry.get("live") else " gone"
        parts.append(f"{name} {len(entry.get('owns') or [])} integ. "
                     f"{fmt.rate(entry.get('delivered_rate'))}{state}")
    return "cluster: " + ("  ·  ".join(parts) if parts else "(no daemon announced yet)")


class DashboardScreen(SnapshotScreen):
    DEFAULT_CSS = """
    DashboardScreen #summary-row { height: 2; padding: 0 1; }
    DashboardScreen #summary { width: 1fr; content-align: left middle; height: 2; }
    DashboardScreen #ingest-spark { width: 40; height: 2; }
    DashboardScreen #integrations { height: 1fr; }
    DashboardScreen #empty { padding: 1 2; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", priority=True),
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("r", "refresh", "Refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBar(id="link")
        with Horizontal(id="summary-row"):
            yield Static("waiting for the first status…", id="summary")
            yield Sparkline([], summary_function=max, id="ingest-spark")
        table: DataTable[Any] = DataTable(id="integrations", cursor_type="row",
                                          zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self._cells: dict[str, list[Any]] = {}  # id -> the cells drawn last
        if self.dashboard.snapshot is not None:
            self._show(self.dashboard.snapshot)
        self.watch(self.app, "link", self._link_changed, init=False)

    @property
    def stale(self) -> bool:
        return self.dashboard.link[0] not in LINKED

    def _link_changed(self, link: Any) -> None:
        if self.dashboard.snapshot is not None:
            self.show_snapshot(self.dashboard.snapshot)

    # ------------------------------------------------------------------ display

    def show_snapshot(self, snapshot: dict[str, Any]) -> None:
        if not self.is_mounted:  # on_mount shows the app's latest snapshot
            return
        try:
            self._show(snapshot)
        except NoMatches:
            # A snapshot pushed while the screen's widgets are being torn down (the
            # app is closing): there is nothing left to draw on.
            pass

    def _show(self, snapshot: dict[str, Any]) -> None:
        # Instance names come from other daemons' configs: text, not markup.
        self.query_one("#summary", Static).update(fmt.plain_lines(summary(snapshot)))
        self.query_one("#ingest-spark", Sparkline).data = list(
            snapshot.get("ingest_history") or [0.0])
        table: DataTable[Any] = self.query_one("#integrations", DataTable)
        items = {item["id"]: item for item in snapshot.get("integrations") or []}
        drawn = self._cells
        gone = [i for i in drawn if i not in items]
        new = [i for i in items if i not in drawn]
        selected = self.selected_id() if gone or new else None
        for integration_id in gone:
            table.remove_row(integration_id)
            del drawn[integration_id]
        for integration_id, item in items.items():
            cells = row_cells(item, self.stale)
            before = drawn.get(integration_id)
            drawn[integration_id] = cells
            if before is None:
                table.add_row(*cells, key=integration_id)
                continue
            for (key, _, _), old, value in zip(COLUMNS, before, cells, strict=True):
                if _looks(old) != _looks(value):
                    table.update_cell(integration_id, key, value)
        if new:
            table.sort("id", key=lambda cell: cell.plain.split(" @", 1)[0])
        if selected is not None and selected in items:
            table.move_cursor(row=table.get_row_index(selected))

    def selected_id(self) -> str | None:
        table: DataTable[Any] = self.query_one("#integrations", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # ------------------------------------------------------------------ actions

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    def action_details(self) -> None:
        integration_id = self.selected_id()
        if integration_id is not None:
            self.app.push_screen(IntegrationScreen(integration_id))

    def action_start(self) -> None:
        self._act("start", "started")

    def action_stop(self) -> None:
        self._act("stop", "stopped")

    def action_refresh(self) -> None:
        self.run_worker(self.dashboard.refresh_status(), group="refresh", exclusive=True)

    def _act(self, op: str, done: str) -> None:
        integration_id = self.selected_id()
        if integration_id is None:
            self.dashboard.say("no integration selected", error=True)
            return
        self.run_worker(self.dashboard.act(op, f"{integration_id} {done}",
                                           integration_id=integration_id), group="actions")
