"""How the TUI shows numbers and states: short, fixed-width, and the same on every screen.

Decisions:
- Pure functions of the snapshot's values (never the clock), so the same
  snapshot always renders the same text: what makes the SVG snapshot tests
  deterministic.
- Health colours: green running, yellow lagging, bold red failing, grey
  stopped, blue completed. A symbol goes with each colour so the state reads
  without colour too.
- Rates get a text sparkline (block characters, scaled to the largest value
  shown) so a stalled integration shows a flat line next to a moving one.
- Everything that comes from outside (ids, targets, a receiver's answer, log
  reasons, error messages, instance names) is shown as text, never as markup:
  Textual parses a plain `str` in a table cell, label or static as Rich
  markup, so a receiver answering `[/]` would crash the screen and one
  answering `[link=...]` would style it. Such values go through `plain()`
  (a `Text`, markup never parsed) with control characters shown as `\\x1b`,
  so an escape sequence in an answer cannot reach the terminal either.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from ..logs import escape_controls

HEALTH = {
    "ok": ("● running", "green"),
    "lagging": ("▲ lagging", "yellow"),
    "failing": ("✖ failing", "bold red"),
    "stopped": ("■ stopped", "grey50"),
    "completed": ("✔ completed", "blue"),
}
# A stopped integration the daemon stopped itself: its deliveries failed too long.
AUTO_STOPPED = ("■ auto-stop", "red")
_BLOCKS = "▁▂▃▄▅▆▇█"
NONE = "-"
STALE = Text("? no data", style="grey50")  # the daemon is unreachable: no current verdict


def health_text(health: str | None, auto_stopped: bool = False) -> Text:
    if auto_stopped and health == "stopped":
        label, style = AUTO_STOPPED
    else:
        label, style = HEALTH.get(health or "", (health or "?", "magenta"))
    return Text(label, style=style)


def mode(max_rate: float | None, ordering: str | None) -> str:
    """How an integration paces and orders its deliveries, in a few characters: its rate
    limit and "strict" (one at a time) or "by key" (per-key lanes); "" when neither."""
    parts = []
    if max_rate:
        parts.append(f"{max_rate:g}/s")
    if ordering:
        parts.append("strict" if ordering == "strict" else "by key")
    return " ".join(parts)


def health_style(health: str | None) -> str:
    return HEALTH.get(health or "", ("", ""))[1]


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def rate(value: float | None) -> str:
    if value is None:
        return NONE
    if value >= 10_000:
        return f"{value / 1000:.0f}k/s"
    if value >= 1000:
        return f"{value / 1000:.1f}k/s"
    return f"{value:.1f}/s"


def age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(value: int | None) -> str:
    if value is None:
        return NONE
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"  # not reached


def sparkline(values: Sequence[float], width: int = 10) -> str:
    """The last `width` values as block characters; empty history is blank space."""
    shown = list(values)[-width:]
    if not shown:
        return " " * width
    top = max(shown)
    if top <= 0:
        cells = _BLOCKS[0] * len(shown)
    else:
        cells = "".join(_BLOCKS[min(len(_BLOCKS) - 1, int(v / top * (len(_BLOCKS) - 1) + 0.5))]
                        for v in shown)
    return cells.rjust(width)


def printable(text: object) -> str:
    """`text` with control characters shown as `\\x..` (tabs and line breaks too)."""
    return escape_controls(str(text))


def plain(text: object, style: str = "") -> Text:
    """Text from outside, shown as it is: never parsed as markup, controls escaped."""
    return Text(printable("" if text is None else text), style=style)


def plain_lines(text: str) -> Text:
    """`plain()` for text of several lines: the line breaks stay breaks."""
    return Text("\n").join(plain(line) for line in text.split("\n"))


def shorten(text: str | None, limit: int) -> str:
    """One line of at most `limit` characters (whitespace runs become one space, control
    characters are escaped); show it with `plain()`."""
    if not text:
        return ""
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
